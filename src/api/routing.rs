//! The routing layer's routes: `GET /api/routes` (each route's targets with weights, breaker
//! states and counts; the providers with their models and health) and `POST /api/feedback`
//! (an outcome attached to the variant and target that served a request, found by its
//! `X-Request-Id`, on whichever server sharing the database served it).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::JsonBody;
use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/routes", get(list)).route("/api/feedback", post(feedback))
}

async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(app.service.router.view_shared().await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    request_id: Option<String>,
    score: Option<f64>,
    label: Option<String>,
}

async fn feedback(State(app): State<AppState>, JsonBody(req): JsonBody<FeedbackRequest>) -> Result<Json<Value>, ApiError> {
    let id = req.request_id.filter(|i| !i.is_empty()).ok_or_else(|| ApiError::bad_request("request_id is required: the X-Request-Id of the answer"))?;
    if req.score.is_none() && req.label.is_none() {
        return Err(ApiError::bad_request("send a score (a number), a label (a string), or both"));
    }
    if req.score.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::bad_request("score must be a finite number"));
    }
    let label = req.label.map(|l| l.trim().to_string());
    if label.as_ref().is_some_and(|l| l.is_empty() || l.chars().count() > 64) {
        return Err(ApiError::bad_request("label must be 1 to 64 characters"));
    }
    let a = app
        .service
        .router
        .feedback(&id, req.score, label.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no answer from a route has request id {id:?} (feedback applies to answers served through a route, for 30 days)")))?;
    Ok(Json(json!({ "request_id": id, "route": a.route, "variant": a.variant, "target": a.target })))
}
