//! A streamed Responses answer as OpenAI's typed events: `response.created` and
//! `response.in_progress`; for a text answer `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`s, then the `.done` events; for a
//! call `response.function_call_arguments.delta` and `.done`; and at the end
//! `response.completed` (or `response.incomplete`, `response.failed`) with the whole response,
//! stored first when it is to be kept. Every event carries its `sequence_number`.

use std::sync::Arc;

use super::responses::{answer_text, finished_status, function_call_item, message_item, response_object, store_turn, Turn};
use super::*;

/// What the stream has opened so far.
struct Progress {
    app: AppState,
    turn: Arc<Turn>,
    /// The message item being written, and its text so far.
    message: Option<Value>,
    text: String,
    call: Option<(String, Value)>,
}

impl Progress {
    fn open_message(&mut self, out: &mut Vec<Value>) -> Value {
        if let Some(m) = &self.message {
            return m["id"].clone();
        }
        let mut item = message_item("", "in_progress");
        item["content"] = json!([]);
        out.push(json!({ "type": "response.output_item.added", "output_index": 0, "item": item }));
        out.push(json!({ "type": "response.content_part.added", "item_id": item["id"], "output_index": 0, "content_index": 0,
                         "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] } }));
        let id = item["id"].clone();
        self.message = Some(item);
        id
    }

    async fn events(&mut self, piece: Piece) -> Vec<Value> {
        let mut out = Vec::new();
        match piece {
            Piece::Text { text, .. } => {
                let id = self.open_message(&mut out);
                self.text.push_str(&text);
                out.push(json!({ "type": "response.output_text.delta", "item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": [] }));
            }
            Piece::ToolCall { name, arguments, .. } => {
                let args = arguments.to_string();
                let mut item = function_call_item(&name, "", "in_progress");
                out.push(json!({ "type": "response.output_item.added", "output_index": 0, "item": item }));
                out.push(json!({ "type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": 0, "delta": args }));
                out.push(json!({ "type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": 0, "name": name, "arguments": args }));
                item["arguments"] = json!(args);
                item["status"] = json!("completed");
                out.push(json!({ "type": "response.output_item.done", "output_index": 0, "item": item.clone() }));
                self.message = Some(item);
                self.call = Some((name, arguments));
            }
            Piece::Done(c) => {
                if self.call.is_none() {
                    let id = self.open_message(&mut out);
                    let part = json!({ "type": "output_text", "text": self.text, "annotations": [], "logprobs": [] });
                    out.push(json!({ "type": "response.output_text.done", "item_id": id, "output_index": 0, "content_index": 0, "text": self.text, "logprobs": [] }));
                    out.push(json!({ "type": "response.content_part.done", "item_id": id, "output_index": 0, "content_index": 0, "part": part.clone() }));
                    if let Some(m) = self.message.as_mut() {
                        m["content"] = json!([part]);
                        m["status"] = json!("completed");
                    }
                    out.push(json!({ "type": "response.output_item.done", "output_index": 0, "item": self.message }));
                }
                let status = finished_status(&c);
                let body = response_object(&self.turn, status, self.message.iter().cloned().collect(), Some(&c));
                match store_turn(&self.app, &self.turn, answer_text(&self.text, self.call.as_ref()), &body).await {
                    Ok(()) => out.push(json!({ "type": format!("response.{status}"), "response": body })),
                    Err(e) => out.extend(self.failed(e)),
                }
            }
            Piece::Failed(e) => out.extend(self.failed(ApiError::from(e))),
        }
        out
    }

    fn failed(&self, e: ApiError) -> Vec<Value> {
        let mut body = response_object(&self.turn, "failed", Vec::new(), None);
        body["error"] = json!({ "code": "server_error", "message": e.shown() });
        vec![
            json!({ "type": "error", "code": "server_error", "message": e.shown(), "param": null }),
            json!({ "type": "response.failed", "response": body }),
        ]
    }
}

pub(super) fn stream_response(app: &AppState, g: Generation, tools: Option<ToolRequest>, turn: Turn) -> Response {
    let turn = Arc::new(turn);
    let created = response_object(&turn, "in_progress", Vec::new(), None);
    let head = futures::stream::iter(vec![
        json!({ "type": "response.created", "response": created }),
        json!({ "type": "response.in_progress", "response": created }),
    ]);
    let progress = Progress { app: app.clone(), turn, message: None, text: String::new(), call: None };
    let pieces = reply::pieces(g.events, tools).boxed();
    let body = futures::stream::unfold((pieces, progress), |(mut pieces, mut progress)| async move {
        let piece = pieces.next().await?;
        let events = progress.events(piece).await;
        Some((futures::stream::iter(events), (pieces, progress)))
    })
    .flatten();
    let cut = json!({ "type": "error", "code": "server_error", "message": "the server is shutting down; this answer is incomplete", "param": null });
    let mut seq = 0u64;
    let events = app.lifecycle.until_shutdown(head.chain(body), cut).map(move |mut v| {
        v["sequence_number"] = json!(seq);
        seq += 1;
        let name = v["type"].as_str().unwrap_or("message").to_string();
        Ok::<_, Infallible>(SseEvent::default().event(name).data(v.to_string()))
    });
    Sse::new(events).into_response()
}
