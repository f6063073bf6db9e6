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
//! the job's terminal control sequences are shown rather than obeyed, colours excepted
//! ([`controls`]), and [`MaskedWriter::end_line`] resets a colour the job left set and
//! ends a line it left open, so that the agent's next line starts a line of its own, in
//! the terminal's own style.
//!
//! A job can still print text that reads like the agent's lines (it is its output). The
//! exit code, the job record and the audit log are what to rely on; on stdout the agent's
//! trailer of a step and its summary are always the last lines of it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::mask::{Masker, StreamMasker};

mod controls;

use controls::ControlFilter;

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
        let tail = self.controls.finish();
        let mut rest = self.masker.push(&tail);
        rest.extend_from_slice(&self.masker.finish());
        self.queue(rest);
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        self.inner.flush().await
    }

    /// [`MaskedWriter::settle`], then a style reset if the job's output set a colour, and
    /// a newline if it does not end with one: call before writing a line of the agent's
    /// own.
    pub async fn end_line(&mut self) -> io::Result<()> {
        self.settle().await?;
        let mut end = Vec::new();
        if self.controls.take_styled() {
            end.extend_from_slice(b"\x1b[0m");
        }
        if !self.at_line_start {
            end.push(b'\n');
        }
        if !end.is_empty() {
            self.queue(end);
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
        // Filtered first, then masked: the masker must see the text the terminal will
        // show (a value holding `^G` was spelled by the caret notation of a bell after
        // masking; found by an attack run).
        let shown = this.controls.push(buf);
        let masked = this.masker.push(&shown);
        this.queue(masked);
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

    /// Black on black would hide the agent's next line: a colour the job set is reset.
    #[tokio::test]
    async fn end_line_resets_a_colour_the_job_left_set() {
        let masker = Masker::new(std::iter::empty::<&[u8]>());
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        out.write_all(b"\x1b[30;40mhidden\n").await.unwrap();
        out.end_line().await.unwrap();
        out.write_all(b"<== agent\n").await.unwrap();
        out.end_line().await.unwrap();
        assert_eq!(out.inner, b"\x1b[30;40mhidden\n\x1b[0m<== agent\n");
    }

    /// A secret is masked in what is shown, control bytes around it or not, and also
    /// when the filter's caret notation is what spells it.
    #[tokio::test]
    async fn secrets_inside_control_sequences_are_masked_and_shown() {
        let masker = Masker::new([b"s3cr3t-value".as_slice()]);
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        out.write_all(b"\x1b]0;s3cr3t-value\x07").await.unwrap();
        out.settle().await.unwrap();
        assert_eq!(out.inner, b"^[]0;***^G");
        let masker = Masker::new([b"ca^Gret-value".as_slice()]);
        let mut out = MaskedWriter::new(Vec::new(), &masker);
        out.write_all(b"x ca\x07ret-value y").await.unwrap();
        out.settle().await.unwrap();
        assert_eq!(out.inner, b"x *** y");
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
