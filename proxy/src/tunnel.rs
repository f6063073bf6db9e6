//! Splicing bytes between a client and a destination, counting them, with idle and total
//! time limits.
//!
//! Each direction is a plain read/write loop over a 64 KiB buffer on the two halves of
//! the sockets (no locking between directions). A half-close is propagated with
//! `shutdown(SHUT_WR)` so protocols that signal the end of a request by closing their
//! sending side keep working. The watchdog closes the tunnel when neither direction moved
//! a byte for `idle`, or when `total` is reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What moved through a tunnel and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceOutcome {
    /// Client to destination.
    pub up: u64,
    /// Destination to client.
    pub down: u64,
    /// Why it ended when not by both sides closing: "idle timeout", "total timeout" or an
    /// I/O error.
    pub cut: Option<String>,
}

const BUF: usize = 64 * 1024;

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies both ways until both sides close, one side fails, or a limit is hit.
pub async fn splice(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    total: Duration,
) -> SpliceOutcome {
    let start = Instant::now();
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let last = AtomicU64::new(0);
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let both = async {
        let (a, b) = tokio::join!(
            pump(cr, sw, &up, &last, start),
            pump(sr, cw, &down, &last, start)
        );
        a.and(b)
    };
    let watchdog = async {
        loop {
            let idle_ms = idle.as_millis() as u64;
            let since = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if since >= idle_ms {
                return "idle timeout";
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
        }
    };
    let cut = tokio::select! {
        result = both => result.err().map(|e| e.to_string()),
        reason = watchdog => Some(reason.to_owned()),
        () = tokio::time::sleep(total) => Some("total timeout".to_owned()),
    };
    SpliceOutcome {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn copies_and_counts_both_ways() {
        let (mut client_far, mut client) = pair().await;
        let (mut server, mut server_far) = pair().await;
        let task = tokio::spawn(async move {
            splice(
                &mut client,
                &mut server,
                Duration::from_secs(5),
                Duration::from_secs(10),
            )
            .await
        });
        client_far.write_all(b"hello").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server_far.write_all(b"world!").await.unwrap();
        drop(server_far);
        let mut back = Vec::new();
        client_far.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let outcome = task.await.unwrap();
        assert_eq!((outcome.up, outcome.down, outcome.cut), (5, 6, None));
    }

    #[tokio::test]
    async fn idle_tunnels_are_cut() {
        let (_client_far, mut client) = pair().await;
        let (mut server, _server_far) = pair().await;
        let outcome = splice(
            &mut client,
            &mut server,
            Duration::from_millis(100),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(outcome.cut.as_deref(), Some("idle timeout"));
    }
}
