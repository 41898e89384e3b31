//! The response body type: a full buffer, a lazily generated and paced SSE
//! stream, or a body that never arrives.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::provider::Plan;

/// Coalesce due events into frames of at most about this many bytes.
const MAX_FRAME: usize = 16 * 1024;

/// How a stream ends once its event budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Normal end (all events sent).
    Finish,
    /// Go silent forever, connection open.
    Stall,
    /// Abort the connection (body error: hyper closes it without finishing
    /// the chunked encoding).
    Drop,
    /// Send one non-JSON event, then end the body normally.
    Malformed,
}

/// A lazily rendered SSE stream.
pub(crate) struct SseBody {
    plan: Plan,
    next: usize,
    limit: usize,
    end: StreamEnd,
    interval: Option<Duration>,
    start: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    /// For `Drop`: one `Pending` has been returned so hyper flushes what was
    /// already written before the connection is aborted.
    drop_armed: bool,
    done: bool,
}

impl SseBody {
    /// `after_chunks` is only used for `Stall`/`Drop`; it is capped so the
    /// terminating event is never sent.
    pub(crate) fn new(
        plan: Plan,
        end: StreamEnd,
        after_chunks: usize,
        interval: Option<Duration>,
    ) -> Self {
        let total = plan.total_events();
        let limit = match end {
            StreamEnd::Finish => total,
            StreamEnd::Stall | StreamEnd::Drop => after_chunks.min(total.saturating_sub(1)),
            StreamEnd::Malformed => 0,
        };
        Self {
            plan,
            next: 0,
            limit,
            end,
            interval,
            start: Instant::now(),
            sleep: None,
            drop_armed: false,
            done: false,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        let mut now = Instant::now();
        while self.next < self.limit {
            if let (Some(iv), Some(t)) = (self.interval, self.plan.token_of(self.next)) {
                let due = self.start + iv.saturating_mul(t);
                if due > now {
                    if !buf.is_empty() {
                        break;
                    }
                    let sleep = match &mut self.sleep {
                        Some(s) => {
                            if s.deadline() != due {
                                s.as_mut().reset(due);
                            }
                            s
                        }
                        None => self.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    now = Instant::now();
                }
            }
            self.plan.write_event(self.next, &mut buf);
            self.next += 1;
            if buf.len() >= MAX_FRAME {
                break;
            }
        }
        if !buf.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
        }
        match self.end {
            StreamEnd::Finish => {
                self.done = true;
                Poll::Ready(None)
            }
            // Never woken: the connection stays open until the client goes
            // away or the mock closes it.
            StreamEnd::Stall => Poll::Pending,
            StreamEnd::Drop if !self.drop_armed => {
                // Yield once (and get polled again right away): hyper flushes
                // its write buffer when the body is pending, whereas an error
                // in the same poll would discard the buffered events.
                self.drop_armed = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            StreamEnd::Drop => {
                self.done = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "mock drop fault",
                ))))
            }
            StreamEnd::Malformed => {
                self.end = StreamEnd::Finish;
                self.plan.write_malformed_event(&mut buf);
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }
}

/// Every response body the mock produces.
pub(crate) enum MockBody {
    /// A complete buffer.
    Full(Option<Bytes>),
    /// A paced SSE stream.
    Sse(Box<SseBody>),
    /// Headers announce `len` bytes; the body never arrives (`stall` fault).
    Stalled(u64),
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(s) => s.poll_next(cx),
            MockBody::Stalled(_) => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
            MockBody::Stalled(n) => SizeHint::with_exact(*n),
        }
    }
}
