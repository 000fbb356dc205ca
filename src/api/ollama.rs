//! Ollama's wire format: request structs as clients send them, their validation into
//! `ValidRequest`, and the response objects (streamed chunks, final summary, aggregate).
//!
//! Used by the HTTP routes and by `hearth stdio`, so both speak exactly the same objects.

use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::grammar::{ToolChoice, ToolRequest};
use crate::spec::options::OptionPatch;
use crate::spec::template::TemplateMessage;
use crate::engine::Completion;
use crate::resources::KeepAlive;
use crate::service::reply::{self, Piece};
use crate::service::{Generation, Outcome, PromptSpec, ResponseInfo, ValidRequest};

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
    /// Cut a prompt too long for the context from the front (default: refuse it with a 400).
    pub truncate: Option<bool>,
    /// `false`: end the answer when the context fills instead of shifting it.
    pub shift: Option<bool>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub service: ServiceFields,
}

/// hearth's service-layer fields, accepted on every generation request of both APIs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceFields {
    /// A persona by name.
    pub persona: Option<String>,
    /// `true` caches a sampled answer too, `false` bypasses the cache.
    pub use_cache: Option<bool>,
    /// Continue this server-side conversation: send only the new messages.
    pub conversation_id: Option<String>,
    /// A named prompt template (with `variables`); on `/api/generate`, `template` names one
    /// only when `variables` is given, and is Ollama's prompt template otherwise.
    pub prompt_template: Option<String>,
    /// The template's variables: strings, numbers or booleans.
    pub variables: Option<serde_json::Map<String, Value>>,
}

impl ServiceFields {
    /// Validates the fields; `template` is the request's own `template` field, a prompt
    /// template's name when `variables` come with it.
    pub fn validate(self, template: Option<String>) -> Result<crate::service::ServiceOptions, ApiError> {
        let non_empty = |field: &str, v: Option<String>| -> Result<Option<String>, ApiError> {
            match v {
                Some(s) if s.trim().is_empty() => Err(ApiError::bad_request(format!("{field} must not be empty"))),
                v => Ok(v),
            }
        };
        let name = non_empty("prompt_template", self.prompt_template.or(template))?;
        let template = match (name, self.variables) {
            (None, None) => None,
            (None, Some(_)) => return Err(ApiError::bad_request("variables need a template: name one with \"template\"")),
            (Some(name), vars) => {
                Some(crate::service::TemplateUse { name, variables: template_variables(vars.unwrap_or_default())? })
            }
        };
        Ok(crate::service::ServiceOptions {
            sticky: None,
            persona: non_empty("persona", self.persona)?,
            use_cache: self.use_cache,
            conversation_id: non_empty("conversation_id", self.conversation_id)?,
            template,
            account: None,
            prior: Vec::new(),
        })
    }
}

/// A prompt template's variables as text: strings, numbers or booleans.
pub fn template_variables(vars: serde_json::Map<String, Value>) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    vars.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(ApiError::bad_request(format!("variable '{k}' must be a string, number or boolean"))),
        })
        .collect()
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
    /// Cut a prompt too long for the context from the front (default: refuse it with a 400).
    pub truncate: Option<bool>,
    /// `false`: end the answer when the context fills instead of shifting it.
    pub shift: Option<bool>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// hearth's own: OpenAI's `tool_choice` (`auto` by default).
    pub tool_choice: Option<Value>,
    /// hearth's own: a prompt template's name, with `variables`.
    pub template: Option<String>,
    #[serde(flatten)]
    pub service: ServiceFields,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    pub images: Option<Vec<Value>>,
    pub tool_calls: Option<Vec<Value>>,
    /// Accepted on `tool` messages; the templates hearth renders don't use it.
    #[allow(dead_code)]
    pub tool_name: Option<String>,
}

/// Which endpoint's objects to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generate,
    Chat,
}

pub use super::extract::parse_body;

/// The fields every Ollama request shares (`model`, `options`, `keep_alive`), validated.
pub struct Common {
    pub model: String,
    pub options: OptionPatch,
    pub keep_alive: Option<KeepAlive>,
    /// Set by `generation_common`: the grammar from `format`, and `logprobs`.
    pub grammar: Option<String>,
    /// The format the grammar came from, for a provider's model.
    pub format: Option<crate::backend::OutputFormat>,
    pub logprobs: Option<u8>,
}

/// Most alternatives a request may ask log-probabilities for.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// Validates the model name, the `options` object and `keep_alive`.
pub fn common(model: Option<String>, options: Option<&Value>, keep_alive: Option<&Value>) -> Result<Common, ApiError> {
    let model = model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("model is required"))?;
    let options = match options {
        None => OptionPatch::default(),
        Some(v) => OptionPatch::from_json(v).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let keep_alive = keep_alive
        .filter(|v| !v.is_null())
        .map(KeepAlive::from_json)
        .transpose()
        .map_err(ApiError::bad_request)?;
    Ok(Common { model, options, keep_alive, grammar: None, format: None, logprobs: None })
}

/// `common` plus what generation adds: `format` (a grammar), `logprobs`, and `think`.
fn generation_common(
    model: Option<String>,
    options: Option<&Value>,
    keep_alive: Option<&Value>,
    format: Option<&Value>,
    think: Option<&Value>,
    logprobs: (Option<bool>, Option<i64>),
) -> Result<Common, ApiError> {
    let mut c = common(model, options, keep_alive)?;
    c.grammar = super::tools::format_grammar(format)?;
    c.format = super::tools::output_format(format);
    c.logprobs = logprob_request(logprobs.0, logprobs.1)?;
    if matches!(think, Some(Value::Bool(true)) | Some(Value::String(_))) {
        return Err(ApiError::bad_request(format!("\"{}\" does not support thinking", c.model)));
    }
    Ok(c)
}

/// `logprobs`/`top_logprobs` as the engine takes them: `None` (off) or the number of
/// alternatives.
pub fn logprob_request(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<u8>, ApiError> {
    let top = match top {
        None => 0,
        Some(n) if (0..=MAX_TOP_LOGPROBS).contains(&n) => n as u8,
        Some(n) => return Err(ApiError::bad_request(format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {n}"))),
    };
    Ok((logprobs == Some(true) || top > 0).then_some(top))
}

impl GenerateRequest {
    pub fn validate(self) -> Result<ValidRequest, ApiError> {
        // A prompt template by `template` when variables come with it; else Ollama's.
        let (template, prompt_template) = match self.service.variables {
            Some(_) => (None, self.template),
            None => (self.template, None),
        };
        let service = self.service.validate(prompt_template)?;
        let Common { model, mut options, keep_alive, grammar, format, logprobs } = generation_common(
            self.model.or_else(|| service.persona.clone()),
            self.options.as_ref(),
            self.keep_alive.as_ref(),
            self.format.as_ref(),
            self.think.as_ref(),
            (self.logprobs, self.top_logprobs),
        )?;
        (options.truncate, options.shift) = (self.truncate, self.shift);
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
        if raw && (template.is_some() || self.system.is_some() || !context.is_empty()) {
            return Err(ApiError::bad_request("raw mode does not support template, system, or context"));
        }
        Ok(ValidRequest {
            model,
            prompt: PromptSpec::Generate {
                prompt: self.prompt.unwrap_or_default(),
                system: self.system,
                template: template.filter(|t| !t.is_empty()),
                raw,
                context,
            },
            tools: None,
            options,
            grammar,
            format,
            logprobs,
            keep_alive,
            stream: self.stream.unwrap_or(true),
            service,
        })
    }
}

impl ChatRequest {
    pub fn validate(self) -> Result<ValidRequest, ApiError> {
        let service = self.service.validate(self.template)?;
        let Common { model, mut options, keep_alive, mut grammar, format, logprobs } = generation_common(
            self.model.or_else(|| service.persona.clone()),
            self.options.as_ref(),
            self.keep_alive.as_ref(),
            self.format.as_ref(),
            self.think.as_ref(),
            (self.logprobs, self.top_logprobs),
        )?;
        (options.truncate, options.shift) = (self.truncate, self.shift);
        let tools = match self.tools.filter(|t| !t.is_empty()) {
            None => None,
            Some(_) if grammar.is_some() => {
                return Err(ApiError::bad_request("format and tools can't be combined: a tool call is already JSON"));
            }
            Some(t) => {
                // Ollama's API has no tool_choice. A client that sends tools with a user's
                // question wants a call, and small models rarely volunteer one: hearth calls a
                // tool on a user turn and lets the model choose after a tool's result.
                // `tool_choice` (hearth's own field, OpenAI's values) overrides this.
                let last_is_user = self.messages.as_ref().and_then(|m| m.last()).is_some_and(|m| m.role == "user");
                let choice = match &self.tool_choice {
                    Some(c) => super::tools::tool_choice(Some(c))?,
                    None if last_is_user => ToolChoice::Required,
                    None => ToolChoice::Auto,
                };
                let tools = ToolRequest { tools: super::tools::parse_tools(&t)?, choice };
                grammar = tools.grammar()?;
                Some(tools)
            }
        };
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
            let mut content = m.content.unwrap_or_default();
            if content.is_empty() {
                // An earlier call of the model's is shown to it as the JSON it wrote.
                if let Some(f) = m.tool_calls.as_ref().and_then(|c| c.first()).and_then(|c| c.get("function")) {
                    content = json!({ "name": f.get("name"), "arguments": f.get("arguments") }).to_string();
                }
            }
            messages.push(TemplateMessage { role: m.role, content });
        }
        Ok(ValidRequest {
            model,
            prompt: PromptSpec::Chat { messages, tools: tools.as_ref().map(ToolRequest::offered).unwrap_or_default() },
            tools,
            options,
            grammar,
            format,
            logprobs,
            keep_alive,
            stream: self.stream.unwrap_or(true),
            service,
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

/// The NDJSON objects of a streamed response: one per text piece, then the summary, or an
/// `{"error": ...}` object if generation fails after it started. When tools were offered and
/// the answer starts like a call, it is held back and sent as `message.tool_calls` at the end.
pub fn response_stream(generation: Generation, kind: Kind, model: String, tools: Option<ToolRequest>) -> impl Stream<Item = Value> + Send {
    use futures::StreamExt;
    let Generation { events, load_duration, started, info } = generation;
    reply::pieces(events, tools).map(move |piece| match piece {
        Piece::Text { text, logprobs } => {
            let mut v = base(kind, &model, &text, false);
            if !logprobs.is_empty() {
                v["logprobs"] = Value::Array(logprobs.iter().map(logprob_json).collect());
            }
            v
        }
        Piece::ToolCall { name, arguments, .. } => {
            let mut v = base(kind, &model, "", false);
            v["message"]["tool_calls"] = json!([super::tools::ollama_call(&name, &arguments)]);
            v
        }
        Piece::Done(c) => {
            let mut v = final_response(kind, &model, "", &c, load_duration, started);
            annotate(&mut v, &info);
            v
        }
        Piece::Failed(e) => ApiError::from(e).body(),
    })
}

/// The single object of a `stream: false` response.
pub async fn collect(g: Generation, kind: Kind, model: &str, tools: Option<&ToolRequest>) -> Result<Value, ApiError> {
    let Generation { events, load_duration, started, info } = g;
    let answer = reply::collect(events, tools.cloned()).await?;
    let mut v = final_response(kind, model, &answer.text, &answer.completion, load_duration, started);
    annotate(&mut v, &info);
    if let Some((name, args)) = answer.tool_call {
        v["message"]["tool_calls"] = json!([super::tools::ollama_call(&name, &args)]);
    }
    if !answer.logprobs.is_empty() {
        v["logprobs"] = Value::Array(answer.logprobs.iter().map(logprob_json).collect());
    }
    Ok(v)
}

/// The service layer's report in a final object: whether the cache answered, and the
/// conversation's accounting.
pub fn annotate(v: &mut Value, info: &ResponseInfo) {
    v["cache"] = json!(info.cache.as_str());
    if let Some(p) = &info.persona {
        v["persona"] = json!(p);
    }
    if let Some(id) = &info.conversation_id {
        v["conversation_id"] = json!(id);
        v["dropped_messages"] = json!(info.dropped_messages);
    }
    if let Some(s) = &info.served {
        v["target"] = json!(s.target);
        if let Some(a) = &s.attribution {
            v["route"] = json!(a.route);
            if let Some(variant) = &a.variant {
                v["variant"] = json!(variant);
            }
            v["tried"] = json!(s.tried);
        }
    }
}

/// Runs a validated request and returns either one object or a stream of them.
pub enum Reply {
    /// The object, and the service layer's report when there was a generation.
    One(Value, Option<ResponseInfo>),
    Stream(Generation, Option<ToolRequest>),
}

pub async fn run(
    service: &crate::service::Service,
    req: ValidRequest,
    kind: Kind,
    caller: crate::service::Caller,
    started: Instant,
) -> Result<Reply, ApiError> {
    let model = req.model.clone();
    let stream = req.stream;
    let tools = req.tools.clone();
    match service.start(req, caller, started).await? {
        Outcome::Loaded { unloaded, load_duration } => {
            Ok(Reply::One(load_response(kind, &model, unloaded, load_duration, started), None))
        }
        Outcome::Generating(g) if stream => Ok(Reply::Stream(g, tools)),
        Outcome::Generating(g) => {
            let info = g.info.clone();
            Ok(Reply::One(collect(g, kind, &model, tools.as_ref()).await?, Some(info)))
        }
    }
}
