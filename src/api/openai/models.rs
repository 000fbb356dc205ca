//! `GET /v1/models` and `/v1/models/{id}`: the store's models as OpenAI model objects.

use super::*;

pub(super) fn model_object(e: &crate::store::ModelEntry) -> Value {
    let created = e.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "id": e.name, "object": "model", "created": created, "owned_by": e.origin.as_str() })
}

pub(super) async fn list_models(State(app): State<AppState>) -> Response {
    let store = app.manager.store().clone();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(Ok(list)) => {
            let mut data: Vec<Value> = list.iter().map(model_object).collect();
            let table = app.service.router.table();
            data.extend(table.listed().into_iter().map(|(id, origin)| json!({ "id": id, "object": "model", "created": 0, "owned_by": origin })));
            Json(json!({ "object": "list", "data": data })).into_response()
        }
        Ok(Err(e)) => OpenAiError::from(ApiError::from(e)).into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("listing failed: {e}"))).into_response(),
    }
}

pub(super) async fn get_model(State(app): State<AppState>, PathParam(id): PathParam<String>) -> Response {
    if let Some((_, origin)) = app.service.router.table().listed().into_iter().find(|(n, _)| *n == id) {
        return Json(json!({ "id": id, "object": "model", "created": 0, "owned_by": origin })).into_response();
    }
    let store = app.manager.store().clone();
    let result = tokio::task::spawn_blocking(move || store.resolve(&id)).await;
    match result {
        Ok(Ok(e)) => Json(model_object(&e)).into_response(),
        Ok(Err(e)) => OpenAiError { error: e.into(), param: Some("model") }.into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("lookup failed: {e}"))).into_response(),
    }
}
