//! Request bodies as typed values. `JsonBody<T>` reads the body and parses it as `T`; a body
//! that is missing, too large or not the JSON `T` wants is rejected with hearth's own error in
//! the API's shape (Ollama's `{"error": ...}`; `openai::OpenAiJson` wraps it for OpenAI's),
//! never axum's plain text. Handlers take the value and return `Result<_, ApiError>`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError { status: e.status(), message: e.body_text(), retry_after: None })?;
        Ok(JsonBody(parse_body(&bytes)?))
    }
}

/// Parses a JSON body, with a message that says what is wrong.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing request body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A path parameter (`/api/conversations/{id}`); a malformed one (invalid UTF-8 after
/// percent-decoding) is a 400 in the API's shape, not axum's plain text.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for PathParam<T> {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParam(v)),
            Err(e) => {
                let message: String = format!("invalid path: {}", e.body_text()).chars().take(200).collect();
                Err(super::in_shape_for(parts.uri.path(), ApiError { status: e.status(), message, retry_after: None }))
            }
        }
    }
}
