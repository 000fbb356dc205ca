//! The service layer's own routes: `/health`, `/metrics` (Prometheus) and `/api/metrics`
//! (JSON), the response cache (`/api/cache/clear`), prompt templates (`/api/templates`,
//! `/api/templates/render`), personas (`/api/personas`), conversations
//! (`/api/conversations[/{id}]`), `/api/config/reload` and each API key's usage (`/api/usage`).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Key;
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::AppState;
use crate::conversations::ConversationStore;
use crate::metrics::Snapshot;
use crate::service::accounts::Scope;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health).head(health))
        .route("/metrics", get(metrics_text))
        .route("/api/metrics", get(metrics_json))
        .route("/api/cache/clear", post(clear_cache))
        .route("/api/templates", get(list_templates))
        .route("/api/templates/render", post(render_template))
        .route("/api/personas", get(list_personas))
        .route("/api/conversations", get(list_conversations))
        .route("/api/conversations/{id}", get(get_conversation).delete(delete_conversation))
        .route("/api/config/reload", post(reload))
        .route("/api/usage", get(usage))
}

/// `GET /api/usage`: what each key used since the server started, its limits and what is left
/// of them. A key sees its own line; an `admin` key sees every key.
async fn usage(State(app): State<AppState>, Key(caller, _): Key) -> Json<Value> {
    let now = std::time::Instant::now();
    let accounts = match &caller {
        Some(a) if !a.allows(Scope::Admin) => vec![std::sync::Arc::clone(a)],
        _ => app.keys.accounts(),
    };
    // With PostgreSQL, usage as every server sharing it counted it; else this server's.
    let counted = match &app.service.conversations {
        Some(store) => store.key_usage().await.unwrap_or_else(|e| {
            tracing::warn!("key usage from the database: {e}");
            None
        }),
        None => None,
    };
    let keys: Vec<Value> = accounts
        .iter()
        .map(|a| {
            let usage = match &counted {
                Some(all) => crate::service::accounts::Account::usage_from(all.get(&a.name).copied().unwrap_or_default()),
                None => a.usage(),
            };
            json!({
                "name": a.name,
                "scopes": a.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "usage": usage,
                "limits": a.remaining(now),
            })
        })
        .collect();
    Json(json!({ "keys": keys }))
}

/// What the metrics read at scrape time: the models loaded now, the budget and the cache.
fn snapshot(app: &AppState) -> Snapshot {
    let parallel = app.manager.defaults().parallel as usize;
    let loaded = app
        .manager
        .loaded()
        .into_iter()
        .map(|m| (m.entry.name, m.size, m.in_flight.saturating_sub(parallel)))
        .collect();
    let stats = app.service.cache.stats();
    Snapshot {
        loaded,
        ram_budget: app.manager.limits().ram_budget,
        ram_used: app.manager.used(),
        cache_entries: stats.entries,
        cache_bytes: stats.bytes,
    }
}

async fn health(State(app): State<AppState>) -> Response {
    let shutting_down = app.lifecycle.shutting_down.load(Ordering::Acquire);
    let cache = app.service.cache.status().await;
    let models: Vec<Value> = app
        .manager
        .loaded()
        .into_iter()
        .map(|m| json!({ "name": m.entry.name, "size": m.size, "context_length": m.context_length, "requests": m.in_flight }))
        .collect();
    let body = json!({
        "status": if shutting_down { "shutting_down" } else { "ok" },
        "version": crate::VERSION,
        "cpu": crate::engine::cpu::report(),
        // llama.cpp's threads per model: one per physical core, within the CPU quota.
        "threads": app.manager.defaults().threads,
        "uptime_seconds": app.lifecycle.started.elapsed().as_secs_f64(),
        "models": models,
        "cache": { "backend": cache.backend, "reachable": cache.reachable, "detail": cache.detail },
        // Whether conversations are kept; never where (no path of the machine in an answer).
        "conversations": app.service.conversations.is_some(),
        "database": app.service.conversations.as_ref().map(|c| c.kind()),
        "ram": { "budget": app.manager.limits().ram_budget, "used": app.manager.used() },
    });
    let status = if shutting_down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    let text = app.service.metrics.render_prometheus(&snapshot(&app));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn metrics_json(State(app): State<AppState>) -> Response {
    Json(app.service.metrics.render_json(&snapshot(&app))).into_response()
}

/// Empties the response cache (the shared one, with Redis).
pub async fn clear_cache(State(app): State<AppState>) -> Response {
    match app.service.cache.clear().await {
        Ok(n) => Json(json!({ "cleared": n, "backend": app.service.cache.backend() })).into_response(),
        Err(e) => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string(), retry_after: Some(1) }.into_response(),
    }
}

async fn list_templates(State(app): State<AppState>) -> Json<Value> {
    let catalog = app.service.catalog();
    let templates: Vec<Value> = catalog
        .templates
        .values()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "variables": t.variables(None),
                "families": t.families.keys().collect::<Vec<_>>(),
                "template": t.text,
            })
        })
        .collect();
    Json(json!({ "templates": templates }))
}

#[derive(Deserialize)]
struct RenderRequest {
    template: Option<String>,
    #[serde(default)]
    variables: serde_json::Map<String, Value>,
    /// Render the variant for this model's architecture.
    model: Option<String>,
    /// Or name the architecture (family) directly.
    family: Option<String>,
}

/// Previews a prompt template: the text a request with these variables would send.
async fn render_template(State(app): State<AppState>, JsonBody(req): JsonBody<RenderRequest>) -> Response {
    let Some(name) = req.template.filter(|t| !t.is_empty()) else {
        return ApiError::bad_request("template is required: the name of a prompt template (see GET /api/templates)").into_response();
    };
    let catalog = app.service.catalog();
    let Some(template) = catalog.templates.get(&name) else {
        return ApiError::not_found(format!("prompt template '{name}' not found")).into_response();
    };
    let vars = match super::ollama::template_variables(req.variables) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let family = match (req.family, req.model) {
        (Some(f), _) => Some(f),
        (None, Some(m)) => match app.manager.store().resolve(&m) {
            Ok(entry) => crate::service::catalog::architecture(app.manager.store(), &entry.path),
            Err(e) => return ApiError::from(e).into_response(),
        },
        (None, None) => None,
    };
    match template.render(family.as_deref(), &vars) {
        Ok(prompt) => Json(json!({ "template": name, "family": family, "prompt": prompt, "variables": template.variables(family.as_deref()) })).into_response(),
        Err(e) => ApiError::bad_request(e.to_string()).into_response(),
    }
}

async fn list_personas(State(app): State<AppState>) -> Json<Value> {
    let catalog = app.service.catalog();
    let describe = |p: &crate::service::catalog::Persona, source: &str| {
        json!({
            "name": p.name, "model": p.model, "system": p.system, "options": crate::service::catalog::options_map(&p.options),
            "examples": p.examples.len(), "description": p.description, "source": source,
        })
    };
    let mut list: Vec<Value> = catalog.personas.values().map(|p| describe(p, "config")).collect();
    list.extend(catalog.profiles.values().filter(|p| !catalog.personas.contains_key(&p.name)).map(|p| describe(p, "profile")));
    Json(json!({ "personas": list }))
}

fn conversations(app: &AppState) -> Result<&ConversationStore, ApiError> {
    app.service
        .conversations
        .as_ref()
        .ok_or_else(|| ApiError::not_found("conversations are not enabled on this server"))
}

async fn list_conversations(State(app): State<AppState>) -> Response {
    let store = match conversations(&app) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match store.list(1000).await {
        Ok(list) => Json(json!({ "conversations": list })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn get_conversation(State(app): State<AppState>, PathParam(id): PathParam<String>) -> Response {
    let store = match conversations(&app) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::conversations::validate_id(&id) {
        return ApiError::from(e).into_response();
    }
    match store.get(&id).await {
        Ok(Some(c)) => Json(c).into_response(),
        Ok(None) => ApiError::not_found(format!("conversation '{id}' not found")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn delete_conversation(State(app): State<AppState>, PathParam(id): PathParam<String>) -> Response {
    let store = match conversations(&app) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::conversations::validate_id(&id) {
        return ApiError::from(e).into_response();
    }
    // Wait for a turn in progress, so its answer isn't stored after the delete.
    let _turn = match store.turn(&id).await {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match store.delete(&id).await {
        Ok(true) => Json(json!({ "deleted": id })).into_response(),
        Ok(false) => ApiError::not_found(format!("conversation '{id}' not found")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn reload(State(app): State<AppState>) -> Response {
    let lifecycle = app.lifecycle.clone();
    let result = tokio::task::spawn_blocking(move || match &lifecycle.reload {
        Some(reload) => reload(),
        None => Err("this server was started without a config file; nothing to reload".to_string()),
    })
    .await;
    match result {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => ApiError::bad_request(e).into_response(),
        Err(e) => ApiError::internal(format!("reload failed: {e}")).into_response(),
    }
}
