//! Ollama's wire format: request structs as clients send them, their validation into
//! `ValidRequest`, and the response objects (streamed chunks, final summary, aggregate).
//!
//! Used by the HTTP routes and by `hearth stdio`, so both speak exactly the same objects.

use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::options::RawOptions;
use crate::engine::template::TemplateMessage;
use crate::engine::{Completion, Event};
use crate::resources::KeepAlive;
use crate::service::{Generation, Outcome, PromptSpec, ValidRequest};

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub context: Option<Vec<i64>>,
    pub stream: Option<bool>,
    pub raw: Option<bool>,
    pub format: Option<Value>,
    pub keep_alive: Option<Value>,
    pub images: Option<Vec<Value>>,
    pub options: Option<Value>,
    pub think: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub tools: Option<Vec<Value>>,
    pub format: Option<Value>,
    pub options: Option<Value>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    pub images: Option<Vec<Value>>,
}

/// Which endpoint's objects to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generate,
    Chat,
}

/// Parses a JSON body, with Ollama's messages for an empty or malformed one.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing request body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn common(
    model: Option<String>,
    options: Option<&Value>,
    keep_alive: Option<&Value>,
    format: Option<&Value>,
    think: Option<&Value>,
    default_num_ctx: u32,
) -> Result<(String, RawOptions, crate::engine::options::SamplingOptions, Option<KeepAlive>), ApiError> {
    let model = model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("model is required"))?;
    let raw = match options {
        None | Some(Value::Null) => RawOptions::default(),
        Some(v) => RawOptions::from_json(v).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let options = raw.validate(default_num_ctx).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let keep_alive = keep_alive
        .filter(|v| !v.is_null())
        .map(KeepAlive::from_json)
        .transpose()
        .map_err(ApiError::bad_request)?;
    match format {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => return Err(ApiError::bad_request("structured output (format) is not supported yet")),
    }
    if matches!(think, Some(Value::Bool(true)) | Some(Value::String(_))) {
        return Err(ApiError::bad_request(format!("\"{model}\" does not support thinking")));
    }
    Ok((model, raw, options, keep_alive))
}

impl GenerateRequest {
    pub fn validate(self, default_num_ctx: u32) -> Result<ValidRequest, ApiError> {
        let (model, raw_options, options, keep_alive) = common(
            self.model,
            self.options.as_ref(),
            self.keep_alive.as_ref(),
            self.format.as_ref(),
            self.think.as_ref(),
            default_num_ctx,
        )?;
        if self.images.is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::bad_request(format!("\"{model}\" does not support images")));
        }
        if self.suffix.is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(format!("\"{model}\" does not support insert (suffix)")));
        }
        let raw = self.raw.unwrap_or(false);
        let context: Vec<i32> = self
            .context
            .unwrap_or_default()
            .into_iter()
            .map(|t| i32::try_from(t).map_err(|_| ApiError::bad_request(format!("context token {t} is out of range"))))
            .collect::<Result<_, _>>()?;
        if raw && (self.template.is_some() || self.system.is_some() || !context.is_empty()) {
            return Err(ApiError::bad_request("raw mode does not support template, system, or context"));
        }
        Ok(ValidRequest {
            model,
            prompt: PromptSpec::Generate {
                prompt: self.prompt.unwrap_or_default(),
                system: self.system,
                template: self.template.filter(|t| !t.is_empty()),
                raw,
                context,
            },
            options,
            raw_options,
            keep_alive,
            stream: self.stream.unwrap_or(true),
        })
    }
}

impl ChatRequest {
    pub fn validate(self, default_num_ctx: u32) -> Result<ValidRequest, ApiError> {
        let (model, raw_options, options, keep_alive) = common(
            self.model,
            self.options.as_ref(),
            self.keep_alive.as_ref(),
            self.format.as_ref(),
            self.think.as_ref(),
            default_num_ctx,
        )?;
        if self.tools.is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request(format!("\"{model}\" does not support tools yet")));
        }
        let mut messages = Vec::new();
        for m in self.messages.unwrap_or_default() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                return Err(ApiError::bad_request(format!(
                    "invalid message role {:?}: use system, user, assistant or tool",
                    m.role
                )));
            }
            if m.images.is_some_and(|i| !i.is_empty()) {
                return Err(ApiError::bad_request(format!("\"{model}\" does not support images")));
            }
            messages.push(TemplateMessage {
                role: m.role,
                content: m.content.unwrap_or_default(),
            });
        }
        Ok(ValidRequest {
            model,
            prompt: PromptSpec::Chat { messages },
            options,
            raw_options,
            keep_alive,
            stream: self.stream.unwrap_or(true),
        })
    }
}

/// Ollama's timestamp format: RFC 3339 with nanoseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn base(kind: Kind, model: &str, text: &str, done: bool) -> Value {
    let mut v = json!({ "model": model, "created_at": timestamp(SystemTime::now()) });
    match kind {
        Kind::Generate => v["response"] = json!(text),
        Kind::Chat => v["message"] = json!({ "role": "assistant", "content": text }),
    }
    v["done"] = json!(done);
    v
}

/// The response for an empty prompt: the model was loaded or unloaded.
pub fn load_response(kind: Kind, model: &str, outcome_unloaded: bool, load: Duration, started: Instant) -> Value {
    let mut v = base(kind, model, "", true);
    v["done_reason"] = json!(if outcome_unloaded { "unload" } else { "load" });
    if !outcome_unloaded {
        v["total_duration"] = json!(nanos(started.elapsed()));
        v["load_duration"] = json!(nanos(load));
    }
    v
}

fn final_response(kind: Kind, model: &str, text: &str, c: &Completion, load: Duration, started: Instant) -> Value {
    let mut v = base(kind, model, text, true);
    v["done_reason"] = json!(c.reason.as_str());
    if kind == Kind::Generate {
        v["context"] = json!(c.context);
    }
    v["total_duration"] = json!(nanos(started.elapsed()));
    v["load_duration"] = json!(nanos(load));
    v["prompt_eval_count"] = json!(c.prompt_tokens);
    v["prompt_eval_duration"] = json!(nanos(c.prompt_eval));
    v["eval_count"] = json!(c.eval_tokens);
    v["eval_duration"] = json!(nanos(c.eval));
    v
}

/// One token's log-probability as Ollama reports it (`token`, `logprob`, `bytes`,
/// `top_logprobs`).
pub fn logprob_json(lp: &crate::engine::TokenLogprob) -> Value {
    let entry = |bytes: &[u8], logprob: f32| json!({ "token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes });
    let mut v = entry(&lp.bytes, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|(b, l)| entry(b, *l)).collect();
    v
}

fn unexpected_end() -> ApiError {
    ApiError::internal("generation ended unexpectedly")
}

/// The NDJSON objects of a streamed response: one per text piece, then the summary, or an
/// `{"error": ...}` object if generation fails after it started.
pub fn response_stream(generation: Generation, kind: Kind, model: String) -> impl Stream<Item = Value> + Send {
    futures::stream::unfold(Some(generation), move |state| {
        let model = model.clone();
        async move {
            let mut g = state?;
            let mut logprobs = Vec::new();
            loop {
                return match g.events.recv().await {
                    Some(Event::Logprob(lp)) => {
                        logprobs.push(logprob_json(&lp));
                        continue;
                    }
                    Some(Event::Text(t)) => {
                        let mut v = base(kind, &model, &t, false);
                        if !logprobs.is_empty() {
                            v["logprobs"] = Value::Array(logprobs);
                        }
                        Some((v, Some(g)))
                    }
                    Some(Event::Done(c)) => {
                        let v = final_response(kind, &model, "", &c, g.lease.load_duration, g.started);
                        Some((v, None))
                    }
                    Some(Event::Failed(e)) => Some((ApiError::from(e).body(), None)),
                    None => Some((unexpected_end().body(), None)),
                };
            }
        }
    })
}

/// The single object of a `stream: false` response.
pub async fn collect(mut g: Generation, kind: Kind, model: &str) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        match g.events.recv().await {
            Some(Event::Logprob(lp)) => logprobs.push(logprob_json(&lp)),
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(c)) => {
                let mut v = final_response(kind, model, &text, &c, g.lease.load_duration, g.started);
                if !logprobs.is_empty() {
                    v["logprobs"] = Value::Array(logprobs);
                }
                return Ok(v);
            }
            Some(Event::Failed(e)) => return Err(e.into()),
            None => return Err(unexpected_end()),
        }
    }
}

/// Runs a validated request and returns either one object or a stream of them.
pub enum Reply {
    One(Value),
    Stream(Generation),
}

pub async fn run(
    manager: &crate::resources::ModelManager,
    req: ValidRequest,
    kind: Kind,
    caller: crate::service::Caller,
    started: Instant,
) -> Result<Reply, ApiError> {
    let model = req.model.clone();
    let stream = req.stream;
    match crate::service::start(manager, req, caller, started).await? {
        Outcome::Loaded { unloaded, load_duration } => {
            Ok(Reply::One(load_response(kind, &model, unloaded, load_duration, started)))
        }
        Outcome::Generating(g) if stream => Ok(Reply::Stream(g)),
        Outcome::Generating(g) => Ok(Reply::One(collect(g, kind, &model).await?)),
    }
}
