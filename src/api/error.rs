//! The one table from errors to HTTP statuses, and the `{"error": "..."}` body Ollama sends.
//!
//! `ApiError::from` is an exhaustive match over every subsystem's error, so a new error variant
//! cannot slip out as a 500 without someone deciding it should.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::backend::EngineError;
use crate::resources::ResourceError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// The longest error message answered.
pub const MAX_MESSAGE_CHARS: usize = 600;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (overload answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.shown() })
    }

    /// The message as answered: at most [`MAX_MESSAGE_CHARS`], so no input a client sent is
    /// echoed back whole, however long (the parts that quote input cut it shorter still).
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        match self.message.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => format!("{}...", &self.message[..cut]).into(),
            None => self.message.as_str().into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) | StoreError::BlobNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidName { .. }
            | StoreError::TooLarge { .. }
            | StoreError::InvalidDigest(_)
            | StoreError::DigestMismatch { .. }
            | StoreError::Gguf { .. }
            | StoreError::Modelfile(_)
            | StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::ReadOnly(_) => StatusCode::FORBIDDEN,
            StoreError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            // The model server we pulled from failed us.
            StoreError::Download(_) => StatusCode::BAD_GATEWAY,
            StoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The machine's directories stay in the log, out of answers.
        let message = match &e {
            StoreError::NoSpace { needed, available, .. } => {
                tracing::warn!("{e}");
                format!("not enough disk space in the models directory: {needed} bytes needed, {available} available")
            }
            StoreError::Io { source, .. } => {
                tracing::error!("{e}");
                format!("the model store could not read or write a file: {source}")
            }
            _ => e.to_string(),
        };
        ApiError { status, message, retry_after: None }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::PromptTooLong { .. }
            | EngineError::InputTooLong { .. }
            | EngineError::EmptyInput(_)
            | EngineError::Dimensions { .. }
            | EngineError::InvalidToken(_)
            | EngineError::Template(_) => StatusCode::BAD_REQUEST,
            // The file passed hearth's validation but llama.cpp refused it (a missing tensor, an
            // unknown architecture, an adapter for another model): the model is at fault.
            EngineError::Load { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            EngineError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Unsupported(_) => StatusCode::BAD_REQUEST,
            EngineError::Upstream { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            EngineError::Backend(_)
            | EngineError::WorkerGone
            | EngineError::Task(_)
            | EngineError::Decode(_)
            | EngineError::Sampling(_)
            | EngineError::EmbedContext(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
            retry_after: None,
        }
    }
}

impl From<ResourceError> for ApiError {
    fn from(e: ResourceError) -> Self {
        let message = e.to_string();
        let (status, retry_after) = match e {
            ResourceError::Store(e) => return e.into(),
            ResourceError::Engine(e) => return e.into(),
            ResourceError::BadModel { .. } => (StatusCode::BAD_REQUEST, None),
            // The model can never fit this server's budget: neither the client's fault nor a fault.
            ResourceError::TooLarge { .. } => (StatusCode::INSUFFICIENT_STORAGE, None),
            ResourceError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
            // Busy models hold the memory; they will finish.
            ResourceError::NoRoom { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
            ResourceError::LoadAborted => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        ApiError {
            status,
            message,
            retry_after,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Resource(e) => e.into(),
            ServiceError::Engine(e) => e.into(),
            e @ (ServiceError::ModelDefaults { .. }
            | ServiceError::Template(_)
            | ServiceError::Invalid(_)) => ApiError::bad_request(e.to_string()),
            e @ (ServiceError::UnknownPersona(_) | ServiceError::UnknownTemplate(_)) => ApiError::not_found(e.to_string()),
            ServiceError::Conversation(e) => e.into(),
            e @ ServiceError::Busy { .. } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(1),
            },
            e @ ServiceError::NoTarget { .. } => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string(), retry_after: Some(5) },
            ServiceError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

impl From<crate::conversations::ConversationError> for ApiError {
    fn from(e: crate::conversations::ConversationError) -> Self {
        use crate::conversations::ConversationError as E;
        let status = match &e {
            E::InvalidId { .. } => StatusCode::BAD_REQUEST,
            E::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::CreateDir { .. } | E::Open { .. } | E::SchemaTooNew { .. } | E::Database { .. } | E::Task(_) | E::BadUrl { .. } | E::Postgres { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let retry_after = matches!(e, E::Unavailable { .. }).then_some(1);
        ApiError {
            status,
            message: e.to_string(),
            retry_after,
        }
    }
}
