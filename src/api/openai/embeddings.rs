//! `POST /v1/embeddings`: strings or token ids, `dimensions`, floats or base64.

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    pub(super) model: Option<String>,
    pub(super) input: Option<Value>,
    pub(super) encoding_format: Option<String>,
    pub(super) dimensions: Option<i64>,
    #[allow(dead_code)] // accepted, as OpenAI's API does.
    pub(super) user: Option<String>,
    pub(super) num_ctx: Option<i64>,
    pub(super) keep_alive: Option<Value>,
}

/// Most inputs one embeddings request may carry.
pub(super) const MAX_EMBED_INPUTS: usize = 2048;

pub(super) async fn embeddings(State(app): State<AppState>, Key(account, _): Key, OpenAiJson(req): OpenAiJson<EmbeddingsRequest>) -> OaiResult<Response> {
    let model = req.model.filter(|m| !m.is_empty()).ok_or_else(|| invalid("model", "model is required"))?;
    let bad_input = || invalid("input", "input must be a string, a list of strings, a list of token ids, or a list of such lists");
    let token_ids = |items: &[Value]| -> Option<Vec<i32>> { items.iter().map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok())).collect() };
    let inputs: Vec<service::EmbedInput> = match req.input {
        Some(Value::String(s)) => vec![service::EmbedInput::Text(s)],
        Some(Value::Array(items)) if items.is_empty() => return Err(invalid("input", "input must not be empty")),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|v| v.as_str().map(|s| service::EmbedInput::Text(s.to_string()))).collect()
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => vec![service::EmbedInput::Tokens(token_ids(&items).ok_or_else(bad_input)?)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_array().and_then(|a| token_ids(a)).map(service::EmbedInput::Tokens).ok_or_else(bad_input))
            .collect::<OaiResult<_>>()?,
        _ => return Err(bad_input()),
    };
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(invalid("input", format!("at most {MAX_EMBED_INPUTS} inputs per request")));
    }
    if inputs.iter().any(|i| matches!(i, service::EmbedInput::Text(t) if t.is_empty())) {
        return Err(invalid("input", "inputs must not be empty strings"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(invalid("encoding_format", format!("encoding_format must be float or base64, not {other:?}"))),
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(d) => return Err(invalid("dimensions", format!("dimensions must be a positive integer, not {d}"))),
    };
    let mut o = Map::new();
    if let Some(c) = req.num_ctx {
        o.insert("num_ctx".into(), json!(c));
    }
    let options = OptionPatch::from_map(&o).map_err(|e| invalid("num_ctx", e.to_string()))?;
    let keep_alive = keep_alive(req.keep_alive.as_ref())?;
    let valid = service::ValidEmbedRequest {
        model: model.clone(),
        inputs,
        truncate: true,
        dimensions,
        normalize: true,
        options,
        keep_alive,
        account,
    };
    let result = app.service.embed(valid, Caller::Network)
        .await
        .map_err(|e| service_error(e, Some("input")))?;
    let data: Vec<Value> = result
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = result.prompt_tokens;
    Ok(Json(json!({ "object": "list", "data": data, "model": model, "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })).into_response())
}
