//! Step output on its way to the agent's stdout, with secret values masked.
//!
//! [`MaskedWriter`] wraps any `AsyncWrite`: every chunk goes through a
//! [`StreamMasker`], which holds back only the tail that could still be the start of a
//! secret, so a value split across two reads of the output pipe is still masked while
//! ordinary output is not delayed. [`MaskedWriter::settle`] releases the held-back tail at
//! the end of a step (nothing more of it can follow).
//!
//! Back-pressure is kept: a new chunk is accepted only once the masked bytes of the
//! previous one have been written, so a slow stdout slows the job's output pipe instead of
//! growing a buffer here.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::mask::{Masker, StreamMasker};

/// See the module doc.
pub struct MaskedWriter<W> {
    inner: W,
    masker: StreamMasker,
    /// Masked bytes not yet written to `inner`.
    pending: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> MaskedWriter<W> {
    /// Masks what is written through it with `masker`.
    pub fn new(inner: W, masker: &Masker) -> Self {
        MaskedWriter {
            inner,
            masker: masker.stream(),
            pending: Vec::new(),
            written: 0,
        }
    }

    /// Writes the held-back tail and flushes: call when a step's output has ended.
    pub async fn settle(&mut self) -> io::Result<()> {
        let rest = self.masker.finish();
        self.pending.extend_from_slice(&rest);
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        self.inner.flush().await
    }

    /// Writes `pending` to `inner` until it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for MaskedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.pending = this.masker.push(buf);
        // The chunk is taken; its masked form is written now or on the next call.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_split_across_writes_are_masked() {
        let masker = Masker::new([b"s3cr3t-value".as_slice()]);
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        for chunk in [&b"token=s3c"[..], b"r3t-va", b"lue; next line\n", b"s3cr3t"] {
            out.write_all(chunk).await.unwrap();
        }
        out.settle().await.unwrap();
        let text = String::from_utf8(out.inner).unwrap();
        assert_eq!(text, "token=***; next line\ns3cr3t");
    }

    #[tokio::test]
    async fn output_without_secrets_passes_unchanged() {
        let masker = Masker::new(std::iter::empty::<&[u8]>());
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        out.write_all(b"hello\n").await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(out.inner, b"hello\n");
    }
}
