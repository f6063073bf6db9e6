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
//!
//! The agent's own lines (step headers and trailers, the end-of-job summary) share the
//! stream, and a job must not be able to hide or rewrite them on the operator's terminal:
//!
//! - Terminal control sequences of the job are shown, not obeyed: ESC becomes the visible
//!   `^[`, and a C1 control character (U+0080 to U+009F, which some terminals take as
//!   ESC plus a letter: U+009B is CSI) becomes U+FFFD. Without ESC a job can move the
//!   cursor only within its own line (`\r`, backspace), so it can neither rewrite an
//!   earlier line nor swallow the next one into an unterminated title sequence (found by
//!   an attack run). A lone byte 0x9B is left alone: it is not UTF-8, and only a
//!   terminal in an 8-bit mode would obey it.
//! - [`MaskedWriter::end_line`] ends a line the job left open, so that the agent's next
//!   line starts a line of its own.
//!
//! A job can still print text that reads like the agent's lines (it is its output). The
//! exit code, the job record and the audit log are what to rely on; on stdout the agent's
//! trailer of a step and its summary are always the last lines of it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::mask::{Masker, StreamMasker};

/// See the module doc.
pub struct MaskedWriter<W> {
    inner: W,
    masker: StreamMasker,
    controls: ControlFilter,
    /// Masked bytes not yet written to `inner`.
    pending: Vec<u8>,
    written: usize,
    /// Whether the last byte passed on was a newline (or nothing was yet).
    at_line_start: bool,
}

/// Shows the job's terminal control characters instead of passing them on (module doc).
#[derive(Default)]
struct ControlFilter {
    /// The chunk before ended with 0xC2, the first byte of a C1 character's UTF-8.
    held_c2: bool,
}

impl ControlFilter {
    /// `input` with ESC and C1 controls replaced, as far as it can be decided.
    fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if std::mem::take(&mut self.held_c2) {
                if (0x80..=0x9f).contains(&byte) {
                    out.extend_from_slice("\u{fffd}".as_bytes());
                    continue;
                }
                out.push(0xc2);
            }
            match byte {
                0x1b => out.extend_from_slice(b"^["),
                0xc2 => self.held_c2 = true,
                _ => out.push(byte),
            }
        }
        out
    }

    /// What is held back at the end of the stream.
    fn finish(&mut self) -> Vec<u8> {
        if std::mem::take(&mut self.held_c2) {
            vec![0xc2]
        } else {
            Vec::new()
        }
    }
}

impl<W: AsyncWrite + Unpin> MaskedWriter<W> {
    /// Masks what is written through it with `masker`.
    pub fn new(inner: W, masker: &Masker) -> Self {
        MaskedWriter {
            inner,
            masker: masker.stream(),
            controls: ControlFilter::default(),
            pending: Vec::new(),
            written: 0,
            at_line_start: true,
        }
    }

    /// Writes the held-back tail and flushes: call when a step's output has ended.
    pub async fn settle(&mut self) -> io::Result<()> {
        let rest = self.masker.finish();
        let mut rest = self.controls.push(&rest);
        rest.extend(self.controls.finish());
        self.queue(rest);
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        self.inner.flush().await
    }

    /// [`MaskedWriter::settle`], then a newline if the output so far does not end with
    /// one: call before writing a line of the agent's own.
    pub async fn end_line(&mut self) -> io::Result<()> {
        self.settle().await?;
        if !self.at_line_start {
            self.queue(b"\n".to_vec());
            std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
            self.inner.flush().await?;
        }
        Ok(())
    }

    /// Adds `bytes` (already masked and filtered) to what is to be written.
    fn queue(&mut self, bytes: Vec<u8>) {
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n';
        }
        if self.pending.is_empty() {
            self.pending = bytes;
        } else {
            self.pending.extend_from_slice(&bytes);
        }
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
        let masked = this.masker.push(buf);
        let shown = this.controls.push(&masked);
        this.queue(shown);
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

    /// What `chunks` become, written one by one, then settled.
    async fn shown(chunks: &[&[u8]]) -> Vec<u8> {
        let masker = Masker::new(std::iter::empty::<&[u8]>());
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        for chunk in chunks {
            out.write_all(chunk).await.unwrap();
        }
        out.settle().await.unwrap();
        out.inner
    }

    /// An unterminated title sequence swallowed the agent's next line on a terminal;
    /// cursor movement could rewrite earlier ones (found by an attack run).
    #[tokio::test]
    async fn the_jobs_terminal_control_sequences_are_shown_not_obeyed() {
        assert_eq!(shown(&[b"a\x1b]0;title"]).await, b"a^[]0;title");
        assert_eq!(shown(&[b"\x1b[1A\x1b[2K"]).await, b"^[[1A^[[2K");
        // U+009B (CSI) split across two reads, and one whole.
        assert_eq!(
            shown(&[b"x\xc2", b"\x9b2J", b"\xc2\x9b"]).await,
            "x\u{fffd}2J\u{fffd}".as_bytes()
        );
        // Other two-byte characters starting with 0xC2 are left alone, split or not.
        assert_eq!(shown(&[b"\xc2", b"\xa9 \xc2\xb5"]).await, "© µ".as_bytes());
        // And a 0xC2 at the very end is released.
        assert_eq!(shown(&[b"end\xc2"]).await, b"end\xc2");
        // Tabs, carriage returns (progress bars) and UTF-8 pass.
        assert_eq!(
            shown(&[b"\t10%\r20%\n\xe2\x82\xac"]).await,
            "\t10%\r20%\n€".as_bytes()
        );
    }

    #[tokio::test]
    async fn end_line_ends_only_a_line_left_open() {
        let masker = Masker::new(std::iter::empty::<&[u8]>());
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        out.end_line().await.unwrap();
        assert_eq!(out.inner, b"", "nothing written yet: nothing to end");
        out.write_all(b"no newline").await.unwrap();
        out.end_line().await.unwrap();
        out.write_all(b"<== agent\n").await.unwrap();
        out.end_line().await.unwrap();
        assert_eq!(out.inner, b"no newline\n<== agent\n");
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
