//! Streamed answers: server-sent events handed to the connection one at a time, with an
//! optional pause between them, and the two ways a stream can go wrong mid-way
//! (`Fault::StreamBreak`, `Fault::StreamError`).

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// One SSE event carrying `json`: `data: {...}` and a blank line, as compatible mode sends
/// (the curl example on the streaming page).
pub(crate) fn event(json: &Value) -> Bytes {
    Bytes::from(format!("data: {}\n\n", serde_json::to_string(json).unwrap_or_default()))
}

/// The end marker of an OpenAI-style stream.
pub(crate) fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// The pieces a text is streamed in: a word and the space after it, so they concatenate back
/// to the text exactly.
pub(crate) fn pieces(text: &str) -> Vec<&str> {
    let pieces: Vec<&str> = text.split_inclusive(' ').collect();
    if pieces.is_empty() {
        vec![""]
    } else {
        pieces
    }
}

/// Why a broken stream's body ended: hyper closes the connection without the last chunk.
#[derive(Debug)]
pub(crate) struct StreamBroken;

impl std::fmt::Display for StreamBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream broken by the stand-in (fault)")
    }
}

impl std::error::Error for StreamBroken {}

pub(crate) struct SseBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Events handed to the connection so far.
    sent: usize,
    /// When the events run out, fail instead of ending: the connection drops mid-body.
    broken: bool,
    /// Told the index of each event as it is handed to the connection.
    on_sent: Box<dyn FnMut(usize) + Send>,
}

impl SseBody {
    pub(crate) fn new(
        events: Vec<Bytes>,
        delay: Duration,
        broken: bool,
        on_sent: Box<dyn FnMut(usize) + Send>,
    ) -> SseBody {
        SseBody { events: events.into(), delay, sleep: None, sent: 0, broken, on_sent }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = StreamBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamBroken>>> {
        let this = self.get_mut();
        if this.events.is_empty() {
            if this.broken {
                this.broken = false;
                return Poll::Ready(Some(Err(StreamBroken)));
            }
            return Poll::Ready(None);
        }
        if this.sent > 0 && !this.delay.is_zero() {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let event = this.events.pop_front();
        if event.is_some() {
            (this.on_sent)(this.sent);
            this.sent += 1;
        }
        Poll::Ready(event.map(|e| Ok(Frame::data(e))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty() && !self.broken
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
