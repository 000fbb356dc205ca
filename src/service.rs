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
    /// `/api/chat`: a conversation rendered with the model's chat template, offering `tools`
    /// (OpenAI-style function objects) when there are any.
    Chat { messages: Vec<TemplateMessage>, tools: Vec<serde_json::Value> },
}

impl PromptSpec {
    /// An empty prompt or conversation only loads (or unloads) the model, as in Ollama.
    pub fn is_empty(&self) -> bool {
        match self {
            PromptSpec::Generate { prompt, context, .. } => prompt.is_empty() && context.is_empty(),
            PromptSpec::Chat { messages, .. } => messages.is_empty(),
        }
    }
}

/// A request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub model: String,
    pub prompt: PromptSpec,
    /// Tools offered in a chat, to read the answer back as a call.
    pub tools: Option<crate::engine::grammar::ToolRequest>,
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

/// Finds the model: by name for the network, by name or file path for the local user.
fn resolve(manager: &ModelManager, model: &str, caller: Caller) -> Result<crate::store::ModelEntry, StoreError> {
    match caller {
        Caller::Network => manager.store().resolve(model),
        Caller::Local => manager.store().resolve_name_or_path(model),
    }
}

/// The request's options laid over the model's Modelfile parameters (the request wins), and
/// whether `num_ctx` was set by either.
fn with_model_defaults(
    manager: &ModelManager,
    entry: &crate::store::ModelEntry,
    options: SamplingOptions,
    raw: &RawOptions,
) -> Result<(SamplingOptions, bool), ServiceError> {
    if entry.defaults.parameters.is_empty() {
        return Ok((options, raw.num_ctx.is_some()));
    }
    let bad = |reason: String| ServiceError::ModelDefaults { model: entry.name.clone(), reason };
    let merged = RawOptions::from_json(&serde_json::Value::Object(entry.defaults.parameters.clone()))
        .map_err(|e| bad(e.to_string()))?
        .merged_with(raw);
    let mut merged_options = merged.validate(manager.defaults().num_ctx).map_err(|e| bad(e.to_string()))?;
    // What the API layer decided beyond Ollama's options stays.
    merged_options.grammar = options.grammar;
    merged_options.logprobs = options.logprobs;
    Ok((merged_options, merged.num_ctx.is_some()))
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
    let entry = resolve(manager, &req.model, caller)?;
    if req.prompt.is_empty() && req.keep_alive == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        manager.unload(&entry.name);
        return Ok(Outcome::Loaded { unloaded: true, load_duration: std::time::Duration::ZERO });
    }
    let (options, explicit_num_ctx) = with_model_defaults(manager, &entry, req.options, &req.raw_options)?;
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
    let render = move |mut messages: Vec<TemplateMessage>, tools: &[serde_json::Value]| -> Result<String, EngineError> {
        if let Some(system) = &defaults.system {
            if !messages.iter().any(|m| m.role == "system") {
                messages.insert(0, TemplateMessage { role: "system".into(), content: system.clone() });
            }
        }
        match &defaults.template {
            _ if !tools.is_empty() => model.render_chat_tools(&messages, tools, defaults.template.as_deref()),
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
                    render(messages, &[])?
                };
                let mut tokens = context;
                tokens.extend(tokenizer.tokenize(&text));
                tokens
            }
            PromptSpec::Chat { messages, tools } => tokenizer.tokenize(&render(messages, &tools)?),
        })
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("prompt task failed: {e}")))??;
    let events = lease.model.submit(tokens, options)?;
    Ok(Outcome::Generating(Generation { events, lease, started }))
}

// ---------------------------------------------------------------- embeddings

/// One input to embed: text, tokenized like a prompt (special tokens parsed, BOS added when the
/// model wants one), or token ids used as given (OpenAI accepts token arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<i32>),
}

/// An embedding request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidEmbedRequest {
    pub model: String,
    /// No inputs only loads the model, as in Ollama.
    pub inputs: Vec<EmbedInput>,
    /// Cut an input longer than the context to fit (Ollama's default) instead of refusing it.
    pub truncate: bool,
    /// Keep only the first N dimensions, normalized again; checked against the model's width.
    pub dimensions: Option<usize>,
    /// Scale each vector to unit length (`/api/embed`, `/v1/embeddings`); the legacy
    /// `/api/embeddings` returns the pooled vector as it is, like Ollama's.
    pub normalize: bool,
    /// Validated options; only `num_ctx` matters here (it picks the instance and the limit).
    pub options: SamplingOptions,
    pub raw_options: RawOptions,
    pub keep_alive: Option<KeepAlive>,
}

/// The vectors, one per input in order, with Ollama's accounting.
#[derive(Debug, Clone)]
pub struct EmbedResult {
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens embedded, after truncation.
    pub prompt_tokens: usize,
    pub load_duration: std::time::Duration,
    pub total_duration: std::time::Duration,
}

/// Embeds every input with the model's pooled embeddings, on the model's worker (one loaded
/// instance serves generation and embeddings), batching the inputs into as few decodes as fit.
pub async fn embed(manager: &ModelManager, req: ValidEmbedRequest, caller: Caller) -> Result<EmbedResult, ServiceError> {
    let started = Instant::now();
    let entry = resolve(manager, &req.model, caller)?;
    let (options, explicit_num_ctx) = with_model_defaults(manager, &entry, req.options.clone(), &req.raw_options)?;
    let num_ctx = options.num_ctx;
    let lease = manager.acquire(entry, explicit_num_ctx.then_some(num_ctx), req.keep_alive).await?;
    let load_duration = lease.load_duration;
    let done = |embeddings: Vec<Vec<f32>>, prompt_tokens: usize| EmbedResult {
        embeddings,
        prompt_tokens,
        load_duration,
        total_duration: started.elapsed(),
    };
    if req.inputs.is_empty() {
        return Ok(done(Vec::new(), 0));
    }
    let n_embd = lease.model.n_embd();
    if let Some(requested) = req.dimensions.filter(|d| !(1..=n_embd).contains(d)) {
        return Err(EngineError::Dimensions { requested, n_embd }.into());
    }
    // Ollama's limit: the request's context, within what the instance holds.
    let limit = num_ctx.min(lease.model.n_ctx_slot);
    let model = std::sync::Arc::clone(&lease.model);
    let (inputs, truncate) = (req.inputs, req.truncate);
    let tokens = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .map(|input| {
                let mut tokens = match input {
                    EmbedInput::Text(text) => model.tokenize(&text),
                    EmbedInput::Tokens(tokens) => tokens,
                };
                if tokens.len() > limit as usize {
                    if !truncate {
                        return Err(EngineError::InputTooLong { tokens: tokens.len(), num_ctx: limit });
                    }
                    model.truncate_input(&mut tokens, limit as usize);
                }
                Ok(tokens)
            })
            .collect::<Result<Vec<_>, EngineError>>()
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("tokenize task failed: {e}")))??;
    let prompt_tokens = tokens.iter().map(Vec::len).sum();
    let vectors = lease
        .model
        .embed(tokens)?
        .await
        .map_err(|_| EngineError::WorkerGone)??;
    let embeddings = vectors
        .into_iter()
        .map(|mut v| match req.dimensions {
            Some(dims) => crate::engine::embed::shorten(v, dims),
            None => {
                if req.normalize {
                    crate::engine::embed::normalize(&mut v);
                }
                v
            }
        })
        .collect();
    Ok(done(embeddings, prompt_tokens))
}
