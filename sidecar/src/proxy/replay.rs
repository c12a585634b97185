//! Request bodies that can be sent again. A request the router may retry streams its body
//! upstream as usual and keeps a copy on the side (Envoy's approach: nothing waits for the
//! body); once the body has ended within [`MAX_REPLAY_BYTES`], a retry sends the copy. A larger
//! or unfinished body is not retried: the copy is dropped as soon as it overflows.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The most of a request body kept for a retry (as Envoy's default per-request buffer limit is
/// of the same order): enough for API calls and gRPC unary messages, bounded per request.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Recording {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    ended: bool,
    overflowed: bool,
}

/// The copy of a body being streamed; cloned into the [`UpstreamBody`] that records it.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Recording>>);

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut Recording) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The whole body again, if it ended within the bound.
    pub fn replay(&self) -> Option<UpstreamBody> {
        self.with(|r| {
            (r.ended && !r.overflowed).then(|| UpstreamBody::Replayed {
                data: r.data.iter().cloned().collect(),
                trailers: r.trailers.clone(),
            })
        })
    }
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, streamed, recorded when a retry may need it.
    Streamed {
        inner: Incoming,
        record: Option<Recorder>,
    },
    /// A recorded body sent again.
    Replayed {
        data: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl UpstreamBody {
    /// The client's body; with `record`, also the [`Recorder`] a retry replays from.
    pub fn from_client(inner: Incoming, record: bool) -> (Self, Option<Recorder>) {
        let recorder = record.then(|| {
            let recorder = Recorder::default();
            // hyper never polls a body that is empty from the start.
            if inner.is_end_stream() {
                recorder.with(|r| r.ended = true);
            }
            recorder
        });
        (
            Self::Streamed {
                inner,
                record: recorder.clone(),
            },
            recorder,
        )
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Streamed { inner, record } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Some(recorder) = record {
                    let end = inner.is_end_stream();
                    recorder.with(|r| match &polled {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                r.bytes = r.bytes.saturating_add(data.len());
                                if r.bytes > MAX_REPLAY_BYTES {
                                    r.overflowed = true;
                                    r.data = Vec::new();
                                } else if !r.overflowed {
                                    r.data.push(data.clone());
                                }
                            } else if let Some(trailers) = frame.trailers_ref() {
                                r.trailers = Some(trailers.clone());
                            }
                            r.ended |= end;
                        }
                        Poll::Ready(None) => r.ended = true,
                        Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                    });
                }
                polled
            }
            Self::Replayed { data, trailers } => Poll::Ready(match data.pop_front() {
                Some(chunk) => Some(Ok(Frame::data(chunk))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { inner, .. } => inner.is_end_stream(),
            Self::Replayed { data, trailers } => data.is_empty() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed { inner, .. } => inner.size_hint(),
            Self::Replayed { data, trailers } => {
                let len: usize = data.iter().map(Bytes::len).sum();
                let len = u64::try_from(len).unwrap_or(u64::MAX);
                if trailers.is_none() {
                    SizeHint::with_exact(len)
                } else {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                }
            }
        }
    }
}
