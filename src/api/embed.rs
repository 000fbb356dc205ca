//! Ollama's embedding endpoints: `POST /api/embed` (a string or a list, normalized vectors) and
//! the legacy `POST /api/embeddings` (one prompt, the pooled vector as it is). Wire structs,
//! their validation into `ValidEmbedRequest`, and the response objects; the work is
//! `service::embed`.

use std::time::{Duration, Instant};

use axum::extract::State;

use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Key;
use super::error::ApiError;
use super::extract::JsonBody;
use super::ollama::common;
use super::AppState;
use crate::service::{Caller, EmbedInput, ValidEmbedRequest};

/// Most inputs one request may carry (OpenAI's bound; Ollama has none): each becomes a vector
/// held until the whole answer is ready.
const MAX_INPUTS: usize = 2048;

/// `/api/embed` as clients send it.
#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    pub model: Option<String>,
    /// A string or a list of strings.
    pub input: Option<Value>,
    pub truncate: Option<bool>,
    pub dimensions: Option<i64>,
    pub keep_alive: Option<Value>,
    pub options: Option<Value>,
}

/// The legacy `/api/embeddings` request.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub keep_alive: Option<Value>,
    pub options: Option<Value>,
}

impl EmbedRequest {
    pub fn validate(self) -> Result<ValidEmbedRequest, ApiError> {
        let c = common(self.model, self.options.as_ref(), self.keep_alive.as_ref())?;
        let bad_input = || ApiError::bad_request("invalid input type: input must be a string or a list of strings");
        // As in Ollama, an empty string (or no input) embeds nothing and only loads the model.
        let inputs = match self.input {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if s.is_empty() => Vec::new(),
            Some(Value::String(s)) => vec![EmbedInput::Text(s)],
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(EmbedInput::Text(s)),
                    _ => Err(bad_input()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad_input()),
        };
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::bad_request(format!("at most {MAX_INPUTS} inputs per request, got {}", inputs.len())));
        }
        let dimensions = match self.dimensions {
            None => None,
            Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
            Some(d) => return Err(ApiError::bad_request(format!("dimensions must be a positive integer, got {d}"))),
        };
        Ok(ValidEmbedRequest {
            model: c.model,
            inputs,
            truncate: self.truncate.unwrap_or(true),
            dimensions,
            normalize: true,
            options: c.options,
            keep_alive: c.keep_alive,
            account: None,
        })
    }
}

impl EmbeddingsRequest {
    pub fn validate(self) -> Result<ValidEmbedRequest, ApiError> {
        let c = common(self.model, self.options.as_ref(), self.keep_alive.as_ref())?;
        let inputs = self.prompt.filter(|p| !p.is_empty()).map(EmbedInput::Text).into_iter().collect();
        Ok(ValidEmbedRequest {
            model: c.model,
            inputs,
            truncate: true,
            dimensions: None,
            normalize: false,
            options: c.options,
            keep_alive: c.keep_alive,
            account: None,
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `POST /api/embed`.
pub async fn embed(State(app): State<AppState>, Key(account, _): Key, JsonBody(req): JsonBody<EmbedRequest>) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let mut req = req.validate()?;
    req.account = account;
    let model = req.model.clone();
    let r = app.service.embed(req, Caller::Network).await?;
    Ok(Json(json!({
        "model": model,
        "embeddings": r.embeddings,
        "total_duration": nanos(started.elapsed()),
        "load_duration": nanos(r.load_duration),
        "prompt_eval_count": r.prompt_tokens,
    })))
}

/// `POST /api/embeddings` (legacy): `{"embedding": [...]}`, empty for an empty prompt.
pub async fn embeddings(State(app): State<AppState>, Key(account, _): Key, JsonBody(req): JsonBody<EmbeddingsRequest>) -> Result<Json<Value>, ApiError> {
    let mut req = req.validate()?;
    req.account = account;
    let r = app.service.embed(req, Caller::Network).await?;
    let embedding = r.embeddings.into_iter().next().unwrap_or_default();
    Ok(Json(json!({ "embedding": embedding })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed_req(v: Value) -> Result<ValidEmbedRequest, ApiError> {
        serde_json::from_value::<EmbedRequest>(v).expect("parses").validate()
    }

    #[test]
    fn input_may_be_a_string_or_a_list_of_strings() {
        let one = embed_req(json!({"model": "m", "input": "hi"})).expect("valid");
        assert_eq!(one.inputs, vec![EmbedInput::Text("hi".into())]);
        assert!(one.truncate && one.normalize && one.dimensions.is_none());
        let many = embed_req(json!({"model": "m", "input": ["a", "b"], "truncate": false, "dimensions": 8})).expect("valid");
        assert_eq!(many.inputs.len(), 2);
        assert!(!many.truncate);
        assert_eq!(many.dimensions, Some(8));
    }

    #[test]
    fn empty_input_only_loads() {
        for input in [json!(""), json!([]), Value::Null] {
            assert!(embed_req(json!({"model": "m", "input": input})).expect("valid").inputs.is_empty());
        }
        assert!(embed_req(json!({"model": "m"})).expect("valid").inputs.is_empty());
    }

    #[test]
    fn bad_fields_are_400s_naming_the_problem() {
        for (body, needle) in [
            (json!({"input": "x"}), "model is required"),
            (json!({"model": "m", "input": 5}), "invalid input type"),
            (json!({"model": "m", "input": ["a", 1]}), "invalid input type"),
            (json!({"model": "m", "input": "a", "dimensions": 0}), "dimensions"),
            (json!({"model": "m", "input": "a", "options": {"num_ctx": -1}}), "num_ctx"),
            (json!({"model": "m", "input": vec!["a"; MAX_INPUTS + 1]}), "at most"),
        ] {
            let e = embed_req(body.clone()).expect_err("must fail");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn legacy_prompt_is_one_raw_input() {
        let r = serde_json::from_value::<EmbeddingsRequest>(json!({"model": "m", "prompt": "hello"}))
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(r.inputs, vec![EmbedInput::Text("hello".into())]);
        assert!(!r.normalize);
        let empty = serde_json::from_value::<EmbeddingsRequest>(json!({"model": "m", "prompt": ""}))
            .expect("parses")
            .validate()
            .expect("valid");
        assert!(empty.inputs.is_empty());
    }
}
