//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`, over the
//! same request path as Ollama's and OpenAI's APIs, so agents and SDKs built for Claude run on
//! local models (and on routes and providers).
//!
//! A request's content blocks become chat messages: `text` as text, an assistant's `tool_use`
//! as the call's JSON (what hearth's engine writes for a call), a user's `tool_result` as a
//! `tool` message. Tools are held to their `input_schema` by the grammar, as on the other APIs;
//! `tool_choice` is `auto` unless the request says otherwise (`any`, `tool`, `none`);
//! `output_config.format` (a JSON schema) holds a text answer to the schema. Unset
//! sampling fields keep Ollama's defaults, as the OpenAI routes do. Answers are `message`
//! objects, or Anthropic's named server-sent events (`stream`). Errors come in Anthropic's
//! shape `{"type": "error", "error": {"type", "message"}}`.
//!
//! Usage follows Anthropic's split: `input_tokens` are the prompt tokens evaluated now,
//! `cache_read_input_tokens` those whose KV was reused; their sum is the prompt's length, what
//! `count_tokens` says.

mod stream;

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Key;
use super::error::ApiError;
use super::extract::JsonBody;
use super::ollama::ServiceFields;
use super::AppState;
use crate::backend::{Completion, PromptSpec, TextAnswer, TextWork};
use crate::engine::DoneReason;
use crate::engine::grammar::{ToolChoice, ToolRequest};
use crate::service::{Caller, Outcome, ValidRequest};
use crate::spec::options::OptionPatch;
use crate::spec::template::TemplateMessage;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages)).route("/v1/messages/count_tokens", post(count_tokens))
}

/// Whether a path belongs to this API (its errors take Anthropic's shape).
pub fn owns(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// An error in Anthropic's shape.
pub struct AnthropicError(pub ApiError);

impl<E: Into<ApiError>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        AnthropicError(e.into())
    }
}

impl AnthropicError {
    pub fn body(&self) -> Value {
        let kind = match self.0.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => "overloaded_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "api_error",
        };
        json!({ "type": "error", "error": { "type": kind, "message": self.0.shown() } })
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = self.0.into_response();
        *resp.body_mut() = axum::body::Body::from(body.to_string());
        resp
    }
}

type AnthResult<T> = Result<T, AnthropicError>;

/// A JSON body parsed as `T`, or a rejection in Anthropic's error shape.
pub struct AnthropicJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for AnthropicJson<T> {
    type Rejection = AnthropicError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AnthropicError> {
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        Ok(AnthropicJson(value))
    }
}

fn invalid(message: impl Into<String>) -> AnthropicError {
    AnthropicError(ApiError::bad_request(message))
}

#[derive(Debug, Deserialize)]
pub(super) struct MessagesRequest {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    system: Option<Value>,
    max_tokens: Option<i64>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stream: Option<bool>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    metadata: Option<Value>,
    /// Accepted and ignored: agents turn it on, and an answer without thinking blocks is
    /// still a good answer.
    #[allow(dead_code)]
    thinking: Option<Value>,
    /// `format`: structured output, `{"type": "json_schema", "schema": {...}}`.
    output_config: Option<Value>,
    #[serde(flatten)]
    service: ServiceFields,
}

/// Text of a `system` field or a `tool_result`'s content: a string, or text blocks.
fn text_of(v: &Value, at: &str) -> AnthResult<String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_string()),
                    Some(kind) => return Err(invalid(format!("{at}.{i}: blocks of type {kind:?} are not supported here (only text)"))),
                    None => return Err(invalid(format!("{at}.{i}: a block needs a type"))),
                }
            }
            Ok(parts.join("\n"))
        }
        _ => Err(invalid(format!("{at}: expected a string or a list of text blocks"))),
    }
}

/// The request's messages as chat messages.
fn chat_messages(list: &[Value]) -> AnthResult<Vec<TemplateMessage>> {
    let msg = |role: &str, content: String| TemplateMessage { role: role.into(), content };
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            Some(other) => return Err(invalid(format!("messages.{i}.role: {other:?} is not a role here: use user or assistant (the system prompt goes in `system`)"))),
            None => return Err(invalid(format!("messages.{i}.role: Field required"))),
        };
        let content = m.get("content").ok_or_else(|| invalid(format!("messages.{i}.content: Field required")))?;
        let blocks = match content {
            Value::String(s) => {
                out.push(msg(role, s.clone()));
                continue;
            }
            Value::Array(b) => b,
            _ => return Err(invalid(format!("messages.{i}.content: expected a string or a list of content blocks"))),
        };
        let (mut text, mut calls, mut results) = (Vec::new(), Vec::new(), Vec::new());
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match (b.get("type").and_then(Value::as_str), role) {
                (Some("text"), _) => text.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_string()),
                (Some("tool_use"), "assistant") => {
                    let name = b.get("name").and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}.name: Field required")))?;
                    calls.push(crate::engine::grammar::call_text(name, b.get("input").unwrap_or(&json!({}))));
                }
                (Some("tool_result"), "user") => {
                    let mut t = text_of(b.get("content").unwrap_or(&Value::Null), &format!("{at}.content"))?;
                    if b.get("is_error") == Some(&Value::Bool(true)) {
                        t = format!("Error: {t}");
                    }
                    results.push(t);
                }
                (Some("thinking" | "redacted_thinking"), "assistant") => {}
                (Some(kind @ ("image" | "document")), _) => return Err(invalid(format!("{at}: this model does not support {kind} blocks"))),
                (Some(kind), _) => return Err(invalid(format!("{at}: a {role} message can't hold a {kind:?} block"))),
                (None, _) => return Err(invalid(format!("{at}.type: Field required"))),
            }
        }
        out.extend(results.into_iter().map(|r| msg("tool", r)));
        let text = text.join("\n");
        if !calls.is_empty() {
            // A call is shown to the model as the JSON it wrote (any words before it dropped:
            // hearth's answer is text or a call).
            out.push(msg(role, calls.join("\n")));
        } else if !text.is_empty() || blocks.is_empty() {
            out.push(msg(role, text));
        }
    }
    Ok(out)
}

/// Anthropic's tools as hearth's, held to their `input_schema`.
fn tool_request(tools: Option<Vec<Value>>, choice: Option<&Value>) -> AnthResult<Option<ToolRequest>> {
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(c) => match (c.get("type").and_then(Value::as_str), c.get("name").and_then(Value::as_str)) {
            (Some("auto"), _) => ToolChoice::Auto,
            (Some("any"), _) => ToolChoice::Required,
            (Some("none"), _) => ToolChoice::None,
            (Some("tool"), Some(name)) => ToolChoice::Named(name.to_string()),
            _ => return Err(invalid("tool_choice: expected {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": ...}")),
        },
    };
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return match choice {
            ToolChoice::Required | ToolChoice::Named(_) => Err(invalid("tool_choice: needs tools")),
            _ => Ok(None),
        };
    };
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(kind) => return Err(invalid(format!("tools.{i}: server tools ({kind:?}) are not available here: give a custom tool with an input_schema"))),
        }
        functions.push(json!({ "type": "function", "function": { "name": t.get("name"), "description": t.get("description"), "parameters": t.get("input_schema") } }));
    }
    Ok(Some(ToolRequest { tools: super::tools::parse_tools(&functions)?, choice }))
}

impl MessagesRequest {
    fn validate(self) -> AnthResult<ValidRequest> {
        let service = self.service.clone().validate(None)?;
        let model = self.model.clone().filter(|m| !m.is_empty()).or_else(|| service.persona.clone()).ok_or_else(|| invalid("model: Field required"))?;
        let max_tokens = self.max_tokens.ok_or_else(|| invalid("max_tokens: Field required"))?;
        let most = crate::spec::options::MAX_NUM_CTX;
        if !(1..=most).contains(&max_tokens) {
            return Err(invalid(format!("max_tokens: must be from 1 to {most}, not {max_tokens}")));
        }
        let mut o = Map::new();
        o.insert("num_predict".into(), json!(max_tokens));
        for (name, v, hi) in [("temperature", self.temperature, 1.0), ("top_p", self.top_p, 1.0)] {
            if let Some(v) = v {
                if !(0.0..=hi).contains(&v) {
                    return Err(invalid(format!("{name}: must be between 0 and {hi}, not {v}")));
                }
                o.insert(name.into(), json!(v));
            }
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                return Err(invalid(format!("top_k: must be 0 or more, not {k}")));
            }
            o.insert("top_k".into(), json!(k));
        }
        if let Some(stop) = self.stop_sequences.filter(|s| !s.is_empty()) {
            o.insert("stop".into(), json!(stop));
        }
        let options = OptionPatch::from_map(&o).map_err(|e| invalid(e.to_string()))?;
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            let s = text_of(system, "system")?;
            if !s.is_empty() {
                messages.push(TemplateMessage { role: "system".into(), content: s });
            }
        }
        let list = self.messages.ok_or_else(|| invalid("messages: Field required"))?;
        if list.is_empty() {
            return Err(invalid("messages: at least one message is required"));
        }
        messages.extend(chat_messages(&list)?);
        let tools = tool_request(self.tools, self.tool_choice.as_ref())?;
        let format = match self.output_config.as_ref().and_then(|c| c.get("format")).filter(|f| !f.is_null()) {
            None => None,
            Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => {
                Some(f.get("schema").cloned().ok_or_else(|| invalid("output_config.format.schema: Field required"))?)
            }
            Some(_) => return Err(invalid("output_config.format.type: must be json_schema")),
        };
        let grammar = match (&tools, &format) {
            (Some(_), Some(_)) => return Err(invalid("output_config.format and tools can't be combined here: a tool call is already JSON")),
            (Some(t), None) => t.grammar()?,
            (None, f) => super::tools::format_grammar(f.as_ref())?,
        };
        let mut service = service;
        service.sticky = self.metadata.as_ref().and_then(|m| m.get("user_id")).and_then(Value::as_str).filter(|u| !u.trim().is_empty()).map(str::to_string);
        Ok(ValidRequest {
            model,
            prompt: PromptSpec::Chat { messages, tools: tools.as_ref().map(ToolRequest::offered).unwrap_or_default() },
            tools,
            options,
            grammar,
            format: super::tools::output_format(format.as_ref()),
            logprobs: None,
            keep_alive: None,
            stream: self.stream.unwrap_or(false),
            service,
        })
    }
}

/// A message id: `msg_` and 24 hex digits (Anthropic's are longer; clients only pass them on).
fn message_id() -> String {
    super::openai::new_id("msg").replacen('-', "_", 1)
}

fn tool_use_id() -> String {
    super::openai::new_id("toolu").replacen('-', "_", 1)
}

fn stop_reason(c: &Completion, called: bool) -> (&'static str, Value) {
    match (&c.stop_sequence, c.reason) {
        _ if called => ("tool_use", Value::Null),
        (Some(s), _) => ("stop_sequence", json!(s)),
        (None, DoneReason::Length) => ("max_tokens", Value::Null),
        (None, DoneReason::Stop) => ("end_turn", Value::Null),
    }
}

fn usage(c: &Completion) -> Value {
    json!({
        "input_tokens": c.prompt_tokens.saturating_sub(c.cached_tokens),
        "output_tokens": c.eval_tokens,
        "cache_read_input_tokens": c.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

async fn messages(State(app): State<AppState>, Key(account, sticky): Key, AnthropicJson(req): AnthropicJson<MessagesRequest>) -> Response {
    let started = Instant::now();
    let model = req.model.clone().unwrap_or_default();
    let result = async {
        let mut req = req.validate()?;
        req.service.account = account;
        req.service.sticky = sticky.or(req.service.sticky);
        let (stream, tools) = (req.stream, req.tools.clone());
        let outcome = app.service.start(req, Caller::Network, started).await?;
        let Outcome::Generating(g) = outcome else { return Err(invalid("messages: nothing to answer")) };
        let info = g.info.clone();
        if stream {
            return Ok((stream::respond(&app, g, model.clone(), tools), info));
        }
        let answer = crate::service::reply::collect(g.events, tools).await.map_err(ApiError::from)?;
        let mut content = Vec::new();
        if !answer.text.is_empty() {
            content.push(json!({ "type": "text", "text": answer.text }));
        }
        if let Some((name, input)) = &answer.tool_call {
            content.push(json!({ "type": "tool_use", "id": tool_use_id(), "name": name, "input": input }));
        }
        let (reason, sequence) = stop_reason(&answer.completion, answer.tool_call.is_some());
        let mut body = json!({
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(&answer.completion),
        });
        super::ollama::annotate(&mut body, &info);
        Ok::<_, AnthropicError>((Json(body).into_response(), info))
    };
    match result.await {
        Ok((mut resp, info)) => {
            super::mark(&mut resp, &model, Some(&info));
            resp
        }
        Err(e) => {
            let mut resp = e.into_response();
            super::mark(&mut resp, &model, None);
            resp
        }
    }
}

/// `count_tokens`: the prompt's length as the model would get it (template and tools included).
async fn count_tokens(State(app): State<AppState>, AnthropicJson(mut req): AnthropicJson<MessagesRequest>) -> AnthResult<Json<Value>> {
    // Counting needs no budget for an answer.
    req.max_tokens = Some(req.max_tokens.unwrap_or(1));
    let valid = req.validate()?;
    let job = crate::service::tokens::render_job(valid.prompt, app.manager.defaults().num_ctx);
    match app.service.model_text(Some(&valid.model), None, TextWork::Render(Box::new(job))).await? {
        TextAnswer::Prompt { tokens, .. } => Ok(Json(json!({ "input_tokens": tokens }))),
        _ => Err(AnthropicError(ApiError::internal("the template gave no prompt"))),
    }
}
