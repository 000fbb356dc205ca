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
mod embed;
pub use embed::{EmbedResult, ValidEmbedRequest};
mod history;
pub mod reply;
mod route;
pub mod score;
pub mod shared_limits;
pub mod tokens;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::cache::{Lookup, ResponseCache};
use crate::conversations::ConversationStore;
use crate::backend::{EngineError, Event, GenerateJob};
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
    /// The output format the grammar came from, for a provider's model.
    pub format: Option<crate::backend::OutputFormat>,
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
    /// What keeps a split route on one variant (a header, OpenAI's `user`); the
    /// conversation id when there is one.
    pub sticky: Option<String>,
    /// Earlier turns the API keeps itself (a stored response's chain): placed like a
    /// conversation's history, and the first to go when the context is short.
    pub prior: Vec<TemplateMessage>,
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
    #[error("route '{route}' has no target that can answer now (tried or passed over: {}); their breakers are open or they failed", tried.join(", "))]
    NoTarget { route: String, tried: Vec<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Resource(ResourceError::Store(e))
    }
}

/// Finds the model: by name for the network, by name or file path for the local user. A name
/// the network resolved before whose files are unchanged is answered here (a few metadata
/// reads); otherwise the store reads manifests and file metadata on a blocking thread.
async fn resolve(manager: &ModelManager, model: &str, caller: Caller) -> Result<crate::store::ModelEntry, ServiceError> {
    if let Some(known) = matches!(caller, Caller::Network).then(|| manager.store().resolve_known(model)).flatten() {
        return Ok(known);
    }
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

/// The request's options over the persona's over the model's parameters (a provider's model
/// has none here), as a patch.
fn merged_options(entry: Option<&crate::store::ModelEntry>, persona: Option<&catalog::Persona>, request: &OptionPatch) -> Result<OptionPatch, ServiceError> {
    let mut patch = match entry {
        Some(e) => e.defaults.options.as_ref().map_err(|err| ServiceError::ModelDefaults { model: e.name.clone(), reason: err.to_string() })?.clone(),
        None => OptionPatch::default(),
    };
    if let Some(p) = persona {
        patch = patch.over(&p.options);
    }
    Ok(patch.over(request))
}

/// The merged options resolved once; and whether any of them set `num_ctx` (which then picks
/// the loaded instance).
fn resolve_options(
    manager: &ModelManager,
    entry: &crate::store::ModelEntry,
    persona: Option<&catalog::Persona>,
    request: &OptionPatch,
) -> Result<(SamplingOptions, bool), ServiceError> {
    let patch = merged_options(Some(entry), persona, request)?;
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
    /// Which target answered, when a route or a provider did.
    pub served: Option<Box<route::ServedBy>>,
    /// The server within the target that answered (a fleet's node), when it chose one.
    pub answered_by: Option<String>,
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
    /// Where `/llm/configure` keeps profiles.
    profiles_home: ProfileHome,
    /// One profile write at a time.
    profiles_lock: Arc<tokio::sync::Mutex<()>>,
    /// Providers and routes.
    pub router: crate::routing::Router,
}

/// Where `/llm/configure`'s profiles are kept.
#[derive(Clone)]
enum ProfileHome {
    /// Nowhere but memory (`hearth run`, tests).
    Memory,
    /// `profiles.json` in the data directory.
    File(std::path::PathBuf),
    /// The shared database (PostgreSQL), where every server sees them.
    Database(ConversationStore),
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
            profiles_home: ProfileHome::Memory,
            profiles_lock: Arc::default(),
            router: crate::routing::Router::default(),
        }
    }

    /// Serves providers' models and routes through `router`.
    pub fn with_router(mut self, router: crate::routing::Router) -> Service {
        self.router = router;
        self
    }

    /// Keeps profiles in `path` (loaded now, written on every change).
    pub fn with_profiles(mut self, path: std::path::PathBuf) -> Result<Service, String> {
        let profiles = catalog::load_profiles(&path)?;
        let mut c = (*self.catalog()).clone();
        c.profiles = profiles;
        self.set_catalog(c);
        self.profiles_home = ProfileHome::File(path);
        Ok(self)
    }

    /// Keeps profiles in the shared database (PostgreSQL), loaded now; `refresh_profiles`
    /// picks up what other servers store.
    pub async fn with_shared_profiles(mut self, store: ConversationStore) -> Result<Service, String> {
        self.profiles_home = ProfileHome::Database(store);
        self.refresh_profiles().await.map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Reads the shared database's profiles and swaps them in if they changed; `false` when
    /// nothing changed or profiles are not shared.
    pub async fn refresh_profiles(&self) -> Result<bool, ServiceError> {
        let ProfileHome::Database(store) = &self.profiles_home else { return Ok(false) };
        let _one_writer = self.profiles_lock.lock().await;
        let texts = store.profiles().await?.unwrap_or_default();
        let profiles = texts
            .iter()
            .map(|t| catalog::profile_from_json(t).map(|p| (p.name.clone(), p)))
            .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
            .map_err(ServiceError::Internal)?;
        if self.catalog().profiles == profiles {
            return Ok(false);
        }
        let mut c = (*self.catalog()).clone();
        c.profiles = profiles;
        self.set_catalog(c);
        Ok(true)
    }

    /// Stores (or replaces) a profile and makes it usable at once.
    pub async fn store_profile(&self, profile: catalog::Persona) -> Result<(), ServiceError> {
        if let ProfileHome::Database(store) = &self.profiles_home {
            store.put_profile(&profile.name, &catalog::profile_json(&profile)).await?;
            self.refresh_profiles().await?;
            return Ok(());
        }
        let _one_writer = self.profiles_lock.lock().await;
        let mut c = (*self.catalog()).clone();
        c.profiles.insert(profile.name.clone(), profile);
        if let ProfileHome::File(path) = self.profiles_home.clone() {
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

    /// Starts a request: through a route when the model names one, else on the model (local,
    /// or a provider's); a cached answer replayed, or a generation.
    pub async fn start(&self, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
        let table = self.router.table();
        match route::find(&table, &req.model) {
            Some(r) => route::start(self, &table, r, req, caller, started).await,
            None => {
                let remote = table.remote(&req.model).is_some();
                let name = req.model.clone();
                let mut outcome = self.start_on(req, caller, started, &table, &route::Attempt::default()).await?;
                if let (true, Outcome::Generating(g)) = (remote, &mut outcome) {
                    let target = g.info.answered_by.clone().unwrap_or(name);
                    g.info.served = Some(Box::new(route::ServedBy { target, tried: Vec::new(), attribution: None, router: self.router.clone() }));
                }
                Ok(outcome)
            }
        }
    }

    /// Starts a request on one model: a local one (resolved in the store, leased from the
    /// resource manager) or a provider's (`provider/model`).
    async fn start_on(&self, req: ValidRequest, caller: Caller, started: Instant, table: &crate::routing::Table, attempt: &route::Attempt) -> Result<Outcome, ServiceError> {
        let catalog = self.catalog();
        let settings = self.settings();
        let ValidRequest { mut model, prompt, tools, options, grammar, format, logprobs, keep_alive, stream: _, service } = req;
        // A persona by the `persona` field, or by its name used as the model.
        let by_model = catalog.persona(&model).cloned();
        let persona = match &service.persona {
            Some(name) => Some(catalog.persona(name).cloned().ok_or_else(|| ServiceError::UnknownPersona(name.clone()))?),
            None => by_model.clone(),
        };
        if let Some(p) = by_model {
            model = p.model.clone();
        }
        let remote = table.remote(&model);
        let mut entry = match &remote {
            Some(_) => None,
            None => Some(resolve(&self.manager, &model, caller).await?),
        };
        // A persona or a route's target with a LoRA adapter is its own loaded instance: the
        // base model plus the adapter, under its own name.
        let adapter = attempt.adapter.as_ref().map(|a| (format!("{model}+{}", a.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()), a));
        let adapter = adapter.or_else(|| persona.as_ref().and_then(|p| p.adapter.as_ref().map(|a| (p.name.clone(), a))));
        if let (Some(e), Some((name, adapter))) = (entry.as_mut(), adapter) {
            e.defaults.adapters = vec![adapter.clone()];
            e.name = name;
        }
        if remote.is_some() && (persona.as_ref().is_some_and(|p| p.adapter.is_some()) || attempt.adapter.is_some()) {
            return Err(ServiceError::Invalid(format!("{model} is a provider's model: a LoRA adapter can't be applied to it")));
        }
        let served_name = entry.as_ref().map_or_else(|| model.clone(), |e| e.name.clone());
        let patch = merged_options(entry.as_ref(), persona.as_ref(), &options)?;
        let explicit_num_ctx = patch.num_ctx.is_some();
        // An empty request only loads or unloads; a prompt template fills an empty prompt.
        if prompt.is_empty() && service.template.is_none() {
            let Some(entry) = entry else {
                // A provider's model is always ready here.
                return Ok(Outcome::Loaded { unloaded: keep_alive == Some(KeepAlive::For(Duration::ZERO)), load_duration: Duration::ZERO });
            };
            if keep_alive == Some(KeepAlive::For(Duration::ZERO)) {
                self.manager.unload(&entry.name);
                return Ok(Outcome::Loaded { unloaded: true, load_duration: Duration::ZERO });
            }
            let num_ctx = patch.resolve(self.manager.defaults().num_ctx).num_ctx;
            let lease = self.manager.acquire(entry, explicit_num_ctx.then_some(num_ctx), keep_alive).await?;
            return Ok(Outcome::Loaded { unloaded: false, load_duration: lease.load_duration });
        }
        let mut options = patch.resolve(self.manager.defaults().num_ctx);
        options.grammar = grammar;
        options.logprobs = logprobs;
        let mut prompt = prompt;
        if let Some(t) = &service.template {
            // It may read the model file's header (the template's variant for its family).
            let (c, s, e, t) = (Arc::clone(&catalog), Arc::clone(self.manager.store()), entry.clone(), t.clone());
            prompt = tokio::task::spawn_blocking(move || catalog::apply_template(&c, &s, e.as_ref(), &t, prompt))
                .await
                .map_err(|e| ServiceError::Internal(format!("prompt template task failed: {e}")))??;
        }
        // The conversation's turn is held until its answer is stored, so concurrent turns on
        // one conversation see each other's messages.
        let turn = match &service.conversation_id {
            Some(id) => {
                let store = self.conversations.as_ref().ok_or_else(|| ServiceError::Invalid("conversations are not available here".into()))?;
                crate::conversations::validate_id(id)?;
                let guard = store.turn(id).await?;
                let history = store.history(id).await?;
                Some((id.clone(), guard, history))
            }
            None => None,
        };
        let history: Vec<TemplateMessage> = match &turn {
            Some((_, _, h)) => h.iter().map(|m| TemplateMessage { role: m.role.clone(), content: m.content.clone() }).collect(),
            None => service.prior.clone(),
        };
        let assembled = history::assemble(prompt, persona.as_ref(), history, turn.is_some()).map_err(ServiceError::Invalid)?;
        let mut info = ResponseInfo {
            cache: CacheResult::Miss,
            persona: persona.as_ref().map(|p| p.name.clone()),
            conversation_id: service.conversation_id.clone(),
            dropped_messages: 0,
            served: None,
            answered_by: None,
        };
        let record = answer::Record {
            cache: None,
            conversation: turn.map(|(id, guard, _)| answer::Turn {
                store: self.conversations.clone(),
                id,
                guard,
                model: served_name.clone(),
                new_messages: assembled.new_messages.clone(),
            }),
            metrics: self.metrics.clone(),
            model: served_name.clone(),
            persona: info.persona.clone(),
            started,
            timeout: settings.request_timeout,
            log_prompt: settings.log_prompts.then(|| assembled.new_messages.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join("\n")),
            running: None,
            lease: None,
            account: service.account.clone(),
            watch: attempt.watch.clone(),
        };

        // The response cache: deterministic requests by default, others when asked. The
        // model's identity is part of the key, so each target has its own answers.
        let cacheable = service.use_cache.unwrap_or(options.temperature == 0.0 || options.seed.is_some());
        let mut record = record;
        if cacheable && self.cache.backend() != "disabled" {
            let identity = match (&entry, &remote) {
                (Some(e), _) => answer::local_identity(e, self.manager.defaults().weights),
                (None, Some(r)) => answer::remote_identity(&r.provider().spec.url, &model),
                (None, None) => return Err(ServiceError::Internal("a model is neither local nor remote".into())),
            };
            let key = answer::cache_key(&identity, info.persona.as_deref(), &assembled.prompt, tools.as_ref(), &options);
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
        let mut job = GenerateJob {
            prompt: assembled.prompt,
            droppable: assembled.droppable,
            options,
            model_system: None,
            model_template: None,
            asked: patch,
            tools,
            format,
        };
        let (submitted, load_duration) = match (entry, remote) {
            (Some(entry), _) => {
                let num_ctx = explicit_num_ctx.then_some(job.options.num_ctx);
                let lease = match attempt.load_wait {
                    Some(wait) => self.manager.acquire_within(entry, num_ctx, keep_alive, wait).await?,
                    None => self.manager.acquire(entry, num_ctx, keep_alive).await?,
                };
                job.model_system = lease.entry.defaults.system.clone();
                job.model_template = lease.entry.defaults.template.clone();
                let submitted = Arc::clone(&lease.model).generate(job).await?;
                let load_duration = lease.load_duration;
                record.lease = Some(lease);
                (submitted, load_duration)
            }
            (None, Some(remote)) => (crate::backend::ModelInstance::generate(remote, job).await?, Duration::ZERO),
            (None, None) => return Err(ServiceError::Internal("a model is neither local nor remote".into())),
        };
        info.dropped_messages = submitted.dropped_messages;
        info.answered_by = submitted.answered_by;
        let events = answer::forward(submitted.events, record);
        Ok(Outcome::Generating(Generation { events, load_duration, started, info }))
    }
}

/// Starts a request without the service layer's state (tests, tools): see `Service::start`.
pub async fn start(manager: &ModelManager, req: ValidRequest, caller: Caller, started: Instant) -> Result<Outcome, ServiceError> {
    Service::local(manager.clone()).start(req, caller, started).await
}
