//! Receiving DNS datagrams so that none goes unrecorded: the listener's socket gets a
//! large receive buffer, and each datagram comes with the kernel's count of datagrams it
//! dropped on the socket so far (socket(7) `SO_RXQ_OVFL`).
//!
//! Why: when datagrams arrive faster than the filter reads them, the kernel drops what
//! does not fit in the socket's receive queue, before the filter sees it. Nothing of such
//! a datagram goes anywhere, but an attempt must still leave a trace in the audit log. An
//! attack run sent 400 denied-name queries at once and found 116-144 of them in no event;
//! with 64 KiB datagrams, which a runner's 65535-byte link delivers whole and which each
//! take 64 KiB of the queue, 310-385. The dropped count is reported like the queries the
//! filter sheds itself: a summary event per client and second (`Shed` in dns.rs).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffer asked for (socket(7) `SO_RCVBUFFORCE`, or `SO_RCVBUF` within
/// `net.core.rmem_max` without `CAP_NET_ADMIN`): about a hundred queries of the largest
/// size a runner can send, thousands of ordinary ones.
pub(crate) const RECEIVE_BUFFER: usize = 8 << 20;

/// One datagram taken from the socket.
#[derive(Debug)]
pub(crate) struct Datagram {
    /// Bytes written into the buffer (a longer datagram is cut to the buffer's length).
    pub len: usize,
    pub peer: SocketAddr,
    /// The kernel's count of datagrams dropped on this socket since it was created, as of
    /// this one's arrival; `None` when the kernel attached none.
    pub dropped_total: Option<u32>,
}

/// Sets the socket up: the drop count on every datagram, and a large receive buffer.
/// Best effort: without either the filter still works, it only records less of a flood.
pub(crate) fn prepare(socket: &UdpSocket) {
    if let Err(err) = setsockopt(socket, sockopt::RxqOvfl, &1) {
        tracing::warn!(%err, "dns udp: no SO_RXQ_OVFL; kernel drops will not be recorded");
    }
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        if let Err(err) = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER) {
            tracing::debug!(%err, "dns udp: could not enlarge the receive buffer");
        }
    }
}

/// Waits for the next datagram (cancel safe: a datagram is taken whole or not at all).
pub(crate) async fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let mut control = nix::cmsg_space!(u32);
            let message = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)?;
            let peer = message
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                        })
                })
                .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
            let dropped_total = message.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::RxqOvfl(count) => Some(count),
                    _ => None,
                })
            });
            Ok(Datagram {
                len: message.bytes,
                peer,
                dropped_total,
            })
        })
        .await
}

/// Datagrams dropped since the last count seen (the kernel's counter wraps at 2^32).
pub(crate) fn dropped_since(last: &mut u32, total: Option<u32>) -> u32 {
    let Some(total) = total else { return 0 };
    let new = total.wrapping_sub(*last);
    *last = total;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_from_the_last_total_seen() {
        let mut last = 0;
        assert_eq!(dropped_since(&mut last, None), 0);
        assert_eq!(dropped_since(&mut last, Some(0)), 0);
        assert_eq!(dropped_since(&mut last, Some(7)), 7);
        assert_eq!(dropped_since(&mut last, Some(7)), 0);
        last = u32::MAX - 1;
        assert_eq!(dropped_since(&mut last, Some(2)), 4);
    }

    /// A flood into a small receive queue: the kernel drops datagrams, and the next one
    /// read says how many.
    #[tokio::test]
    async fn the_kernel_s_drops_are_reported_with_the_next_datagram() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        prepare(&receiver);
        // Small again, so that a few datagrams fill it.
        setsockopt(&receiver, sockopt::RcvBuf, &4096).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        for _ in 0..200 {
            sender.send_to(&[0u8; 1000], to).unwrap();
        }
        let mut buf = vec![0u8; 4096];
        let mut last = 0;
        let mut received = 0;
        let mut dropped = 0;
        while let Ok(Ok(d)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            receive(&receiver, &mut buf),
        )
        .await
        {
            assert_eq!(d.peer, sender.local_addr().unwrap());
            assert_eq!(d.len, 1000);
            received += 1;
            dropped += dropped_since(&mut last, d.dropped_total);
        }
        // One more after the flood carries the final count.
        sender.send_to(b"x", to).unwrap();
        let d = receive(&receiver, &mut buf).await.unwrap();
        dropped += dropped_since(&mut last, d.dropped_total);
        assert!(received < 200, "nothing was dropped: {received} received");
        assert_eq!(
            received + dropped,
            200,
            "{received} received, {dropped} dropped"
        );
    }
}
