//! A body wrapper that counts the bytes passing through and, for responses, writes the
//! request's audit event when the body is finished or abandoned.
//!
//! Writing the event from `Drop` means it is written exactly once, whether the response
//! completed, the client went away mid-body, or the upstream failed: the event always
//! carries the bytes that really moved and how long the request lasted.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::audit::{AuditEvent, AuditSink};
use crate::shared::millis;

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
    _end: Option<EndEvent>,
}

impl Counted {
    pub fn new(inner: Incoming, count: Arc<AtomicU64>, end: Option<EndEvent>) -> Self {
        Counted {
            inner,
            count,
            _end: end,
        }
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
