//! The seeds' routes, thin adapters over the same request path: a chat bot's router
//! (`POST /generate`, `POST /validate-model`, `POST /cache/clear`) and a game backend's
//! (`POST /llm/generate`, `POST /llm/configure`).
//!
//! Their shapes are the seeds'; everything behind them (personas, cache, conversations,
//! metrics) is the service layer's. A seed's `character_name` or `scenario` is a persona or a
//! profile by name.

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
use super::AppState;
use crate::spec::options::OptionPatch;
use crate::service::catalog::{self, Persona};
use crate::service::{Caller, Outcome, PromptSpec, ServiceOptions, ValidRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/generate", post(generate))
        .route("/validate-model", post(validate_model))
        .route("/cache/clear", post(super::layer::clear_cache))
        .route("/llm/generate", post(llm_generate))
        .route("/llm/configure", post(llm_configure))
}

/// Generation settings as the seeds send them: OpenAI-style names mapped to Ollama's options.
fn options_from_settings(settings: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let mut o = Map::new();
    let Some(settings) = settings.filter(|v| !v.is_null()) else { return Ok(o) };
    let Some(obj) = settings.as_object() else {
        return Err(ApiError::bad_request("settings must be an object"));
    };
    for (k, v) in obj {
        let key = match k.as_str() {
            "max_tokens" | "max_new_tokens" | "max_length" => "num_predict",
            "stop_sequences" => "stop",
            other => other,
        };
        o.insert(key.to_string(), v.clone());
    }
    Ok(o)
}

/// A generate request for the model `model` (or the persona's, or the server's default).
struct SeedRequest {
    model: Option<String>,
    prompt: String,
    system: Option<String>,
    options: Map<String, Value>,
    persona: Option<String>,
    conversation_id: Option<String>,
    use_cache: Option<bool>,
    account: Option<std::sync::Arc<crate::service::accounts::Account>>,
    sticky: Option<String>,
}

/// What a seed route answers with.
struct SeedAnswer {
    text: String,
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    done_reason: String,
    seconds: f64,
    info: crate::service::ResponseInfo,
}

async fn run(app: &AppState, r: SeedRequest) -> Result<SeedAnswer, ApiError> {
    let started = Instant::now();
    if r.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt is required"));
    }
    let catalog = app.service.catalog();
    let model = match (&r.model, &r.persona) {
        (Some(m), _) if !m.is_empty() => m.clone(),
        (_, Some(p)) => catalog.persona(p).map(|p| p.model.clone()).ok_or_else(|| ApiError::not_found(format!("persona '{p}' not found")))?,
        _ => catalog.default_model.clone(),
    };
    let options = OptionPatch::from_map(&r.options).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let req = ValidRequest {
        model: model.clone(),
        prompt: PromptSpec::Generate { prompt: r.prompt, system: r.system, template: None, raw: false, context: Vec::new() },
        tools: None,
        options,
        grammar: None,
        format: None,
        logprobs: None,
        keep_alive: None,
        stream: false,
        service: ServiceOptions { persona: r.persona, use_cache: r.use_cache, conversation_id: r.conversation_id, template: None, prior: Vec::new(), account: r.account, sticky: r.sticky },
    };
    let Outcome::Generating(g) = app.service.start(req, Caller::Network, started).await? else {
        return Err(ApiError::bad_request("prompt is required"));
    };
    let info = g.info.clone();
    let answer = crate::service::reply::collect(g.events, None).await?;
    Ok(SeedAnswer {
        text: answer.text,
        model,
        prompt_tokens: u64::from(answer.completion.prompt_tokens),
        completion_tokens: u64::from(answer.completion.eval_tokens),
        done_reason: answer.completion.reason.as_str().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        info,
    })
}

fn reply(body: Value, answer_model: &str, info: Option<&crate::service::ResponseInfo>) -> Response {
    let mut resp = Json(body).into_response();
    super::mark(&mut resp, answer_model, info);
    resp
}

// ---------------------------------------------------------------- seed 004: a chat bot's router

#[derive(Deserialize)]
struct GenerateBody {
    prompt: Option<String>,
    character_name: Option<String>,
    settings: Option<Value>,
    conversation_id: Option<String>,
    use_cache: Option<bool>,
    model: Option<String>,
    system: Option<String>,
}

/// `POST /generate`: `{prompt, character_name, settings, conversation_id, use_cache}` ->
/// `{response, model, generation_time, cache_hit, metadata}`.
async fn generate(State(app): State<AppState>, Key(account, sticky): Key, JsonBody(b): JsonBody<GenerateBody>) -> Response {
    let options = match options_from_settings(b.settings.as_ref()) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let r = SeedRequest {
        model: b.model,
        prompt: b.prompt.unwrap_or_default(),
        system: b.system,
        options,
        persona: b.character_name.filter(|c| !c.is_empty()),
        conversation_id: b.conversation_id.filter(|c| !c.is_empty()),
        use_cache: b.use_cache,
        account,
        sticky,
    };
    match run(&app, r).await {
        Ok(a) => {
            let body = json!({
                "response": a.text,
                "model": a.model,
                "generation_time": a.seconds,
                "cache_hit": a.info.cache == crate::service::CacheResult::Hit,
                "metadata": {
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                    "total_tokens": a.prompt_tokens + a.completion_tokens,
                    "done_reason": a.done_reason,
                    "character_name": a.info.persona,
                    "conversation_id": a.info.conversation_id,
                    "dropped_messages": a.info.dropped_messages,
                    "target": a.info.served.as_ref().map(|s| s.target.clone()),
                },
            });
            reply(body, &a.model, Some(&a.info))
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ValidateBody {
    model: Option<String>,
}

/// `POST /validate-model`: whether a model is available, its size and RAM estimate, and a short
/// measured decode speed (`hearth bench`'s decode phase, 16 greedy tokens, never cached).
async fn validate_model(State(app): State<AppState>, JsonBody(b): JsonBody<ValidateBody>) -> Response {
    let Some(name) = b.model.filter(|m| !m.is_empty()) else {
        return ApiError::bad_request("model is required").into_response();
    };
    let store = app.manager.store().clone();
    let lookup = name.clone();
    let entry = tokio::task::spawn_blocking(move || {
        let entry = store.resolve(&lookup)?;
        let info = crate::store::gguf::read_gguf(&entry.path).map_err(|e| crate::store::StoreError::Gguf { what: entry.name.clone(), source: e })?;
        Ok::<_, crate::store::StoreError>((entry, info))
    })
    .await;
    let (entry, info) = match entry {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let status = ApiError::from(e);
            return Json(json!({ "model": name, "available": false, "valid": false, "error": status.message })).into_response();
        }
        Err(e) => return ApiError::internal(format!("validation failed: {e}")).into_response(),
    };
    let estimate = crate::engine::estimate::estimate(&info, app.manager.defaults()).total();
    let budget = app.manager.limits().ram_budget;
    let mut body = json!({
        "model": entry.name,
        "available": true,
        "size": entry.size,
        "architecture": info.architecture(),
        "parameter_size": info.parameter_size(),
        "quantization_level": info.quantization_level(),
        "ram_estimate": estimate,
        "ram_budget": budget,
        "fits_budget": estimate <= budget,
    });
    if estimate > budget {
        body["valid"] = json!(false);
        body["error"] = json!("the model does not fit the RAM budget");
        return Json(body).into_response();
    }
    // The score is `hearth bench`'s decode measurement, shortened.
    match app.service.decode_score(&entry.name, 16).await {
        Ok(score) if score.tokens_per_second.is_some() => {
            body["valid"] = json!(true);
            body["score"] = json!({
                "tokens_per_second": score.tokens_per_second,
                "tokens": score.generated_tokens,
                "ttft_ms": score.ttft.map(|d| d.as_secs_f64() * 1e3),
                "load_seconds": score.load.as_secs_f64(),
            });
            reply(body, &entry.name, None)
        }
        Ok(_) => {
            body["valid"] = json!(false);
            body["error"] = json!("decode score: the model generated too few tokens to time (it stopped at once)");
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            body["valid"] = json!(false);
            body["error"] = json!(e.to_string());
            (StatusCode::OK, Json(body)).into_response()
        }
    }
}

// ---------------------------------------------------------------- seed 001: a game backend

#[derive(Deserialize)]
struct LlmGenerateBody {
    prompt: Option<String>,
    scenario: Option<String>,
    model: Option<String>,
    system: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    settings: Option<Value>,
    /// A game session: the conversation it continues.
    session_id: Option<String>,
    conversation_id: Option<String>,
    use_cache: Option<bool>,
}

/// `POST /llm/generate`: `{prompt, scenario, max_tokens, temperature, session_id}` ->
/// `{text, model, scenario, usage, generation_time, cache_hit}`.
async fn llm_generate(State(app): State<AppState>, Key(account, sticky): Key, JsonBody(b): JsonBody<LlmGenerateBody>) -> Response {
    let mut options = match options_from_settings(b.settings.as_ref()) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    if let Some(m) = b.max_tokens {
        options.insert("num_predict".into(), json!(m));
    }
    if let Some(t) = b.temperature {
        options.insert("temperature".into(), json!(t));
    }
    let scenario = b.scenario.filter(|s| !s.is_empty());
    let r = SeedRequest {
        model: b.model,
        prompt: b.prompt.unwrap_or_default(),
        system: b.system,
        options,
        persona: scenario.clone(),
        conversation_id: b.conversation_id.or(b.session_id).filter(|c| !c.is_empty()),
        use_cache: b.use_cache,
        account,
        sticky,
    };
    match run(&app, r).await {
        Ok(a) => {
            let body = json!({
                "text": a.text,
                "model": a.model,
                "scenario": scenario,
                "usage": { "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens, "total_tokens": a.prompt_tokens + a.completion_tokens },
                "finish_reason": a.done_reason,
                "generation_time": a.seconds,
                "cache_hit": a.info.cache == crate::service::CacheResult::Hit,
                "session_id": a.info.conversation_id,
            });
            reply(body, &a.model, Some(&a.info))
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureBody {
    scenario: Option<String>,
    model: Option<String>,
    system: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<i64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stop: Option<Vec<String>>,
    options: Option<Map<String, Value>>,
    description: Option<String>,
}

/// `POST /llm/configure`: stores a scenario's generation settings as a profile (a persona kept
/// in the data directory), used by `scenario` on `/llm/generate` and as a persona everywhere.
async fn llm_configure(State(app): State<AppState>, JsonBody(b): JsonBody<ConfigureBody>) -> Response {
    let Some(scenario) = b.scenario.filter(|s| !s.is_empty()) else {
        return ApiError::bad_request("scenario is required: the profile's name").into_response();
    };
    let name = match crate::store::normalize_name(&scenario) {
        Ok(n) => n,
        Err(e) => return ApiError::bad_request(format!("scenario: {e}")).into_response(),
    };
    let catalog = app.service.catalog();
    let model = match b.model.filter(|m| !m.is_empty()) {
        Some(m) => match crate::store::normalize_name(&m) {
            Ok(m) => m,
            Err(e) => return ApiError::bad_request(format!("model: {e}")).into_response(),
        },
        None => catalog.default_model.clone(),
    };
    if let Err(e) = app.manager.store().resolve(&model) {
        return ApiError::from(e).into_response();
    }
    let mut options = b.options.unwrap_or_default();
    if let Some(t) = b.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(m) = b.max_tokens {
        options.insert("num_predict".into(), json!(m));
    }
    if let Some(p) = b.top_p {
        options.insert("top_p".into(), json!(p));
    }
    if let Some(k) = b.top_k {
        options.insert("top_k".into(), json!(k));
    }
    let options = match OptionPatch::from_map(&options) {
        Ok(o) => o,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let profile = Persona {
        name: name.clone(),
        model,
        system: b.system.filter(|s| !s.is_empty()),
        options: catalog::with_stop(options, b.stop.unwrap_or_default()),
        examples: Vec::new(),
        adapter: None,
        description: b.description,
    };
    match app.service.store_profile(profile.clone()).await {
        Ok(()) => Json(json!({
            "scenario": name,
            "stored": true,
            "profile": { "model": profile.model, "system": profile.system, "options": catalog::options_map(&profile.options) },
        }))
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
