//! The tokenizer routes: `/api/tokenize`, `/api/detokenize` and `/api/apply-template` (with a
//! `model`, answering with it), and llama-server's `/tokenize`, `/detokenize` and
//! `/apply-template` shapes (the model may be left out while exactly one is loaded).
//!
//! `/api/tokenize` adds the model's BOS as a prompt gets it; `/tokenize` does not unless asked
//! (`add_special`), as in llama-server. Special tokens are parsed unless `parse_special` is
//! false. With `with_pieces`, each token comes with its text (or its bytes, when they are not
//! UTF-8 on their own).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::JsonBody;
use super::ollama::ChatRequest;
use super::AppState;
use crate::backend::{PromptSpec, TextAnswer, TextWork};
use crate::resources::KeepAlive;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tokenize", post(|s, b| tokenize(s, b, true)))
        .route("/tokenize", post(|s, b| tokenize(s, b, false)))
        .route("/api/detokenize", post(|s, b| detokenize(s, b, true)))
        .route("/detokenize", post(|s, b| detokenize(s, b, false)))
        .route("/api/apply-template", post(|s, b| apply_template(s, b, true)))
        .route("/apply-template", post(|s, b| apply_template(s, b, false)))
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    /// llama-server's name for the text; `text` and `prompt` are accepted too.
    content: Option<String>,
    text: Option<String>,
    prompt: Option<String>,
    add_special: Option<bool>,
    parse_special: Option<bool>,
    #[serde(default)]
    with_pieces: bool,
    keep_alive: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Option<Vec<i64>>,
    keep_alive: Option<Value>,
}

fn keep_alive(v: Option<&Value>) -> Result<Option<KeepAlive>, ApiError> {
    v.filter(|v| !v.is_null()).map(KeepAlive::from_json).transpose().map_err(ApiError::bad_request)
}

async fn tokenize(State(app): State<AppState>, JsonBody(req): JsonBody<TokenizeRequest>, ollama: bool) -> Result<Json<Value>, ApiError> {
    let text = req.content.or(req.text).or(req.prompt).ok_or_else(|| ApiError::bad_request("content is required: the text to tokenize"))?;
    let work = TextWork::Tokenize { text, add_special: req.add_special.unwrap_or(ollama), parse_special: req.parse_special.unwrap_or(true) };
    let answer = app.service.model_text(req.model.as_deref(), keep_alive(req.keep_alive.as_ref())?, work).await?;
    let TextAnswer::Tokens(tokens) = answer else { return Err(ApiError::internal("the tokenizer gave no tokens")) };
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|(id, bytes)| match (req.with_pieces, String::from_utf8(bytes)) {
            (false, _) => json!(id),
            (true, Ok(piece)) => json!({ "id": id, "piece": piece }),
            (true, Err(e)) => json!({ "id": id, "piece": e.into_bytes() }),
        })
        .collect();
    Ok(Json(with_model(json!({ "tokens": tokens }), req.model, ollama)))
}

async fn detokenize(State(app): State<AppState>, JsonBody(req): JsonBody<DetokenizeRequest>, ollama: bool) -> Result<Json<Value>, ApiError> {
    let tokens = req
        .tokens
        .ok_or_else(|| ApiError::bad_request("tokens is required: a list of token ids"))?
        .into_iter()
        .map(|t| i32::try_from(t).map_err(|_| ApiError::bad_request(format!("token id {t} is out of range"))))
        .collect::<Result<Vec<_>, _>>()?;
    let answer = app.service.model_text(req.model.as_deref(), keep_alive(req.keep_alive.as_ref())?, TextWork::Detokenize(tokens)).await?;
    let TextAnswer::Text(text) = answer else { return Err(ApiError::internal("the tokenizer gave no text")) };
    let key = if ollama { "text" } else { "content" };
    Ok(Json(with_model(json!({ key: text }), req.model, ollama)))
}

/// Renders a chat (Ollama's chat request: `messages`, `tools`) as the model's template makes
/// it, with the prompt's length in tokens.
async fn apply_template(State(app): State<AppState>, JsonBody(mut req): JsonBody<ChatRequest>, ollama: bool) -> Result<Json<Value>, ApiError> {
    if req.messages.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::bad_request("messages is required"));
    }
    let model = req.model.take();
    let keep_alive = keep_alive(req.keep_alive.as_ref())?;
    // Validated as a chat (roles, tools), under a placeholder name when none is given.
    req.model = Some(model.clone().unwrap_or_else(|| "-".into()));
    let valid = req.validate()?;
    let prompt = match valid.prompt {
        p @ PromptSpec::Chat { .. } => p,
        PromptSpec::Generate { .. } => return Err(ApiError::internal("a chat became a generate prompt")),
    };
    let job = crate::service::tokens::render_job(prompt, app.manager.defaults().num_ctx);
    let answer = app.service.model_text(model.as_deref(), keep_alive, TextWork::Render(Box::new(job))).await?;
    let TextAnswer::Prompt { text, tokens } = answer else { return Err(ApiError::internal("the template gave no prompt")) };
    Ok(Json(with_model(json!({ "prompt": text, "prompt_tokens": tokens }), model, ollama)))
}

/// Ollama-style answers name the model they came from.
fn with_model(mut v: Value, model: Option<String>, ollama: bool) -> Value {
    if ollama {
        if let Some(m) = model {
            v["model"] = json!(m);
        }
    }
    v
}
