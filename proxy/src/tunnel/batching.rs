//! Receive batching for one direction of a tunnel: while a direction streams, the relay
//! asks the kernel to wake it only once [`MARK`] bytes wait (socket(7) `SO_RCVLOWAT`),
//! and gives the mark up as soon as a wait for it lasts longer than [`HOLD`].
//!
//! Why: a relay that wakes for every segment that arrives moves a little at a time and
//! spends its time (and, on a virtual machine, inter-processor interrupts) on wake-ups
//! and system calls; the sender, the relay and the receiver then take turns on the CPUs
//! instead of working side by side. With the mark raised each wake-up moves at least
//! 128 KiB. In the runner topology of `proxy-bench` (a job behind a veth, the destination
//! behind a routed link) this took a CONNECT tunnel from about 60-80% of a direct
//! connection's throughput to about as fast as it or faster; the figures are in the
//! README's benchmark section.
//!
//! Why not always: a raised mark holds back a message smaller than the mark until more
//! bytes, the end of the stream or memory pressure comes (`tcp_data_ready` in the kernel
//! wakes the reader early only for those). Interactive traffic (a request, then a
//! response, then silence) would stall. So the mark is raised only once a direction has
//! moved [`BURST`] bytes without a pause longer than [`HOLD`], and a wait that passes
//! [`HOLD`] with the mark raised lowers it again; lowering it makes the kernel report the
//! bytes already queued at once (`tcp_set_rcvlowat` calls `tcp_data_ready`). The cost is
//! bounded: at most one hold of [`HOLD`] (tokio's timer has millisecond resolution, so up
//! to about 2 ms) at the end of a burst of at least [`BURST`] bytes; traffic that never
//! moves a megabyte without a pause is never batched.
//!
//! `SO_RCVLOWAT` is declared with nix's own `sockopt_impl!`, whose `setsockopt` wrapper is
//! nix's: this crate keeps no `unsafe` of its own.

use std::io;
use std::time::{Duration, Instant};

use nix::sys::socket::setsockopt;
use tokio::net::TcpStream;

/// Bytes that must wait in the receive queue before a streaming direction is woken.
pub const MARK: usize = 128 * 1024;

/// Bytes a direction must move without a pause longer than [`HOLD`] before it is batched.
pub const BURST: u64 = 1 << 20;

/// The longest a raised mark may hold bytes back, and the pause that ends a burst.
pub const HOLD: Duration = Duration::from_millis(1);

mod option {
    // The macro expands to unqualified `libc::`, `sockopt_impl!`, `setsockopt_impl!` and
    // `getsockopt_impl!` paths.
    use nix::libc;
    use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

    sockopt_impl!(
        /// socket(7) `SO_RCVLOWAT`: the minimum number of bytes in the receive queue
        /// before the socket reports itself readable.
        RcvLowat,
        Both,
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        usize
    );
}
pub use option::RcvLowat;

/// The batching state of one direction.
#[derive(Debug, Default)]
pub struct Batching {
    /// Whether `SO_RCVLOWAT` is at [`MARK`] (otherwise at the kernel's default of 1).
    raised: bool,
    /// Bytes moved since the last pause longer than [`HOLD`].
    burst: u64,
}

impl Batching {
    /// Waits until `from` has bytes to read (or its end). With the mark raised, a wait
    /// longer than [`HOLD`] lowers the mark, which wakes the reader for whatever is queued.
    pub async fn readable(&mut self, from: &TcpStream) -> io::Result<()> {
        if self.raised {
            match tokio::time::timeout(HOLD, from.readable()).await {
                Ok(ready) => return ready,
                Err(_held_too_long) => self.lower(from),
            }
        }
        let waited = Instant::now();
        from.readable().await?;
        if waited.elapsed() > HOLD {
            self.burst = 0;
        }
        Ok(())
    }

    /// Counts `n` bytes read from `from`, raising the mark once the burst is long enough.
    pub fn moved(&mut self, from: &TcpStream, n: usize) {
        self.burst += n as u64;
        if !self.raised && self.burst >= BURST {
            // Best effort: without the mark the tunnel only wakes more often.
            match setsockopt(from, RcvLowat, &MARK) {
                Ok(()) => self.raised = true,
                Err(err) => tracing::debug!(%err, "could not raise SO_RCVLOWAT"),
            }
        }
    }

    /// Whether the mark is raised now.
    #[cfg(test)]
    fn raised(&self) -> bool {
        self.raised
    }

    fn lower(&mut self, from: &TcpStream) {
        self.burst = 0;
        self.raised = false;
        if let Err(err) = setsockopt(from, RcvLowat, &1) {
            // Cannot happen for a TCP socket we hold; if it did, the mark would stay and
            // only a later HOLD would try again.
            self.raised = true;
            tracing::debug!(%err, "could not lower SO_RCVLOWAT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Reads what is there now into `buf`, as the relay does after a wake-up.
    async fn drain(from: &TcpStream, batching: &mut Batching, buf: &mut [u8]) -> usize {
        batching.readable(from).await.unwrap();
        match from.try_read(buf) {
            Ok(n) => {
                batching.moved(from, n);
                n
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("{err}"),
        }
    }

    /// Reads until the socket has nothing more (which clears tokio's readiness), without
    /// waiting.
    fn empty(from: &TcpStream, buf: &mut [u8]) {
        loop {
            match from.try_read(buf) {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => panic!("{err}"),
            }
        }
    }

    #[tokio::test]
    async fn a_burst_raises_the_mark_and_a_held_message_is_released_after_a_hold() {
        let (mut sender, receiver) = pair().await;
        let mut batching = Batching::default();
        assert_eq!(getsockopt(&receiver, RcvLowat).unwrap(), 1);
        let mut buf = vec![0u8; 256 * 1024];
        // Just under a burst: not batched.
        let small = vec![7u8; BURST as usize - 1];
        let writer = tokio::spawn(async move {
            sender.write_all(&small).await.unwrap();
            sender
        });
        let mut got = 0;
        while got < BURST as usize - 1 {
            got += drain(&receiver, &mut batching, &mut buf).await;
        }
        let mut sender = writer.await.unwrap();
        assert!(!batching.raised());
        assert_eq!(getsockopt(&receiver, RcvLowat).unwrap(), 1);
        // One more byte makes the burst: the mark is raised on the socket.
        sender.write_all(&[1]).await.unwrap();
        while drain(&receiver, &mut batching, &mut buf).await == 0 {}
        assert!(batching.raised());
        assert_eq!(getsockopt(&receiver, RcvLowat).unwrap(), MARK);
        // A message far below the mark, then silence. The kernel does not report it (the
        // relay would wait forever without the hold); after one hold the mark is given up
        // and the message is read.
        empty(&receiver, &mut buf);
        sender.write_all(b"ping").await.unwrap();
        let started = Instant::now();
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            drain(&receiver, &mut batching, &mut buf),
        )
        .await
        .expect("a message below the mark was never released");
        let held = started.elapsed();
        assert_eq!(&buf[..n], b"ping");
        assert!(held >= HOLD, "not held by the mark: {held:?}");
        assert!(held < Duration::from_secs(1), "held for {held:?}");
        assert!(!batching.raised());
        assert_eq!(getsockopt(&receiver, RcvLowat).unwrap(), 1);
    }

    #[tokio::test]
    async fn pauses_between_messages_keep_a_direction_unbatched() {
        let (mut sender, receiver) = pair().await;
        let mut batching = Batching::default();
        let mut buf = vec![0u8; 256 * 1024];
        // Ten 200 KiB messages with pauses longer than HOLD: 2 MiB in all, never a burst.
        const MESSAGE: usize = 200 * 1024;
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                sender.write_all(&[3u8; MESSAGE]).await.unwrap();
                tokio::time::sleep(HOLD * 10).await;
            }
        });
        let mut got = 0;
        while got < 10 * MESSAGE {
            got += drain(&receiver, &mut batching, &mut buf).await;
            assert!(!batching.raised(), "raised after {got} bytes");
        }
        writer.await.unwrap();
    }
}
