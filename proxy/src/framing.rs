//! Spotting requests that carry both Content-Length and Transfer-Encoding.
//!
//! Why: such a request is the raw material of request smuggling (CVE-2019-18277 family,
//! RFC 9112 section 6.1). hyper already handles it safely (Transfer-Encoding wins and the
//! connection is closed after the response, so trailing bytes are never read as a
//! request), but it removes the Content-Length header before the proxy sees the request,
//! so the attempt would leave no trace. RFC 9112 6.1 allows a server to reject such a
//! request instead, which is what the proxy does, with a deny event.
//!
//! How: [`Recorder`] wraps the client socket and keeps the last bytes read (bounded). When
//! a request with Transfer-Encoding arrives, [`Recorder`]'s buffer is scanned for a head
//! holding both header lines. Only requests with Transfer-Encoding pay for the scan; the
//! copy into the bounded buffer is the price every read pays.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The recent bytes of one connection, shared between the socket wrapper and the
/// request handler.
#[derive(Clone, Default)]
pub(crate) struct Tail {
    bytes: Arc<Mutex<Vec<u8>>>,
    cap: usize,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            bytes: Arc::default(),
            cap,
        }
    }

    fn push(&self, data: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let data = &data[data.len().saturating_sub(self.cap)..];
        if bytes.len() + data.len() > self.cap {
            // Drop down to half the cap at once, so the memmove is paid once per cap/2
            // bytes read rather than on every small read of a keep-alive connection.
            let keep = (self.cap / 2).saturating_sub(data.len());
            let drop = bytes.len().saturating_sub(keep);
            bytes.drain(..drop);
        }
        bytes.extend_from_slice(data);
    }

    /// Whether a recent head has both a Content-Length and a Transfer-Encoding line;
    /// forgets what it has seen, so a later request is judged on its own bytes.
    pub fn take_conflict(&self) -> bool {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let found = has_conflict(&bytes);
        bytes.clear();
        found
    }
}

/// Scans header blocks (runs of non-empty lines) for the two framing headers.
pub(crate) fn has_conflict(bytes: &[u8]) -> bool {
    let (mut length, mut encoding) = (false, false);
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            length = false;
            encoding = false;
            continue;
        }
        let starts = |name: &[u8]| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && matches!(line[name.len()], b':' | b' ' | b'\t')
        };
        length |= starts(b"content-length");
        encoding |= starts(b"transfer-encoding");
        if length && encoding {
            return true;
        }
    }
    false
}

/// A socket that records what is read from it into a [`Tail`].
pub(crate) struct Recorder<T> {
    pub inner: T,
    tail: Tail,
}

impl<T> Recorder<T> {
    pub fn new(inner: T, tail: Tail) -> Self {
        Recorder { inner, tail }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorder<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.tail.push(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorder<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_found_in_one_head_only() {
        assert!(has_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(has_conflict(
            b"POST / HTTP/1.1\nTRANSFER-ENCODING: chunked\ncontent-length :4\n\n"
        ));
        assert!(!has_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdPOST / HTTP/1.1\r\nX: y\r\n\r\n"
        ));
        assert!(!has_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!has_conflict(
            b"GET / HTTP/1.1\r\nContent-Lengthy: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn the_tail_is_bounded_and_cleared() {
        let tail = Tail::new(16);
        tail.push(b"0123456789");
        tail.push(b"abcdefghij");
        assert_eq!(tail.bytes.lock().unwrap().as_slice(), b"abcdefghij");
        tail.push(b"0123");
        assert_eq!(tail.bytes.lock().unwrap().as_slice(), b"abcdefghij0123");
        tail.push(&[b'x'; 40]);
        assert_eq!(tail.bytes.lock().unwrap().len(), 16);
        assert!(!tail.take_conflict());
        assert!(tail.bytes.lock().unwrap().is_empty());
    }
}
