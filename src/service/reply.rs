//! One reading of a generation's events for every front end. The backend's `Event`s become
//! `Piece`s: text with the log-probabilities of its tokens, a tool call recognised at the end,
//! then done or failed. Text that may still be a tool call (the request offered tools and the
//! answer so far is blank or starts with `{`) is held back until it can't be one or the answer
//! ends; so a client never sees a call's JSON as text. Front ends only encode pieces.
//!
//! Must not: know a wire format.

use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::backend::{Completion, EngineError, Event, TokenLogprob};
use crate::engine::grammar::ToolRequest;

/// A part of an answer, in order: any number of `Text`, at most one `ToolCall`, then exactly
/// one `Done` or `Failed`.
#[derive(Debug)]
pub enum Piece {
    /// Text to show, with the log-probabilities of the tokens it came from (when asked for).
    Text { text: String, logprobs: Vec<TokenLogprob> },
    /// The whole answer was a call of one of the offered tools.
    ToolCall { name: String, arguments: Value, logprobs: Vec<TokenLogprob> },
    Done(Completion),
    Failed(EngineError),
}

struct Reader {
    events: UnboundedReceiver<Event>,
    tools: Option<ToolRequest>,
    /// Text held back while it may be a tool call.
    held: String,
    holding: bool,
    logprobs: Vec<TokenLogprob>,
    /// Pieces ready to give (the end of an answer makes two).
    ready: std::collections::VecDeque<Piece>,
    ended: bool,
}

impl Reader {
    /// The next piece, or `None` after the last one.
    async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(p);
            }
            if self.ended {
                return None;
            }
            let event = self.events.recv().await;
            match event {
                Some(Event::Logprob(lp)) => self.logprobs.push(lp),
                Some(Event::Text(t)) => {
                    if !self.holding {
                        return Some(Piece::Text { text: t, logprobs: std::mem::take(&mut self.logprobs) });
                    }
                    self.held.push_str(&t);
                    if !self.tools.as_ref().is_some_and(|tr| tr.may_call(&self.held)) {
                        self.holding = false;
                        return Some(Piece::Text { text: std::mem::take(&mut self.held), logprobs: std::mem::take(&mut self.logprobs) });
                    }
                }
                Some(Event::Done(c)) => {
                    self.ended = true;
                    let held = std::mem::take(&mut self.held);
                    let logprobs = std::mem::take(&mut self.logprobs);
                    match self.tools.as_ref().and_then(|tr| tr.parse_call(&held)) {
                        Some((name, arguments)) => self.ready.push_back(Piece::ToolCall { name, arguments, logprobs }),
                        None if !held.is_empty() || !logprobs.is_empty() => self.ready.push_back(Piece::Text { text: held, logprobs }),
                        None => {}
                    }
                    self.ready.push_back(Piece::Done(c));
                }
                Some(Event::Failed(e)) => {
                    self.ended = true;
                    return Some(Piece::Failed(e));
                }
                // Every answer ends with Done or Failed; a channel closed before that lost its
                // producer.
                None => {
                    self.ended = true;
                    return Some(Piece::Failed(EngineError::WorkerGone));
                }
            }
        }
    }
}

/// The pieces of an answer, read from its events once. `tools`: the tools the request offered.
pub fn pieces(events: UnboundedReceiver<Event>, tools: Option<ToolRequest>) -> impl Stream<Item = Piece> + Send {
    let holding = tools.as_ref().is_some_and(|tr| tr.may_call(""));
    let reader = Reader { events, tools, held: String::new(), holding, logprobs: Vec::new(), ready: Default::default(), ended: false };
    futures::stream::unfold(reader, |mut r| async move { r.next().await.map(|p| (p, r)) })
}

/// A whole answer, for a response that is one object.
#[derive(Debug)]
pub struct Collected {
    /// The text shown (empty when the answer was a tool call).
    pub text: String,
    /// Every token's log-probability, the tool call's included (when asked for).
    pub logprobs: Vec<TokenLogprob>,
    pub tool_call: Option<(String, Value)>,
    pub completion: Completion,
}

/// Reads the whole answer.
pub async fn collect(events: UnboundedReceiver<Event>, tools: Option<ToolRequest>) -> Result<Collected, EngineError> {
    use futures::StreamExt;
    let mut text = String::new();
    let mut all_logprobs = Vec::new();
    let mut tool_call = None;
    let stream = pieces(events, tools);
    futures::pin_mut!(stream);
    while let Some(piece) = stream.next().await {
        match piece {
            Piece::Text { text: t, logprobs } => {
                text.push_str(&t);
                all_logprobs.extend(logprobs);
            }
            Piece::ToolCall { name, arguments, logprobs } => {
                all_logprobs.extend(logprobs);
                tool_call = Some((name, arguments));
            }
            Piece::Done(completion) => return Ok(Collected { text, logprobs: all_logprobs, tool_call, completion }),
            Piece::Failed(e) => return Err(e),
        }
    }
    Err(EngineError::WorkerGone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DoneReason;
    use crate::engine::grammar::{ToolChoice, ToolSpec};
    use futures::StreamExt;
    use std::time::Duration;

    fn done() -> Event {
        Event::Done(Completion { reason: DoneReason::Stop, prompt_tokens: 1, cached_tokens: 0, prompt_eval: Duration::ZERO, eval_tokens: 2, eval: Duration::ZERO, context: Vec::new(), stop_sequence: None, draft_tokens: 0, draft_accepted: 0 })
    }

    fn tools() -> ToolRequest {
        ToolRequest {
            tools: vec![ToolSpec { name: "weather".into(), description: String::new(), parameters: serde_json::json!({"type": "object"}) }],
            choice: ToolChoice::Auto,
        }
    }

    async fn read(events: Vec<Event>, tools: Option<ToolRequest>) -> Vec<String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in events {
            tx.send(e).expect("open");
        }
        drop(tx);
        pieces(rx, tools)
            .map(|p| match p {
                Piece::Text { text, logprobs } => format!("text {text:?} {}", logprobs.len()),
                Piece::ToolCall { name, arguments, .. } => format!("call {name} {arguments}"),
                Piece::Done(c) => format!("done {}", c.eval_tokens),
                Piece::Failed(e) => format!("failed {e}"),
            })
            .collect()
            .await
    }

    fn lp() -> Event {
        Event::Logprob(TokenLogprob { bytes: b"x".to_vec(), logprob: -0.5, top: Vec::new() })
    }

    #[tokio::test]
    async fn text_passes_as_it_comes_with_its_logprobs() {
        let got = read(vec![lp(), Event::Text("Hel".into()), lp(), Event::Text("lo".into()), done()], None).await;
        assert_eq!(got, ["text \"Hel\" 1", "text \"lo\" 1", "done 2"]);
    }

    #[tokio::test]
    async fn a_tool_call_is_held_back_and_given_whole() {
        let call = r#"{"name": "weather", "arguments": {"city": "Paris"}}"#;
        let (a, b) = call.split_at(10);
        let got = read(vec![Event::Text(" ".into()), Event::Text(a.into()), Event::Text(b.into()), done()], Some(tools())).await;
        assert_eq!(got, [r#"call weather {"city":"Paris"}"#, "done 2"]);
    }

    #[tokio::test]
    async fn text_that_cannot_be_a_call_is_released_at_once() {
        let got = read(vec![Event::Text(" ".into()), Event::Text("Sunny".into()), Event::Text(" today".into()), done()], Some(tools())).await;
        assert_eq!(got, ["text \" Sunny\" 0", "text \" today\" 0", "done 2"]);
    }

    #[tokio::test]
    async fn json_that_is_not_a_call_is_given_as_text_at_the_end() {
        let got = read(vec![Event::Text("{\"a\": 1}".into()), done()], Some(tools())).await;
        assert_eq!(got, ["text \"{\\\"a\\\": 1}\" 0", "done 2"]);
    }

    #[tokio::test]
    async fn an_answer_cut_off_ends_in_one_failure() {
        let got = read(vec![Event::Text("Hi".into())], None).await;
        assert_eq!(got, ["text \"Hi\" 0", "failed the model's worker has stopped"]);
        let got = read(vec![Event::Text("Hi".into()), Event::Failed(EngineError::TimedOut(Duration::from_secs(1))), Event::Text("late".into())], None).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].starts_with("failed the request ran past"), "{got:?}");
    }

    #[tokio::test]
    async fn collect_gathers_text_logprobs_and_the_call() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in [lp(), Event::Text(r#"{"name": "weather", "arguments": {}}"#.into()), done()] {
            tx.send(e).expect("open");
        }
        let c = collect(rx, Some(tools())).await.expect("done");
        assert_eq!(c.text, "");
        assert_eq!(c.tool_call.map(|(n, _)| n).as_deref(), Some("weather"));
        assert_eq!(c.logprobs.len(), 1);
        assert_eq!(c.completion.eval_tokens, 2);
    }
}
