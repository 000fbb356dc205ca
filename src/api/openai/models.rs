//! `GET /v1/models` and `/v1/models/{id}`: the store's models as OpenAI model objects.

use super::*;

pub(super) fn model_object(e: &crate::store::ModelEntry) -> Value {
    let created = e.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "id": e.name, "object": "model", "created": created, "owned_by": e.origin.as_str() })
}

pub(super) async fn list_models(State(app): State<AppState>) -> Response {
    let store = app.manager.store().clone();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(Ok(list)) => Json(json!({ "object": "list", "data": list.iter().map(model_object).collect::<Vec<_>>() })).into_response(),
        Ok(Err(e)) => OpenAiError::from(ApiError::from(e)).into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("listing failed: {e}"))).into_response(),
    }
}

pub(super) async fn get_model(State(app): State<AppState>, PathParam(id): PathParam<String>) -> Response {
    let store = app.manager.store().clone();
    let result = tokio::task::spawn_blocking(move || store.resolve(&id)).await;
    match result {
        Ok(Ok(e)) => Json(model_object(&e)).into_response(),
        Ok(Err(e)) => OpenAiError { error: e.into(), param: Some("model") }.into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("lookup failed: {e}"))).into_response(),
    }
}
