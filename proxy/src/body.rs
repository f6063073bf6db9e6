//! A body wrapper that counts the bytes passing through and, for responses, writes the
//! request's audit event when the body is finished or abandoned; for responses to
//! requests that carried a credential, it also scrubs the credential out of the body
//! (`crate::intercept::scrub`).
//!
//! Writing the event from `Drop` means it is written exactly once, whether the response
//! completed, the client went away mid-body, or the upstream failed: the event always
//! carries the bytes that really moved and how long the request lasted. Scrubbing keeps
//! every length, so the counts are the same before and after it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::audit::{AuditEvent, AuditSink};
use crate::intercept::scrub::BodyScrubber;
use crate::shared::{add_reason, millis};

/// The pending event of one request, written on drop.
pub(crate) struct EndEvent {
    pub event: AuditEvent,
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    pub start: Instant,
    pub sink: Arc<dyn AuditSink>,
}

impl Drop for EndEvent {
    fn drop(&mut self) {
        let mut event = self.event.clone();
        event.bytes_up = Some(self.up.load(Ordering::Relaxed));
        event.bytes_down = Some(self.down.load(Ordering::Relaxed));
        event.duration_ms = Some(millis(self.start.elapsed()));
        self.sink.record(event);
    }
}

/// An [`Incoming`] body that adds every data byte to `count`.
pub(crate) struct Counted {
    inner: Incoming,
    count: Arc<AtomicU64>,
    end: Option<EndEvent>,
    /// Scrubs the data frames, when set.
    scrub: Option<BodyScrubber>,
    /// A trailers frame that waits for the scrubber's held-back bytes to go first.
    queued: Option<Frame<Bytes>>,
    /// `inner` has ended (only tracked while scrubbing: held-back bytes follow it).
    done: bool,
}

impl Counted {
    pub fn new(inner: Incoming, count: Arc<AtomicU64>, end: Option<EndEvent>) -> Self {
        Counted {
            inner,
            count,
            end,
            scrub: None,
            queued: None,
            done: false,
        }
    }

    /// Scrubs the body with `scrub`; what it finds is added to the end event's reason.
    pub fn scrubbed(mut self, scrub: Option<BodyScrubber>) -> Self {
        self.scrub = scrub;
        self
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.queued.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            if let Some(Ok(frame)) = &polled {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            let Some(scrub) = &mut this.scrub else {
                return Poll::Ready(polled);
            };
            let out = match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => scrub.push(data),
                    Err(mut frame) => {
                        // Trailers end the data: the held-back bytes go before them.
                        if let Some(trailers) = frame.trailers_mut() {
                            scrub.trailers(trailers);
                        }
                        this.queued = Some(frame);
                        scrub.finish()
                    }
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    this.done = true;
                    scrub.finish()
                }
            };
            if let Some(end) = &mut this.end {
                for name in scrub.new_hits() {
                    add_reason(
                        &mut end.event.reason,
                        format!("credential {name} scrubbed from the response body"),
                    );
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.scrub {
            None => self.inner.is_end_stream(),
            Some(scrub) => {
                self.queued.is_none()
                    && scrub.held() == 0
                    && (self.done || self.inner.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let Some(scrub) = &self.scrub else {
            return self.inner.size_hint();
        };
        // Scrubbing keeps lengths: what is left is what the upstream has still to send
        // plus what is held back.
        let held = scrub.held() as u64;
        if self.done {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
