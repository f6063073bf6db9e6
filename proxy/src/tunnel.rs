//! Splicing bytes between a client and a destination, counting them, with idle and total
//! time limits.
//!
//! Each direction moves bytes with splice(2) through a pipe of its own (socket → pipe →
//! socket), so payload never crosses into user space: a tunnel costs the kernel's page
//! moves, not two copies per byte, which is what lets a tunnel run close to a direct
//! connection's throughput. nix's safe wrappers are used (no `unsafe` here); readiness
//! comes from tokio (`readable`/`writable` + `try_io`, so a spurious wake-up only costs
//! an EAGAIN). When a pipe cannot be created the direction falls back to a plain
//! read/write loop over a 64 KiB buffer.
//!
//! The client-facing socket gets fixed send and receive buffers of [`CLIENT_SOCKET_BUFFER`]
//! (socket(7) SO_SNDBUF/SO_RCVBUF; the kernel doubles the value for its bookkeeping), while
//! the destination-facing socket keeps the kernel's autotuning. The client is a runner
//! behind a local veth (or, standalone, a machine on the LAN): its round trip is tens of
//! microseconds, so 256 KiB is many times its bandwidth-delay product, whereas the
//! destination may be a continent away and needs autotuned windows of many megabytes.
//! Without the cap the client-side buffers autotune to megabytes too, and that many bytes
//! in flight through the proxy push the pages being copied at both ends out of the CPU
//! caches: over four alternating `proxy-bench --tunnel-only --runs 5` rounds on a 2-core
//! machine the whole path used 825-855 CPU ms per GiB before and 490-645 after (direct:
//! 295-380); figures and the profile behind them are in the README's benchmark section.
//!
//! Each direction batches its reads while it streams (`SO_RCVLOWAT`, raised after a
//! megabyte without a pause and given up after a wait of a millisecond; see [`batching`]):
//! fewer, larger wake-ups let the sender, the relay and the receiver work side by side.
//!
//! A half-close is propagated with `shutdown(SHUT_WR)` so protocols that signal the end of
//! a request by closing their sending side keep working. The watchdog closes the tunnel
//! when neither direction moved a byte for `idle`, or when `total` is reached.
//!
//! Not relayed in the kernel with an eBPF sockmap (sk_skb verdict redirecting to the
//! peer): measured slower and costlier on CPU than this, and it queues bytes toward a
//! slow client without bound; see the README, "Why tunnels are not relayed in the kernel".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::io;

mod batching;

use batching::Batching;
use nix::fcntl::{fcntl, splice as splice_fd, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{setsockopt, shutdown, sockopt, Shutdown};
use tokio::io::Interest;
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

/// SO_SNDBUF and SO_RCVBUF asked for on the client-facing socket (see the module docs).
pub const CLIENT_SOCKET_BUFFER: usize = 256 * 1024;

/// Caps the client-facing socket's buffers. Best effort: a failure only costs CPU time,
/// so it is logged and the tunnel goes on.
fn bound_client_buffers(client: &TcpStream) {
    for (option, result) in [
        (
            "SO_SNDBUF",
            setsockopt(client, sockopt::SndBuf, &CLIENT_SOCKET_BUFFER),
        ),
        (
            "SO_RCVBUF",
            setsockopt(client, sockopt::RcvBuf, &CLIENT_SOCKET_BUFFER),
        ),
    ] {
        if let Err(err) = result {
            tracing::debug!(option, %err, "could not cap the client socket buffer");
        }
    }
}

/// Largest pipe asked for (fcntl(2) F_SETPIPE_SZ; the default is 64 KiB).
const PIPE: usize = 1 << 20;

fn activity(count: &AtomicU64, last: &AtomicU64, start: Instant, n: usize) {
    count.fetch_add(n as u64, Ordering::Relaxed);
    last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// One direction, zero-copy: `from` → pipe → `to`.
async fn pump_splice(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // Best effort: a larger pipe means fewer wake-ups per megabyte.
    let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(PIPE as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut batching = Batching::default();
    loop {
        batching.readable(from).await?;
        let moved = from.try_io(Interest::READABLE, || {
            splice_fd(from, None, &pipe_w, None, PIPE, flags).map_err(io::Error::from)
        });
        let n = match moved {
            Ok(0) => {
                let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(to), Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        batching.moved(from, n);
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let written = to.try_io(Interest::WRITABLE, || {
                splice_fd(&pipe_r, None, to, None, left, flags).map_err(io::Error::from)
            });
            match written {
                Ok(m) => left -= m,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        activity(count, last, start, n);
    }
}

/// One direction with a user-space buffer (fallback when no pipe can be had).
async fn pump_copy(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut batching = Batching::default();
    loop {
        batching.readable(from).await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(to), Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        batching.moved(from, n);
        let mut off = 0;
        while off < n {
            to.writable().await?;
            match to.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        activity(count, last, start, n);
    }
}

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
    zero_copy: bool,
) -> io::Result<()> {
    if zero_copy {
        match pump_splice(from, to, count, last, start).await {
            // EINVAL: this pair of descriptors does not support splice; copy instead.
            Err(err)
                if err.raw_os_error() == Some(nix::libc::EINVAL)
                    && count.load(Ordering::Relaxed) == 0 => {}
            other => return other,
        }
    }
    pump_copy(from, to, count, last, start).await
}

/// The bytes a tunnel has moved so far, each way, readable while it runs (an open
/// tunnel's event, written when the proxy stops before the tunnel ends, needs them).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client to destination.
    pub up: AtomicU64,
    /// Destination to client.
    pub down: AtomicU64,
}

impl Traffic {
    /// The counts now, and why the tunnel ended (if it did): the outcome to record.
    pub fn outcome(&self, cut: Option<String>) -> SpliceOutcome {
        SpliceOutcome {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            cut,
        }
    }
}

/// Copies both ways until both sides close, one side fails, or a limit is hit, adding
/// what moves to `traffic` as it moves; the outcome's counts are `traffic`'s at the end
/// (with whatever it held before).
pub async fn splice(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    total: Duration,
    traffic: &Traffic,
) -> SpliceOutcome {
    splice_with(client, server, idle, total, true, traffic).await
}

/// [`splice`], choosing zero-copy or buffered copying (tests exercise both).
pub async fn splice_with(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    total: Duration,
    zero_copy: bool,
    traffic: &Traffic,
) -> SpliceOutcome {
    let start = Instant::now();
    let (up, down) = (&traffic.up, &traffic.down);
    let last = AtomicU64::new(0);
    let (client, server) = (&*client, &*server);
    bound_client_buffers(client);
    let both = async {
        let (a, b) = tokio::join!(
            pump(client, server, up, &last, start, zero_copy),
            pump(server, client, down, &last, start, zero_copy)
        );
        a.and(b)
    };
    let watchdog = async {
        loop {
            let idle_ms = idle.as_millis() as u64;
            // `last` may have moved past the `elapsed` read just before: saturate.
            let since =
                (start.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
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
    traffic.outcome(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// [`splice_with`] with counts of its own.
    async fn spliced(
        client: &mut TcpStream,
        server: &mut TcpStream,
        idle: Duration,
        total: Duration,
        zero_copy: bool,
    ) -> SpliceOutcome {
        splice_with(client, server, idle, total, zero_copy, &Traffic::default()).await
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn copies_and_counts_both_ways() {
        for zero_copy in [true, false] {
            copies_and_counts(zero_copy).await;
        }
    }

    async fn copies_and_counts(zero_copy: bool) {
        let (mut client_far, mut client) = pair().await;
        let (mut server, mut server_far) = pair().await;
        let task = tokio::spawn(async move {
            let (idle, total) = (Duration::from_secs(5), Duration::from_secs(10));
            spliced(&mut client, &mut server, idle, total, zero_copy).await
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

    /// Distinct bytes (not a repeated pattern) so that a lost, doubled or reordered chunk
    /// shows up as a mismatch.
    fn payload(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                // xorshift64 (Marsaglia 2003): cheap and reproducible.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn bulk_both_ways_at_once_is_byte_exact() {
        for zero_copy in [true, false] {
            bulk_both_ways(zero_copy).await;
        }
    }

    /// Several MiB each way at the same time, far more than the capped client buffers and
    /// the pipes hold, so both directions block and resume many times.
    async fn bulk_both_ways(zero_copy: bool) {
        const LEN: usize = 8 << 20;
        let (client_far, mut client) = pair().await;
        let (mut server, server_far) = pair().await;
        let tunnel = tokio::spawn(async move {
            let (idle, total) = (Duration::from_secs(10), Duration::from_secs(60));
            spliced(&mut client, &mut server, idle, total, zero_copy).await
        });
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
        assert!(
            at_server == up,
            "upstream bytes differ (zero_copy {zero_copy})"
        );
        assert!(
            at_client == down,
            "downstream bytes differ (zero_copy {zero_copy})"
        );
        let outcome = tunnel.await.unwrap();
        assert_eq!(
            (outcome.up, outcome.down, outcome.cut),
            (LEN as u64, LEN as u64, None)
        );
    }

    #[tokio::test]
    async fn a_short_answer_after_a_bulk_transfer_is_not_held_back() {
        for zero_copy in [true, false] {
            answer_after_bulk(zero_copy).await;
        }
    }

    /// A download long enough to batch the downstream direction, then a request and a
    /// four-byte answer: with the receive mark still raised the answer would wait for
    /// 128 KiB that never come.
    async fn answer_after_bulk(zero_copy: bool) {
        const BULK: usize = 4 * batching::BURST as usize;
        let (mut client_far, mut client) = pair().await;
        let (mut server, mut server_far) = pair().await;
        let tunnel = tokio::spawn(async move {
            let (idle, total) = (Duration::from_secs(10), Duration::from_secs(60));
            spliced(&mut client, &mut server, idle, total, zero_copy).await
        });
        let origin = tokio::spawn(async move {
            server_far.write_all(&payload(BULK, 3)).await.unwrap();
            let mut request = [0u8; 4];
            server_far.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"next");
            server_far.write_all(b"pong").await.unwrap();
            server_far
        });
        let mut bulk = vec![0u8; BULK];
        client_far.read_exact(&mut bulk).await.unwrap();
        assert!(
            bulk == payload(BULK, 3),
            "bulk bytes differ (zero_copy {zero_copy})"
        );
        client_far.write_all(b"next").await.unwrap();
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client_far.read_exact(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("the answer was held back (zero_copy {zero_copy})"))
            .unwrap();
        assert_eq!(&answer, b"pong");
        drop(origin.await.unwrap());
        drop(client_far);
        let outcome = tunnel.await.unwrap();
        assert_eq!((outcome.up, outcome.down), (4, BULK as u64 + 4));
    }

    #[tokio::test]
    async fn only_the_client_side_buffers_are_capped() {
        let (_client_far, mut client) = pair().await;
        let (mut server, _server_far) = pair().await;
        let server_before = getsockopt(&server, sockopt::SndBuf).unwrap();
        let (idle, total) = (Duration::from_millis(50), Duration::from_secs(5));
        let outcome = splice(&mut client, &mut server, idle, total, &Traffic::default()).await;
        assert_eq!(outcome.cut.as_deref(), Some("idle timeout"));
        // socket(7): the kernel doubles the value set and getsockopt returns the double.
        assert_eq!(
            getsockopt(&client, sockopt::SndBuf).unwrap(),
            2 * CLIENT_SOCKET_BUFFER
        );
        assert_eq!(
            getsockopt(&client, sockopt::RcvBuf).unwrap(),
            2 * CLIENT_SOCKET_BUFFER
        );
        let server_after = getsockopt(&server, sockopt::SndBuf).unwrap();
        assert_eq!(
            server_after, server_before,
            "the destination side keeps autotuning"
        );
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
            &Traffic::default(),
        )
        .await;
        assert_eq!(outcome.cut.as_deref(), Some("idle timeout"));
    }
}
