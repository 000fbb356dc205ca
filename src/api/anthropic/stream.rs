//! A streamed Messages answer as Anthropic's named server-sent events: `message_start`, a
//! `ping`, then per content block `content_block_start`, its deltas (`text_delta`, or one
//! `input_json_delta` with a call's arguments) and `content_block_stop`; then `message_delta`
//! (stop reason and usage) and `message_stop`. A failure after the start is an `error` event.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{message_id, stop_reason, tool_use_id, usage, AnthropicError};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::engine::grammar::ToolRequest;
use crate::service::reply::{self, Piece};
use crate::service::Generation;

/// Which content block is open, and how many came before it.
#[derive(Default)]
struct Blocks {
    next: usize,
    text_open: bool,
    called: bool,
}

impl Blocks {
    fn close_text(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.text_open {
            out.push(("content_block_stop", json!({ "type": "content_block_stop", "index": self.next })));
            self.text_open = false;
            self.next += 1;
        }
    }

    fn events(&mut self, piece: Piece) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        match piece {
            Piece::Text { text, .. } if text.is_empty() => {}
            Piece::Text { text, .. } => {
                if !self.text_open {
                    out.push(("content_block_start", json!({ "type": "content_block_start", "index": self.next, "content_block": { "type": "text", "text": "" } })));
                    self.text_open = true;
                }
                out.push(("content_block_delta", json!({ "type": "content_block_delta", "index": self.next, "delta": { "type": "text_delta", "text": text } })));
            }
            Piece::ToolCall { name, arguments, .. } => {
                self.close_text(&mut out);
                let index = self.next;
                out.push(("content_block_start", json!({ "type": "content_block_start", "index": index, "content_block": { "type": "tool_use", "id": tool_use_id(), "name": name, "input": {} } })));
                out.push(("content_block_delta", json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": arguments.to_string() } })));
                out.push(("content_block_stop", json!({ "type": "content_block_stop", "index": index })));
                self.next += 1;
                self.called = true;
            }
            Piece::Done(c) => {
                self.close_text(&mut out);
                let (reason, sequence) = stop_reason(&c, self.called);
                out.push(("message_delta", json!({ "type": "message_delta", "delta": { "stop_reason": reason, "stop_sequence": sequence }, "usage": usage(&c) })));
                out.push(("message_stop", json!({ "type": "message_stop" })));
            }
            Piece::Failed(e) => out.push(("error", AnthropicError(ApiError::from(e)).body())),
        }
        out
    }
}

pub(super) fn respond(app: &AppState, g: Generation, model: String, tools: Option<ToolRequest>) -> Response {
    let start = json!({ "type": "message_start", "message": {
        "id": message_id(), "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": 0, "output_tokens": 0 },
    }});
    let head = futures::stream::iter(vec![("message_start", start), ("ping", json!({ "type": "ping" }))]);
    let mut blocks = Blocks::default();
    let body = reply::pieces(g.events, tools).flat_map(move |p| futures::stream::iter(blocks.events(p)));
    let cut = ("error", AnthropicError(ApiError { status: axum::http::StatusCode::SERVICE_UNAVAILABLE, message: "the server is shutting down; this answer is incomplete".into(), retry_after: None }).body());
    let events = app
        .lifecycle
        .until_shutdown(head.chain(body), cut)
        .map(|(name, data)| Ok::<_, Infallible>(SseEvent::default().event(name).data(data.to_string())));
    Sse::new(events).into_response()
}
