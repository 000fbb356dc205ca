//! The request path shared by HTTP, stdio and `hearth run`: apply the persona, prompt template
//! and conversation history, look in the response cache, resolve the model, lease it, build the
//! prompt, tokenize, and hand the job to the engine; then record the answer (cache,
//! conversation, metrics) as it streams back.
//!
//! Takes only validated requests (`ValidRequest`); the wire formats live in `api`. Returns a
//! `Generation` whose event stream the caller turns into its own output format, the same for a
//! cache hit as for a fresh answer.

pub mod accounts;
mod answer;
pub mod catalog;
mod history;
pub mod reply;
pub mod score;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::cache::{Lookup, ResponseCache};
use crate::conversations::ConversationStore;
use crate::backend::{EmbedJob, EngineError, Event, GenerateJob};
use crate::spec::options::{OptionPatch, SamplingOptions};
use crate::spec::template::TemplateMessage;
use crate::resources::{KeepAlive, ModelManager, ResourceError};
use crate::metrics::Metrics;
use crate::store::StoreError;

pub use crate::backend::{EmbedInput, PromptSpec};

/// A request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub model: String,
    pub prompt: PromptSpec,
    /// Tools offered in a chat, to read the answer back as a call.
    pub tools: Option<crate::engine::grammar::ToolRequest>,
    /// The request's own options, laid over the persona's and the model's.
    pub options: OptionPatch,
    /// What the API decided beyond Ollama's options: the grammar the answer must follow
    /// (structured output, tool calls), and log-probabilities (`Some(n)`: with n alternatives).
    pub grammar: Option<String>,
    pub logprobs: Option<u8>,
    pub keep_alive: Option<KeepAlive>,
    pub stream: bool,
    /// The service layer's choices: persona, cache, conversation, prompt template.
    pub service: ServiceOptions,
}

/// What a request asks of the service layer beyond generation.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// A persona by name (also chosen by using its name as the model).
    pub persona: Option<String>,
    /// `Some(true)` caches a sampled answer too; `Some(false)` bypasses the cache; `None`
    /// caches deterministic requests (temperature 0 or a fixed seed).
    pub use_cache: Option<bool>,
    /// A server-side conversation this request continues.
    pub conversation_id: Option<String>,
    /// A named prompt template and its variables, rendered into the prompt (the last user
    /// message of a chat).
    pub template: Option<TemplateUse>,
    /// The API key's account the answer's tokens and cost are counted on.
    pub account: Option<Arc<accounts::Account>>,
}

#[derive(Debug, Clone)]
pub struct TemplateUse {
    pub name: String,
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model '{model}' has invalid default parameters: {reason}")]
    ModelDefaults { model: String, reason: String },
    #[error("persona '{0}' not found (personas come from the config file and /llm/configure)")]
    UnknownPersona(String),
    #[error("prompt template '{0}' not found")]
    UnknownTemplate(String),
    #[error(transparent)]
    Template(#[from] crate::prompts::PromptError),
    #[error(transparent)]
    Conversation(#[from] crate::conversations::ConversationError),
    #[error("{0}")]
    Invalid(String),
    #[error("server busy: {limit} requests are already running (max_concurrent_requests); retry later")]
    Busy { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Resource(ResourceError::Store(e))
    }
}

/// Finds the model: by name for the network, by name or file path for the local user. The
/// store reads manifests and file metadata: on a blocking thread.
async fn resolve(manager: &ModelManager, model: &str, caller: Caller) -> Result<crate::store::ModelEntry, ServiceError> {
    let store = Arc::clone(manager.store());
    let model = model.to_string();
    tokio::task::spawn_blocking(move || match caller {
        Caller::Network => store.resolve(&model),
        Caller::Local => store.resolve_name_or_path(&model),
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("model lookup failed: {e}")))?
    .map_err(ServiceError::from)
}

/// The request's options over the persona's over the model's parameters, resolved once; and
/// whether any of them set `num_ctx` (which then picks the loaded instance).
fn resolve_options(
    manager: &ModelManager,
    entry: &crate::store::ModelEntry,
    persona: Option<&catalog::Persona>,
    request: &OptionPatch,
) -> Result<(SamplingOptions, bool), ServiceError> {
    let model = entry.defaults.options.as_ref().map_err(|e| ServiceError::ModelDefaults { model: entry.name.clone(), reason: e.to_string() })?;
    let mut patch = model.clone();
    if let Some(p) = persona {
        patch = patch.over(&p.options);
    }
    let patch = patch.over(request);
    Ok((patch.resolve(manager.defaults().num_ctx), patch.num_ctx.is_some()))
}

/// What a request started.
pub enum Outcome {
    /// Empty prompt: the model is now loaded (`done_reason: "load"`) or unloaded (`"unload"`).
    Loaded { unloaded: bool, load_duration: std::time::Duration },
    Generating(Generation),
}

/// A running generation (or a cached answer replayed): its events, in the engine's order.
/// The model stays leased until the last event is out.
pub struct Generation {
    pub events: UnboundedReceiver<Event>,
    pub load_duration: Duration,
    pub started: Instant,
    pub info: ResponseInfo,
}

/// What the service layer did for a response, for its headers and final object.
#[derive(Debug, Clone, Default)]
pub struct ResponseInfo {
    pub cache: CacheResult,
    pub persona: Option<String>,
    pub conversation_id: Option<String>,
    /// Oldest conversation messages left out so the history fits the context.
    pub dropped_messages: usize,
}

/// Whether the answer came from the response cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    #[default]
    Miss,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
        }
    }
}

/// Who is asking: the network may only name models; the local user may also give a file path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Network,
    Local,
}

/// The service layer's shared state: a cheap-to-clone handle that every front end (HTTP, stdio,
/// `hearth run`) starts requests through.
#[derive(Clone)]
pub struct Service {
    pub manager: ModelManager,
    pub cache: ResponseCache,
    pub conversations: Option<ConversationStore>,
    pub metrics: Metrics,
    catalog: Arc<RwLock<Arc<catalog::Catalog>>>,
    settings: Arc<RwLock<ServiceSettings>>,
    /// Generations running now, bounded by `max_concurrent_requests`.
    running: Arc<std::sync::atomic::AtomicUsize>,
    /// Where `/llm/configure` keeps profiles; `None` keeps them in memory only.
    profiles_file: Option<std::path::PathBuf>,
    /// One profile write at a time.
    profiles_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Request limits and logging choices of the service layer.
#[derive(Debug, Clone, Default)]
pub struct ServiceSettings {
    /// Most generations running at once across all models (0: no limit beyond the queues).
    pub max_concurrent_requests: usize,
    /// A generation still running after this long is stopped with an error.
    pub request_timeout: Option<Duration>,
    /// Log prompts and answers (off: they may be private).
    pub log_prompts: bool,
}

/// One running generation counted against `max_concurrent_requests` until dropped.
struct RunningGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Service {
    pub fn new(
        manager: ModelManager,
        cache: ResponseCache,
        conversations: Option<ConversationStore>,
        metrics: Metrics,
        catalog: catalog::Catalog,
        settings: ServiceSettings,
    ) -> Service {
        Service {
            manager,
            cache,
            conversations,
            metrics,
            catalog: Arc::new(RwLock::new(Arc::new(catalog))),
            settings: Arc::new(RwLock::new(settings)),
            running: Arc::default(),
            profiles_file: None,
            profiles_lock: Arc::default(),
        }
    }

    /// Keeps profiles in `path` (loaded now, written on every change).
    pub fn with_profiles(mut self, path: std::path::PathBuf) -> Result<Service, String> {
        let profiles = catalog::load_profiles(&path)?;
        let mut c = (*self.catalog()).clone();
        c.profiles = profiles;
        self.set_catalog(c);
        self.profiles_file = Some(path);
        Ok(self)
    }

    /// Stores (or replaces) a profile and makes it usable at once.
    pub async fn store_profile(&self, profile: catalog::Persona) -> Result<(), ServiceError> {
        let _one_writer = self.profiles_lock.lock().await;
        let mut c = (*self.catalog()).clone();
        c.profiles.insert(profile.name.clone(), profile);
        if let Some(path) = self.profiles_file.clone() {
            let profiles = c.profiles.clone();
            tokio::task::spawn_blocking(move || catalog::save_profiles(&path, &profiles))
                .await
                .map_err(|e| ServiceError::Internal(format!("profile task failed: {e}")))?
                .map_err(ServiceError::Internal)?;
        }
        self.set_catalog(c);
        Ok(())
    }

    /// For one local user (`hearth run`): no cache, no conversations, built-in templates.
    pub fn local(manager: ModelManager) -> Service {
        Service::new(manager, ResponseCache::disabled(), None, Metrics::new(Default::default()), catalog::Catalog::default(), ServiceSettings::default())
    }

    /// Personas, prompt templates and profiles as they are now.
    pub fn catalog(&self) -> Arc<catalog::Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Swaps in a reloaded catalog; requests already running keep the one they started with.
    pub fn set_catalog(&self, catalog: catalog::Catalog) {
        *self.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }

    pub fn settings(&self) -> ServiceSettings {
        self.settings.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn set_settings(&self, settings: ServiceSettings) {
        *self.settings.write().unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    }

    fn admit(&self, limit: usize) -> Result<RunningGuard, ServiceError> {
        use std::sync::atomic::Ordering;
        let now = self.running.fetch_add(1, Ordering::AcqRel);
        let guard = RunningGuard(Arc::clone(&self.running));
        if limit > 0 && now >= limit {
            return Err(ServiceError::Busy { limit });
        }
        Ok(guard)
    }

    /// Starts a request: a cached answer replayed, or a generation on the engine.
    pub async fn start(&self, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
        let catalog = self.catalog();
        let settings = self.settings();
        let ValidRequest { mut model, prompt, tools, options, grammar, logprobs, keep_alive, stream: _, service } = req;
        // A persona by the `persona` field, or by its name used as the model.
        let by_model = catalog.persona(&model).cloned();
        let persona = match &service.persona {
            Some(name) => Some(catalog.persona(name).cloned().ok_or_else(|| ServiceError::UnknownPersona(name.clone()))?),
            None => by_model.clone(),
        };
        if let Some(p) = by_model {
            model = p.model.clone();
        }
        let mut entry = resolve(&self.manager, &model, caller).await?;
        // A persona with a LoRA adapter is its own loaded instance: the base model plus the
        // adapter, under the persona's name.
        if let Some((p, adapter)) = persona.as_ref().and_then(|p| p.adapter.as_ref().map(|a| (p, a))) {
            entry.defaults.adapters = vec![adapter.clone()];
            entry.name = p.name.clone();
        }
        // An empty request only loads or unloads; a prompt template fills an empty prompt.
        if prompt.is_empty() && service.template.is_none() {
            if keep_alive == Some(KeepAlive::For(Duration::ZERO)) {
                self.manager.unload(&entry.name);
                return Ok(Outcome::Loaded { unloaded: true, load_duration: Duration::ZERO });
            }
            let (options, explicit_num_ctx) = resolve_options(&self.manager, &entry, persona.as_ref(), &options)?;
            let lease = self.manager.acquire(entry, explicit_num_ctx.then_some(options.num_ctx), keep_alive).await?;
            return Ok(Outcome::Loaded { unloaded: false, load_duration: lease.load_duration });
        }
        let (mut options, explicit_num_ctx) = resolve_options(&self.manager, &entry, persona.as_ref(), &options)?;
        options.grammar = grammar;
        options.logprobs = logprobs;
        let mut prompt = prompt;
        if let Some(t) = &service.template {
            // It may read the model file's header (the template's variant for its family).
            let (c, s, e, t) = (Arc::clone(&catalog), Arc::clone(self.manager.store()), entry.clone(), t.clone());
            prompt = tokio::task::spawn_blocking(move || catalog::apply_template(&c, &s, &e, &t, prompt))
                .await
                .map_err(|e| ServiceError::Internal(format!("prompt template task failed: {e}")))??;
        }
        // The conversation's turn is held until its answer is stored, so concurrent turns on
        // one conversation see each other's messages.
        let turn = match &service.conversation_id {
            Some(id) => {
                let store = self.conversations.as_ref().ok_or_else(|| ServiceError::Invalid("conversations are not available here".into()))?;
                crate::conversations::validate_id(id)?;
                let guard = store.turn(id).await;
                let history = store.history(id).await?;
                Some((id.clone(), guard, history))
            }
            None => None,
        };
        let history: Vec<TemplateMessage> = turn
            .as_ref()
            .map(|(_, _, h)| h.iter().map(|m| TemplateMessage { role: m.role.clone(), content: m.content.clone() }).collect())
            .unwrap_or_default();
        let assembled = history::assemble(prompt, persona.as_ref(), history, turn.is_some()).map_err(ServiceError::Invalid)?;
        let mut info = ResponseInfo {
            cache: CacheResult::Miss,
            persona: persona.as_ref().map(|p| p.name.clone()),
            conversation_id: service.conversation_id.clone(),
            dropped_messages: 0,
        };
        let record = answer::Record {
            cache: None,
            conversation: turn.map(|(id, guard, _)| answer::Turn {
                store: self.conversations.clone(),
                id,
                guard,
                model: entry.name.clone(),
                new_messages: assembled.new_messages.clone(),
            }),
            metrics: self.metrics.clone(),
            model: entry.name.clone(),
            persona: info.persona.clone(),
            started,
            timeout: settings.request_timeout,
            log_prompt: settings.log_prompts.then(|| assembled.new_messages.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join("\n")),
            running: None,
            lease: None,
            account: service.account.clone(),
        };

        // The response cache: deterministic requests by default, others when asked.
        let cacheable = service.use_cache.unwrap_or(options.temperature == 0.0 || options.seed.is_some());
        let mut record = record;
        if cacheable && self.cache.backend() != "disabled" {
            let key = answer::cache_key(&entry, self.manager.defaults().weights, info.persona.as_deref(), &assembled.prompt, tools.as_ref(), &options);
            match self.cache.get(&key).await {
                Lookup::Hit(bytes) => match answer::CachedAnswer::decode(&bytes) {
                    Some(cached) => {
                        self.metrics.record_cache("hit");
                        info.cache = CacheResult::Hit;
                        let events = answer::replay(cached, record).await;
                        return Ok(Outcome::Generating(Generation { events, load_duration: Duration::ZERO, started, info }));
                    }
                    None => self.metrics.record_cache("miss"),
                },
                Lookup::Miss => self.metrics.record_cache("miss"),
                Lookup::Unavailable => self.metrics.record_cache("unavailable"),
            }
            record.cache = Some((self.cache.clone(), key));
        } else {
            self.metrics.record_cache("bypass");
        }

        record.running = Some(self.admit(settings.max_concurrent_requests)?);
        let num_ctx = explicit_num_ctx.then_some(options.num_ctx);
        let lease = self.manager.acquire(entry, num_ctx, keep_alive).await?;
        let load_duration = lease.load_duration;
        let job = GenerateJob {
            prompt: assembled.prompt,
            droppable: assembled.droppable,
            options,
            model_system: lease.entry.defaults.system.clone(),
            model_template: lease.entry.defaults.template.clone(),
        };
        let submitted = Arc::clone(&lease.model).generate(job).await?;
        info.dropped_messages = submitted.dropped_messages;
        let events = submitted.events;
        record.lease = Some(lease);
        let events = answer::forward(events, record);
        Ok(Outcome::Generating(Generation { events, load_duration, started, info }))
    }
}

/// Starts a request without the service layer's state (tests, tools): see `Service::start`.
pub async fn start(manager: &ModelManager, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
    Service::local(manager.clone()).start(req, caller, started).await
}


// ---------------------------------------------------------------- embeddings

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
    /// Only `num_ctx` matters here (it picks the instance and the limit).
    pub options: OptionPatch,
    pub keep_alive: Option<KeepAlive>,
    /// The API key's account the tokens are counted on.
    pub account: Option<Arc<accounts::Account>>,
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

impl Service {
    /// Embeds every input with the model's pooled embeddings (one loaded instance serves
    /// generation and embeddings). Counted, bounded and timed like a generation:
    /// `max_concurrent_requests` admits it, `request_timeout` stops it, the metrics count it.
    pub async fn embed(&self, req: ValidEmbedRequest, caller: Caller) -> Result<EmbedResult, ServiceError> {
        let settings = self.settings();
        let _running = self.admit(settings.max_concurrent_requests)?;
        let model = req.model.clone();
        let account = req.account.clone();
        let started = Instant::now();
        let work = embed(&self.manager, req, caller, started);
        let result = match settings.request_timeout {
            Some(limit) => match tokio::time::timeout_at(tokio::time::Instant::from_std(started) + limit, work).await {
                Ok(r) => r,
                Err(_) => {
                    self.metrics.record_error("timeout");
                    tracing::warn!(model = %model, "embedding stopped: past the request timeout of {limit:?}");
                    return Err(EngineError::TimedOut(limit).into());
                }
            },
            None => work.await,
        };
        if let Ok(r) = &result {
            self.metrics.record_embedding(&model, r.prompt_tokens as u64);
            if let Some(a) = &account {
                a.charge(&self.metrics, &model, r.prompt_tokens as u64, 0);
            }
            tracing::info!(model = %model, prompt_tokens = r.prompt_tokens, inputs = r.embeddings.len(), duration_ms = r.total_duration.as_millis() as u64, "embedding done");
        }
        result
    }
}

async fn embed(manager: &ModelManager, req: ValidEmbedRequest, caller: Caller, started: Instant) -> Result<EmbedResult, ServiceError> {
    let entry = resolve(manager, &req.model, caller).await?;
    let (options, explicit_num_ctx) = resolve_options(manager, &entry, None, &req.options)?;
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
    let limit = num_ctx.min(lease.model.n_ctx_slot());
    let job = EmbedJob { inputs: req.inputs, truncate: req.truncate, limit };
    let embedded = Arc::clone(&lease.model).embed(job).await?;
    let embeddings = embedded
        .vectors
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
    Ok(done(embeddings, embedded.prompt_tokens))
}
