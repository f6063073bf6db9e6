//! The kernel tunnel relay (`egress_ebpf::relay`, used through `egress_proxy::tunnel::relay`):
//! bytes arrive exactly and counted both ways, half-closes propagate after the queued
//! bytes, data that arrived before the relay began is not stranded, idle tunnels are cut,
//! and an unprivileged process holding only the map fds can relay sockets.
//!
//! Loopback only; each test makes its own socket pairs.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use egress_ebpf::{RelayMaps, RelayProgram};
use egress_proxy::offload::TunnelOffload;
use egress_proxy::tunnel::{relay, RelayPath, SpliceOutcome};
use runner_agent_tests::require_privilege;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Distinct, seed-dependent bytes: a lost, doubled or misrouted chunk is a mismatch.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            // xorshift64 (Marsaglia 2003).
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Starts a kernel-relayed tunnel between the proxy-side ends of two pairs; returns the
/// far ends (client side, server side) and the tunnel's task.
async fn tunnel(
    maps: &RelayMaps,
    idle: Duration,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<(SpliceOutcome, RelayPath)>,
) {
    let (client_far, mut client) = pair().await;
    let (mut server, server_far) = pair().await;
    let offload: Arc<dyn TunnelOffload> = Arc::new(maps.clone());
    let task = tokio::spawn(async move {
        relay(
            &mut client,
            &mut server,
            idle,
            Duration::from_secs(120),
            Some(&*offload),
        )
        .await
    });
    (client_far, server_far, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_is_byte_exact_and_counted() {
    require_privilege!();
    const LEN: usize = 64 << 20;
    let program = RelayProgram::load().expect("load the relay");
    let (client_far, server_far, task) = tunnel(program.maps(), Duration::from_secs(20)).await;
    let (up, down) = (payload(LEN, 1), payload(LEN, 2));
    let side = |stream: TcpStream, send: Vec<u8>| async move {
        let (mut read, mut write) = stream.into_split();
        let sender = tokio::spawn(async move {
            write.write_all(&send).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(LEN);
        read.read_to_end(&mut got).await.unwrap();
        sender.await.unwrap();
        got
    };
    let (at_server, at_client) =
        tokio::join!(side(server_far, down.clone()), side(client_far, up.clone()));
    assert_eq!(at_server.len(), LEN, "upstream length");
    assert!(at_server == up, "upstream bytes differ");
    assert_eq!(at_client.len(), LEN, "downstream length");
    assert!(at_client == down, "downstream bytes differ");
    let (outcome, path) = task.await.unwrap();
    assert_eq!(path, RelayPath::Kernel);
    assert_eq!(
        (outcome.up, outcome.down, outcome.cut),
        (LEN as u64, LEN as u64, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_other_side_after_the_data() {
    require_privilege!();
    let program = RelayProgram::load().expect("load the relay");
    let (mut client_far, mut server_far, task) =
        tunnel(program.maps(), Duration::from_secs(20)).await;
    // The client sends a request and closes its sending side, as HTTP/1.0 clients do.
    let request = payload(3 << 20, 7);
    client_far.write_all(&request).await.unwrap();
    client_far.shutdown().await.unwrap();
    let mut got = Vec::new();
    server_far.read_to_end(&mut got).await.unwrap();
    assert!(got == request, "request differs ({} bytes)", got.len());
    // The other direction still works after the half-close.
    server_far.write_all(b"response").await.unwrap();
    drop(server_far);
    let mut back = Vec::new();
    client_far.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"response");
    let (outcome, path) = task.await.unwrap();
    assert_eq!(path, RelayPath::Kernel);
    assert_eq!(
        (outcome.up, outcome.down, outcome.cut),
        (request.len() as u64, 8, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_before_the_relay_began_are_delivered() {
    require_privilege!();
    let program = RelayProgram::load().expect("load the relay");
    let (mut client_far, mut client) = pair().await;
    let (mut server, mut server_far) = pair().await;
    // A server that speaks first (a banner): it is queued on the proxy's socket before
    // the relay starts, and nothing else arrives after it.
    server_far.write_all(b"220 banner\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let maps = program.maps().clone();
    let task = tokio::spawn(async move {
        relay(
            &mut client,
            &mut server,
            Duration::from_secs(5),
            Duration::from_secs(30),
            Some(&maps as &dyn TunnelOffload),
        )
        .await
    });
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(3), client_far.read_exact(&mut banner))
        .await
        .expect("the banner queued before the relay must arrive")
        .unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    drop((client_far, server_far));
    let (outcome, _) = task.await.unwrap();
    assert_eq!(outcome.down, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_cut() {
    require_privilege!();
    let program = RelayProgram::load().expect("load the relay");
    let (mut client_far, mut server_far, task) =
        tunnel(program.maps(), Duration::from_millis(600)).await;
    client_far.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    server_far.read_exact(&mut four).await.unwrap();
    let (outcome, path) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the idle timeout must end the tunnel")
        .unwrap();
    assert_eq!(path, RelayPath::Kernel);
    assert_eq!(outcome.cut.as_deref(), Some("idle timeout"));
    assert_eq!((outcome.up, outcome.down), (4, 0));
    // Still counted after the cut; the sockets were taken out of the relay.
    let _ = (client_far.as_fd(), server_far.as_fd());
}

/// Measurement, not an assertion: how many bytes a destination can push into a tunnel
/// whose client does not read, kernel relay against splice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn backlog_toward_a_client_that_does_not_read() {
    let program = RelayProgram::load().expect("load the relay");
    for kernel in [true, false] {
        let (_client_far, mut client) = pair().await;
        let (mut server, mut server_far) = pair().await;
        let maps = program.maps().clone();
        let task = tokio::spawn(async move {
            let offload = kernel.then_some(&maps as &dyn TunnelOffload);
            relay(
                &mut client,
                &mut server,
                Duration::from_secs(30),
                Duration::from_secs(30),
                offload,
            )
            .await
        });
        let chunk = vec![0u8; 1 << 20];
        let mut pushed = 0usize;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until && pushed < (2usize << 30) {
            match tokio::time::timeout(Duration::from_millis(200), server_far.write_all(&chunk))
                .await
            {
                Ok(Ok(())) => pushed += chunk.len(),
                _ => break,
            }
        }
        println!(
            "kernel relay {kernel}: destination pushed {} MiB toward a client that does not read",
            pushed >> 20
        );
        task.abort();
    }
}
