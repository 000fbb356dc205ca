//! An answer on its way out: forwarded from the engine to the caller while it is recorded for
//! the response cache, the conversation and the metrics; or a cached answer replayed as if it
//! were generated. Either way the caller sees the same events in the same order.
//!
//! Nothing is recorded from an answer that did not finish: a failed, cancelled or timed-out
//! generation leaves the cache and the conversation as they were.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tracing::Instrument;

use super::PromptSpec;
use crate::cache::{CacheKey, ResponseCache};
use crate::conversations::{ConversationStore, TurnGuard};
use crate::engine::grammar::ToolRequest;
use crate::spec::options::SamplingOptions;
use crate::engine::{Completion, DoneReason, EngineError, Event, TokenLogprob};
use crate::metrics::Metrics;
use crate::resources::ModelLease;
use crate::store::ModelEntry;

/// Format of the cached bytes; part of the key, so a new format never reads an old entry.
const FORMAT: &[u8] = b"hearth-answer-v1";

/// The key of an answer: everything the rendered prompt and the sampling depend on. The model's
/// file (digest, or path, size and time) and its Modelfile settings are part of it, so a
/// changed model never hits an old answer.
pub fn cache_key(model: &str, persona: Option<&str>, prompt: &PromptSpec, tools: Option<&ToolRequest>, options: &SamplingOptions) -> CacheKey {
    let prompt = format!("{prompt:?}");
    let tools = format!("{tools:?}");
    let options = format!("{options:?}");
    CacheKey::of(&[FORMAT, crate::VERSION.as_bytes(), model.as_bytes(), persona.unwrap_or("").as_bytes(), prompt.as_bytes(), tools.as_bytes(), options.as_bytes()])
}

/// What identifies a local model's answers: its file (digest, or path, size and time), the
/// weights it was converted to (converted weights answer slightly differently), and its
/// Modelfile settings.
pub fn local_identity(entry: &ModelEntry, weights: crate::engine::convert::Weights) -> String {
    let file = match &entry.digest {
        Some(d) => format!("{} {d}", entry.name),
        None => format!("{} {} {} {:?}", entry.name, entry.path.display(), entry.size, entry.modified),
    };
    format!("local {file} {} {:?}", weights.as_str(), entry.defaults)
}

/// What identifies a provider model's answers: the server and the model's name there.
pub fn remote_identity(url: &str, model: &str) -> String {
    format!("remote {url} {model}")
}

/// A finished answer as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pieces: Vec<Piece>,
    reason: String,
    prompt_tokens: u32,
    eval_tokens: u32,
    context: Vec<i32>,
    /// The stop sequence that ended it (not in the checksum: older entries have none).
    #[serde(default)]
    stop_sequence: Option<String>,
    /// A checksum of the rest, so a corrupted or foreign entry reads as a miss.
    check: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Piece {
    Text(String),
    Logprob { bytes: Vec<u8>, logprob: f32, top: Vec<(Vec<u8>, f32)> },
}

impl CachedAnswer {
    fn new(pieces: Vec<Piece>, c: &Completion) -> CachedAnswer {
        let mut a = CachedAnswer {
            pieces,
            reason: c.reason.as_str().to_string(),
            prompt_tokens: c.prompt_tokens,
            eval_tokens: c.eval_tokens,
            context: c.context.clone(),
            stop_sequence: c.stop_sequence.clone(),
            check: String::new(),
        };
        a.check = a.checksum();
        a
    }

    fn checksum(&self) -> String {
        let body = format!("{:?}{}{}{}{:?}", self.pieces, self.reason, self.prompt_tokens, self.eval_tokens, self.context);
        let digest = Sha256::digest(body.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<CachedAnswer> {
        let a: CachedAnswer = serde_json::from_slice(bytes).ok()?;
        (a.check == a.checksum() && matches!(a.reason.as_str(), "stop" | "length")).then_some(a)
    }
}

/// A conversation turn in progress: its lock and the messages to store with the answer.
pub struct Turn {
    pub store: Option<ConversationStore>,
    pub id: String,
    pub guard: TurnGuard,
    pub model: String,
    pub new_messages: Vec<(String, String)>,
}

/// What to do with an answer once it is complete, and what to hold until then.
pub struct Record {
    pub cache: Option<(ResponseCache, CacheKey)>,
    pub conversation: Option<Turn>,
    pub metrics: Metrics,
    pub model: String,
    pub persona: Option<String>,
    pub started: Instant,
    pub timeout: Option<Duration>,
    /// The request's messages, logged with the answer when `--log-prompts` is on.
    pub log_prompt: Option<String>,
    pub running: Option<super::RunningGuard>,
    pub lease: Option<ModelLease>,
    pub account: Option<std::sync::Arc<super::accounts::Account>>,
    /// A route's target: told how the answer ended, for its breaker and counts.
    pub watch: Option<super::route::Watch>,
}

/// Forwards the engine's events to the returned receiver and records the answer when it is
/// complete. The model's lease and the turn's lock are held until then. Dropping the receiver
/// cancels the generation at once, even while nothing is sent (queued, or reading the prompt):
/// the engine's channel is dropped with it, so the worker drops the request at its next step.
pub fn forward(mut engine: UnboundedReceiver<Event>, mut record: Record) -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    let task = async move {
        let deadline = record.timeout.map(|t| tokio::time::Instant::from_std(record.started) + t);
        let mut pieces = Vec::new();
        let mut answer = String::new();
        let mut first_token = None;
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, engine.recv()).await.ok(),
                    None => Some(engine.recv().await),
                }
            };
            let event = tokio::select! {
                biased;
                () = tx.closed() => {
                    record.metrics.record_error("client_left");
                    tracing::debug!(model = %record.model, "the client left; generation cancelled");
                    return;
                }
                next = next => next,
            };
            let Some(event) = event else {
                let limit = record.timeout.unwrap_or_default();
                if let Some(w) = record.watch.take() {
                    w.failed("timeout");
                }
                record.metrics.record_error("timeout");
                tracing::warn!(model = %record.model, "generation stopped: past the request timeout of {limit:?}");
                let _ = tx.send(Event::Failed(EngineError::TimedOut(limit)));
                return;
            };
            match event {
                Some(Event::Text(t)) => {
                    first_token.get_or_insert_with(Instant::now);
                    answer.push_str(&t);
                    if record.cache.is_some() {
                        pieces.push(Piece::Text(t.clone()));
                    }
                    if tx.send(Event::Text(t)).is_err() {
                        return;
                    }
                }
                Some(Event::Logprob(lp)) => {
                    if record.cache.is_some() {
                        pieces.push(Piece::Logprob { bytes: lp.bytes.clone(), logprob: lp.logprob, top: lp.top.clone() });
                    }
                    if tx.send(Event::Logprob(lp)).is_err() {
                        return;
                    }
                }
                Some(Event::Done(c)) => {
                    if let Some((cache, key)) = &record.cache {
                        cache.put(key, CachedAnswer::new(pieces, &c).encode()).await;
                    }
                    if let Some(w) = record.watch.take() {
                        w.done(&c, first_token);
                    }
                    let ttft = first_token.map(|t| t.duration_since(record.started));
                    let _ = tx.send(finish(record, &answer, c, ttft, false).await);
                    return;
                }
                Some(Event::Failed(e)) => {
                    if let Some(w) = record.watch.take() {
                        w.failed("stream");
                    }
                    let _ = tx.send(Event::Failed(e));
                    return;
                }
                // The engine dropped the request without a last word: its worker died.
                None => {
                    if let Some(w) = record.watch.take() {
                        w.failed("stream");
                    }
                    record.metrics.record_error("worker");
                    tracing::error!(model = %record.model, "generation lost: the model's worker stopped");
                    let _ = tx.send(Event::Failed(EngineError::WorkerGone));
                    return;
                }
            }
        }
    };
    tokio::spawn(task.in_current_span());
    rx
}

/// Replays a cached answer as events, and records the turn like a fresh answer.
pub async fn replay(cached: CachedAnswer, mut record: Record) -> UnboundedReceiver<Event> {
    // Everything is at hand: queue the whole answer now, in this task (no task to spawn and
    // wake per hit), and finish the record before the final event, as a generation does.
    let (tx, rx) = unbounded_channel();
    let replay_started = Instant::now();
    let ttft = Some(replay_started.saturating_duration_since(record.started));
    let mut answer = String::new();
    for piece in cached.pieces {
        let ev = match piece {
            Piece::Text(t) => {
                answer.push_str(&t);
                Event::Text(t)
            }
            Piece::Logprob { bytes, logprob, top } => Event::Logprob(TokenLogprob { bytes, logprob, top }),
        };
        // The receiver is still in this function's hands: sending cannot fail.
        let _ = tx.send(ev);
    }
    let took = replay_started.elapsed().max(Duration::from_micros(1));
    let c = Completion {
        reason: if cached.reason == "length" { DoneReason::Length } else { DoneReason::Stop },
        prompt_tokens: cached.prompt_tokens,
        cached_tokens: 0,
        prompt_eval: Duration::ZERO,
        eval_tokens: cached.eval_tokens,
        eval: took,
        context: cached.context,
        stop_sequence: cached.stop_sequence,
        draft_tokens: 0,
        draft_accepted: 0,
    };
    if let Some(w) = record.watch.take() {
        w.done(&c, Some(replay_started));
    }
    let _ = tx.send(finish(record, &answer, c, ttft, true).await);
    rx
}

/// Stores the turn, counts the tokens, and logs the request's one summary line; returns the
/// answer's last event: `Done`, or `Failed` when its turn could not be stored.
async fn finish(record: Record, answer: &str, c: Completion, ttft: Option<Duration>, hit: bool) -> Event {
    let Record { conversation, metrics, model, persona, started, log_prompt, account, .. } = record;
    let mut not_stored = None;
    if let Some(turn) = conversation {
        if let Some(store) = &turn.store {
            let mut messages = turn.new_messages;
            messages.push(("assistant".to_string(), answer.to_string()));
            if let Err(e) = store.append(&turn.id, &turn.model, messages).await {
                metrics.record_error("conversation");
                tracing::error!(conversation = %turn.id, "could not store the turn: {e}");
                not_stored = Some(EngineError::NotStored(e.to_string()));
            }
        }
        drop(turn.guard);
    }
    let total = started.elapsed();
    metrics.record_generation(&model, u64::from(c.prompt_tokens), u64::from(c.eval_tokens), ttft, total);
    metrics.record_drafts(&model, u64::from(c.draft_tokens), u64::from(c.draft_accepted));
    if let Some(a) = &account {
        a.charge(&metrics, &model, u64::from(c.prompt_tokens), u64::from(c.eval_tokens));
    }
    let cache = if hit { "hit" } else { "miss" };
    let persona = persona.as_deref().unwrap_or("");
    match log_prompt {
        Some(prompt) => tracing::info!(
            model = %model, persona, prompt_tokens = c.prompt_tokens, eval_tokens = c.eval_tokens,
            duration_ms = total.as_millis() as u64, cache, prompt = %prompt, answer = %answer, "generation done"
        ),
        // A cache hit is not a generation: at thousands a second an info line each was a sixth
        // of their cost. The metrics count them.
        None if hit => tracing::debug!(model = %model, persona, eval_tokens = c.eval_tokens, cache, "answered from the cache"),
        None => tracing::info!(
            model = %model, persona, prompt_tokens = c.prompt_tokens, eval_tokens = c.eval_tokens,
            duration_ms = total.as_millis() as u64, cache, "generation done"
        ),
    }
    not_stored.map_or(Event::Done(c), Event::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_answer_round_trips_and_rejects_tampering() {
        let c = Completion { reason: DoneReason::Stop, prompt_tokens: 3, cached_tokens: 0, prompt_eval: Duration::ZERO, eval_tokens: 2, eval: Duration::ZERO, context: vec![1, 2, 3], stop_sequence: None, draft_tokens: 0, draft_accepted: 0 };
        let a = CachedAnswer::new(vec![Piece::Text("Hel".into()), Piece::Text("lo".into())], &c);
        let bytes = a.encode();
        assert_eq!(CachedAnswer::decode(&bytes), Some(a));
        let tampered = String::from_utf8(bytes).expect("utf8").replace("Hel", "Bye");
        assert_eq!(CachedAnswer::decode(tampered.as_bytes()), None);
        assert_eq!(CachedAnswer::decode(b"not json"), None);
    }
}
