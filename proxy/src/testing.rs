//! Stand-ins for the world around the proxy that its own tests and its benchmark share:
//! not part of the proxy's interface.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Answers the DNS queries arriving on `socket` until it fails: A questions for names
/// ending in `suffix` (with its trailing dot, e.g. `".bench.test."`) get `address`, every
/// other question an empty answer. [`serve_dns_table`] with one entry.
pub async fn serve_fixed_dns(socket: UdpSocket, suffix: &str, address: Ipv4Addr) {
    serve_dns_table(socket, vec![(suffix.to_owned(), address)]).await;
}

/// Answers the DNS queries arriving on `socket` until it fails: an A question gets the
/// address of the first `(suffix, address)` entry whose suffix (with its trailing dot,
/// e.g. `".bench.test."`, or a whole name such as `"bulk.internet.test."`) ends the name,
/// compared without regard to ASCII case; every other question gets an empty answer.
pub async fn serve_dns_table(socket: UdpSocket, table: Vec<(String, Ipv4Addr)>) {
    let table: Vec<(String, Ipv4Addr)> = table
        .into_iter()
        .map(|(suffix, address)| (suffix.to_ascii_lowercase(), address))
        .collect();
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response);
        for q in query.queries() {
            reply.add_query(q.clone());
            if q.query_type() != RecordType::A {
                continue;
            }
            let name = q.name().to_ascii().to_ascii_lowercase();
            if let Some((_, address)) = table.iter().find(|(suffix, _)| name.ends_with(suffix)) {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(rdata::A(*address)),
                ));
            }
        }
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

/// Serves one HTTP/1.1 keep-alive connection, answering `ok` to every request, until the
/// client closes it.
pub async fn serve_ok(stream: tokio::net::TcpStream) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let service = service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
            bytes::Bytes::from_static(b"ok\n"),
        )))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Waits (up to 20 s, then panics naming `what`) until `done` holds, looking every 10 ms:
/// for state another task reaches, without asserting how long it takes.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A runtime with one worker thread, for tests that shut it down themselves (what a
/// stopping proxy process does) and look at what was recorded then.
pub fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
