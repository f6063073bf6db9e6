//! A transparent connection still waiting for its first request when the proxy stops is
//! recorded then ([`super::UnservedAtStop`]), like one that closed before a request.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::audit::{AuditSink, Kind, MemorySink, Verdict};
use crate::config::EgressConfig;
use crate::origdst::FixedTable;
use crate::policy::Policy;
use crate::server::Proxy;

const STOPPED: &str = "no request: the connection was still open when the proxy stopped";

#[test]
fn a_transparent_connection_without_a_request_is_recorded_when_the_proxy_stops() {
    let runtime = crate::testing::one_worker_runtime();
    let sink = Arc::new(MemorySink::default());
    let table = Arc::new(FixedTable::default());
    table.set_fallback(Some((Ipv4Addr::new(203, 0, 113, 7), 80).into()));
    // Both held past the shutdown: the client never finishes its head nor closes.
    let _held = runtime.block_on(async {
        let proxy = Proxy::builder()
            .plain_http_listen((Ipv4Addr::LOCALHOST, 0).into())
            .original_destination(table)
            .audit(Arc::clone(&sink) as Arc<dyn AuditSink>)
            .start()
            .await
            .unwrap();
        let policy = Policy::new(&EgressConfig::default()).unwrap();
        proxy.set_default_policy(Some(Arc::new(policy)));
        let mut client = TcpStream::connect(proxy.plain_http_addrs()[0])
            .await
            .unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: evil.test\r\nX-Slow: a")
            .await
            .unwrap();
        // Time for the proxy to accept and start reading; nothing is recorded meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sink.events().is_empty(), "{:?}", sink.events());
        (proxy, client)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let events = sink.events();
    let stopped: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(STOPPED))
        .collect();
    assert_eq!(stopped.len(), 1, "{events:?}");
    assert_eq!(stopped[0].kind, Kind::Http);
    assert_eq!(stopped[0].verdict, Verdict::Deny);
    assert_eq!(stopped[0].ip, Some(Ipv4Addr::new(203, 0, 113, 7).into()));
    assert_eq!(stopped[0].port, Some(80));
}
