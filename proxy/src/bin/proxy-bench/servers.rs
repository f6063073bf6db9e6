//! The servers of the bench's world: the origin HTTP server, the bulk server and the DNS
//! server on the host namespace's loopback; the bulk server also serves the runner
//! topology from its internet namespace.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::topology::{BULK_NAME, INTERNET_SERVER};

pub(crate) async fn start_servers(
    bulk_mib: u64,
) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let origin = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let origin_addr = origin.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = origin.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(egress_proxy::testing::serve_ok(stream));
        }
    });
    let bulk = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let bulk_addr = bulk.local_addr()?;
    tokio::spawn(serve_bulk(bulk, bulk_mib));
    let dns = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dns_addr = dns.local_addr()?;
    tokio::spawn(egress_proxy::testing::serve_dns_table(
        dns,
        vec![
            (".bench.test.".to_owned(), Ipv4Addr::LOCALHOST),
            (format!("{BULK_NAME}."), INTERNET_SERVER),
        ],
    ));
    Ok((origin_addr, bulk_addr, dns_addr))
}

/// The bulk server of both topologies: for each connection, once the client has sent
/// "GO\n", streams `bulk_mib` MiB.
pub(crate) async fn serve_bulk(listener: tokio::net::TcpListener, bulk_mib: u64) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut go = [0u8; 3];
            if stream.read_exact(&mut go).await.is_err() {
                return;
            }
            let chunk = vec![0x5au8; 1 << 20];
            for _ in 0..bulk_mib {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
}
