//! The request path shared by HTTP, stdio and `hearth run`: resolve the model, lease it, build
//! the prompt, tokenize, and hand the job to the engine.
//!
//! Takes only validated requests (`ValidRequest`); the wire formats live in `api`. Returns a
//! `Generation` whose event stream the caller turns into its own output format.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::options::{RawOptions, SamplingOptions};
use crate::engine::template::{render_request_template, TemplateMessage};
use crate::engine::{EngineError, Event};
use crate::resources::{KeepAlive, ModelLease, ModelManager, ResourceError};
use crate::store::StoreError;

/// How the prompt is made.
#[derive(Debug, Clone)]
pub enum PromptSpec {
    /// `/api/generate`: a prompt, optionally with a system message, a request template, raw
    /// mode, or the deprecated token `context` of an earlier answer.
    Generate {
        prompt: String,
        system: Option<String>,
        template: Option<String>,
        raw: bool,
        context: Vec<i32>,
    },
    /// `/api/chat`: a conversation rendered with the model's chat template.
    Chat { messages: Vec<TemplateMessage> },
}

impl PromptSpec {
    /// An empty prompt or conversation only loads (or unloads) the model, as in Ollama.
    pub fn is_empty(&self) -> bool {
        match self {
            PromptSpec::Generate { prompt, context, .. } => prompt.is_empty() && context.is_empty(),
            PromptSpec::Chat { messages } => messages.is_empty(),
        }
    }
}

/// A request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub model: String,
    pub prompt: PromptSpec,
    /// The request's options, validated against the server's defaults.
    pub options: SamplingOptions,
    /// The options as the client set them, to lay over the model's own defaults.
    pub raw_options: RawOptions,
    pub keep_alive: Option<KeepAlive>,
    pub stream: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model '{model}' has invalid default parameters: {reason}")]
    ModelDefaults { model: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Resource(ResourceError::Store(e))
    }
}

/// What a request started.
pub enum Outcome {
    /// Empty prompt: the model is now loaded (`done_reason: "load"`) or unloaded (`"unload"`).
    Loaded { unloaded: bool, load_duration: std::time::Duration },
    Generating(Generation),
}

/// A running generation: the engine's events, and the lease that keeps the model loaded.
pub struct Generation {
    pub events: UnboundedReceiver<Event>,
    pub lease: ModelLease,
    pub started: Instant,
}

/// Who is asking: the network may only name models; the local user may also give a file path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Network,
    Local,
}

pub async fn start(manager: &ModelManager, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
    let entry = match caller {
        Caller::Network => manager.store().resolve(&req.model)?,
        Caller::Local => manager.store().resolve_name_or_path(&req.model)?,
    };
    if req.prompt.is_empty() && req.keep_alive == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        manager.unload(&entry.name);
        return Ok(Outcome::Loaded { unloaded: true, load_duration: std::time::Duration::ZERO });
    }
    // The model's Modelfile parameters apply under the request's own options.
    let (options, explicit_num_ctx) = if entry.defaults.parameters.is_empty() {
        (req.options, req.raw_options.num_ctx.is_some())
    } else {
        let bad = |reason: String| ServiceError::ModelDefaults { model: entry.name.clone(), reason };
        let merged = RawOptions::from_json(&serde_json::Value::Object(entry.defaults.parameters.clone()))
            .map_err(|e| bad(e.to_string()))?
            .merged_with(&req.raw_options);
        let options = merged.validate(manager.defaults().num_ctx).map_err(|e| bad(e.to_string()))?;
        (options, merged.num_ctx.is_some())
    };
    let defaults = entry.defaults.clone();
    let num_ctx = explicit_num_ctx.then_some(options.num_ctx);
    let lease = manager.acquire(entry, num_ctx, req.keep_alive).await?;
    if req.prompt.is_empty() {
        return Ok(Outcome::Loaded { unloaded: false, load_duration: lease.load_duration });
    }
    let model = std::sync::Arc::clone(&lease.model);
    let prompt = req.prompt;
    // A Modelfile's TEMPLATE replaces the model's chat template; its SYSTEM applies when the
    // request brings none.
    let render = move |mut messages: Vec<TemplateMessage>| -> Result<String, EngineError> {
        if let Some(system) = &defaults.system {
            if !messages.iter().any(|m| m.role == "system") {
                messages.insert(0, TemplateMessage { role: "system".into(), content: system.clone() });
            }
        }
        match &defaults.template {
            Some(t) => model.render_chat_with(t, &messages),
            None => model.render_chat(&messages, true),
        }
    };
    // Template rendering and tokenizing are CPU work proportional to the prompt: keep them off
    // the async workers.
    let tokenizer = std::sync::Arc::clone(&lease.model);
    let tokens = tokio::task::spawn_blocking(move || -> Result<Vec<i32>, EngineError> {
        Ok(match prompt {
            PromptSpec::Generate { prompt, system, template, raw, context } => {
                let text = if raw {
                    prompt
                } else if let Some(t) = template {
                    render_request_template(&t, system.as_deref().unwrap_or(""), &prompt)?
                } else {
                    let mut messages = Vec::new();
                    if let Some(s) = system {
                        messages.push(TemplateMessage { role: "system".into(), content: s });
                    }
                    messages.push(TemplateMessage { role: "user".into(), content: prompt });
                    render(messages)?
                };
                let mut tokens = context;
                tokens.extend(tokenizer.tokenize(&text));
                tokens
            }
            PromptSpec::Chat { messages } => tokenizer.tokenize(&render(messages)?),
        })
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("prompt task failed: {e}")))??;
    let events = lease.model.submit(tokens, options)?;
    Ok(Outcome::Generating(Generation { events, lease, started }))
}
