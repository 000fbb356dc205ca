//! The resource manager: which models are loaded, within a RAM budget, and for how long.
//!
//! Before loading, it asks the backend what the instance will take (for llama.cpp, an estimate
//! from the GGUF metadata). If it fits the budget it loads; if not, it unloads idle models,
//! least recently used first (`eviction`); a model that can't fit even alone is refused before
//! anything is loaded, and a load still waiting for busy models after `Limits::load_wait` is
//! refused with a message. A request holds a `ModelLease`: a leased instance is never unloaded,
//! and dropping the lease (also when the client goes away) starts its keep-alive clock.
//!
//! Loads of one model are serialised, so two requests for it load it once; loads of different
//! models run side by side, each holding a reservation for its bytes until its instance is in
//! the table. Memory counts as used until an unloaded instance has actually been freed, so the
//! next load never overlaps it. An instance whose worker died is dropped from the table at the
//! next request for it, which loads it again.
//!
//! Times are tokio's, so tests can run keep-alive and waits on paused time.
//! Must not: know how a model produces tokens (`backend` does) or what a request asks.

pub mod budget;
mod embedding;
pub mod eviction;
pub mod keep_alive;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::backend::{Backend, EngineError, LoadSettings, ModelInstance};
use crate::store::{ModelEntry, ModelStore, StoreError};
use eviction::{choose_evictions, Candidate, Room};
pub use keep_alive::KeepAlive;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model '{model}': {reason}")]
    BadModel { model: String, reason: String },
    #[error("model '{model}' needs {needed} bytes ({} MiB) of RAM but the budget is {budget} bytes ({} MiB); raise --ram-budget or lower num_ctx/--parallel", needed >> 20, budget >> 20)]
    TooLarge { model: String, needed: u64, budget: u64 },
    #[error("server busy: model '{model}' already has {waiting} requests waiting (limit --max-queue); try again shortly")]
    Busy { model: String, waiting: usize },
    #[error("model '{model}' needs {} MiB of RAM and the budget stayed full of busy models for {waited:?}; retry later, or raise --ram-budget", needed >> 20)]
    NoRoom { model: String, needed: u64, waited: Duration },
    #[error("model load was interrupted")]
    LoadAborted,
}

/// Limits the manager enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes all loaded models may take together.
    pub ram_budget: u64,
    /// At most this many models loaded at once (`None`: the budget alone decides).
    pub max_loaded: Option<usize>,
    /// Requests per model that may wait for a slot beyond those being served.
    pub max_queue: usize,
    /// How long a load may wait for busy models to finish before it is refused.
    pub load_wait: Duration,
}

/// The default `Limits::load_wait`: long enough for a few answers to finish.
pub const DEFAULT_LOAD_WAIT: Duration = Duration::from_secs(120);

/// A loaded instance and its bookkeeping.
struct Resident {
    entry: ModelEntry,
    model: Arc<dyn ModelInstance>,
    /// Context size asked for when loading (before clamping to the model).
    requested_ctx: u32,
    bytes: u64,
    in_flight: usize,
    last_used: Instant,
    keep_alive: KeepAlive,
    /// When it will be unloaded if nothing uses it; `None` while in use or kept forever.
    expires: Option<Instant>,
    /// Bumped on each (re)load so a stale lease can't touch a newer instance's counters.
    generation: u64,
    /// Whether `bytes` includes the embedding context (added before the first embed request).
    embedding_counted: bool,
}

struct State {
    loaded: HashMap<String, Resident>,
    /// Instances replaced by a reload (file or context changed) that still finish requests.
    retired: Vec<(Arc<dyn ModelInstance>, u64)>,
    /// Bytes of unloaded instances whose memory is being released right now.
    freeing: u64,
    /// Loads in progress, by model, with the bytes they reserved.
    loading: HashMap<String, u64>,
}

impl State {
    fn used(&self) -> u64 {
        self.loaded.values().map(|r| r.bytes).sum::<u64>()
            + self.retired.iter().map(|r| r.1).sum::<u64>()
            + self.freeing
            + self.loading.values().sum::<u64>()
    }
}

/// What `/api/ps` shows about a loaded model.
#[derive(Debug, Clone)]
pub struct LoadedInfo {
    pub entry: ModelEntry,
    pub context_length: u32,
    pub expires_at: SystemTime,
    /// Estimated bytes.
    pub size: u64,
    /// Requests running or waiting on it.
    pub in_flight: usize,
}

struct Inner {
    store: Arc<ModelStore>,
    backend: Arc<dyn Backend>,
    defaults: LoadSettings,
    default_keep_alive: KeepAlive,
    limits: Limits,
    state: Mutex<State>,
    /// One lock per model name: loads of one model wait for each other, not for other models.
    load_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    generations: std::sync::atomic::AtomicU64,
    /// Signalled when a lease ends or memory is freed: a waiting load may now fit.
    changed: tokio::sync::Notify,
}

/// Cheap-to-clone handle to the loaded-model table.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

/// A request's hold on a loaded model; dropping it releases the model.
pub struct ModelLease {
    pub model: Arc<dyn ModelInstance>,
    pub entry: ModelEntry,
    /// Time spent loading for this request (zero when it was already loaded).
    pub load_duration: Duration,
    inner: Arc<Inner>,
    generation: u64,
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        let name = &self.entry.name;
        if let Some(r) = state.loaded.get_mut(name).filter(|r| r.generation == self.generation) {
            r.in_flight = r.in_flight.saturating_sub(1);
            r.last_used = Instant::now();
            if r.in_flight == 0 {
                match r.keep_alive {
                    KeepAlive::For(d) if d.is_zero() => {
                        if let Some(r) = state.loaded.remove(name) {
                            free(&self.inner, &mut state, r.model, r.bytes);
                        }
                    }
                    // A duration past the clock's range is forever.
                    KeepAlive::For(d) => r.expires = Instant::now().checked_add(d),
                    KeepAlive::Forever => r.expires = None,
                }
            }
        } else {
            // A retired instance: free it once this was its last request (our Arc plus the
            // retired list's).
            if let Some(i) = state
                .retired
                .iter()
                .position(|(m, _)| Arc::ptr_eq(m, &self.model) && Arc::strong_count(m) == 2)
            {
                let (model, bytes) = state.retired.swap_remove(i);
                free(&self.inner, &mut state, model, bytes);
            }
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the state consistent, so a panic elsewhere can't corrupt it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Releases an instance off the async threads: dropping the last handle joins its worker,
/// which frees the context and the weights. Until then its bytes count as used.
fn free(inner: &Arc<Inner>, state: &mut State, model: Arc<dyn ModelInstance>, bytes: u64) {
    state.freeing += bytes;
    let inner = Arc::clone(inner);
    std::thread::spawn(move || {
        drop(model);
        return_freed_memory();
        lock(&inner.state).freeing -= bytes;
        inner.changed.notify_waiters();
    });
}

/// Takes an instance out of service: freed now if idle, else kept in `retired` (its bytes still
/// counted) until the last request on it ends.
fn retire(inner: &Arc<Inner>, state: &mut State, r: Resident) {
    if r.in_flight == 0 {
        free(inner, state, r.model, r.bytes);
    } else {
        state.retired.push((r.model, r.bytes));
    }
}

/// Hands memory freed by an unloaded model back to the OS. llama.cpp frees a model's many small
/// allocations (vocabulary tables, metadata) into glibc's per-thread arenas, which keep them;
/// loads run on different threads, so without this RSS creeps up with every model swap.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl ModelManager {
    pub fn new(store: Arc<ModelStore>, backend: Arc<dyn Backend>, defaults: LoadSettings, default_keep_alive: KeepAlive, limits: Limits) -> Self {
        ModelManager {
            inner: Arc::new(Inner {
                store,
                backend,
                defaults,
                default_keep_alive,
                limits,
                state: Mutex::new(State {
                    loaded: HashMap::new(),
                    retired: Vec::new(),
                    freeing: 0,
                    loading: HashMap::new(),
                }),
                load_locks: Mutex::new(HashMap::new()),
                generations: std::sync::atomic::AtomicU64::new(0),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<ModelStore> {
        &self.inner.store
    }

    pub fn defaults(&self) -> &LoadSettings {
        &self.inner.defaults
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Estimated bytes in use by loaded (and still-freeing) instances.
    pub fn used(&self) -> u64 {
        lock(&self.inner.state).used()
    }

    /// Leases `entry`, loading it first if needed. A `num_ctx` larger than the loaded
    /// instance's loads a new instance (requests on the old one finish there); smaller or equal
    /// is served by the loaded instance, so differing `num_ctx` values never thrash.
    pub async fn acquire(&self, entry: ModelEntry, num_ctx: Option<u32>, keep_alive: Option<KeepAlive>) -> Result<ModelLease, ResourceError> {
        self.acquire_within(entry, num_ctx, keep_alive, self.inner.limits.load_wait).await
    }

    /// `acquire`, waiting at most `load_wait` for busy models to make room (zero: a route
    /// with another target moves on at once).
    pub async fn acquire_within(&self, entry: ModelEntry, num_ctx: Option<u32>, keep_alive: Option<KeepAlive>, load_wait: Duration) -> Result<ModelLease, ResourceError> {
        let keep_alive = keep_alive.unwrap_or(self.inner.default_keep_alive);
        let wanted_ctx = num_ctx.unwrap_or(self.inner.defaults.num_ctx);
        if let Some(lease) = self.try_lease(&entry, wanted_ctx, keep_alive)? {
            return Ok(lease);
        }
        let load_lock = Arc::clone(lock(&self.inner.load_locks).entry(entry.name.clone()).or_default());
        let _one_load = load_lock.lock().await;
        if let Some(lease) = self.try_lease(&entry, wanted_ctx, keep_alive)? {
            return Ok(lease);
        }
        let mut settings = self.inner.defaults.clone();
        settings.num_ctx = wanted_ctx;
        let backend = Arc::clone(&self.inner.backend);
        let (estimate_entry, estimate_settings) = (entry.clone(), settings.clone());
        let need = tokio::task::spawn_blocking(move || backend.estimate(&estimate_entry, &estimate_settings))
            .await
            .map_err(|_| ResourceError::LoadAborted)?
            .map_err(|reason| ResourceError::BadModel { model: entry.name.clone(), reason })?;
        let budget = self.inner.limits.ram_budget;
        if need > budget {
            return Err(ResourceError::TooLarge {
                model: entry.name.clone(),
                needed: need,
                budget,
            });
        }
        let reservation = self.make_room(&entry.name, need, load_wait, Growth::NewInstance).await?;

        let started = Instant::now();
        let backend = Arc::clone(&self.inner.backend);
        let load_entry = entry.clone();
        let model = tokio::task::spawn_blocking(move || backend.load(&load_entry, settings))
            .await
            .map_err(|_| ResourceError::LoadAborted)??;
        let load_duration = started.elapsed();
        tracing::info!(model = %entry.name, n_ctx = model.n_ctx_slot(), bytes = need, "loaded in {:?}", model.load_duration());
        let generation = self.inner.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = lock(&self.inner.state);
        state.loaded.insert(
            entry.name.clone(),
            Resident {
                entry: entry.clone(),
                model: Arc::clone(&model),
                requested_ctx: wanted_ctx,
                bytes: need,
                in_flight: 1,
                last_used: Instant::now(),
                keep_alive,
                expires: None,
                generation,
                embedding_counted: false,
            },
        );
        // The instance's bytes now count in the table: the reservation can go.
        reservation.release(&mut state);
        drop(state);
        Ok(ModelLease {
            model,
            entry,
            load_duration,
            inner: Arc::clone(&self.inner),
            generation,
        })
    }

    /// Unloads idle models (least recently used first) until `need` more bytes fit, waiting
    /// for busy ones to finish when unloading the idle ones is not enough, at most
    /// `Limits::load_wait`. For a new instance, an older instance of `name` itself is retired:
    /// it finishes its requests and is then freed. The bytes are reserved for `name` until the
    /// reservation goes.
    async fn make_room(&self, name: &str, need: u64, load_wait: Duration, growth: Growth) -> Result<Reservation, ResourceError> {
        let started = Instant::now();
        let deadline = started + load_wait;
        let mut blocked_by_busy;
        loop {
            // Register interest before looking, so a change between the look and the wait
            // still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = lock(&self.inner.state);
                if growth == Growth::NewInstance {
                    if let Some(old) = state.loaded.remove(name) {
                        retire(&self.inner, &mut state, old);
                    }
                }
                // Loads in progress count as busy models: they can't be unloaded, and they
                // count against `max_loaded`.
                let candidates: Vec<Candidate> = state
                    .loaded
                    .iter()
                    .map(|(n, r)| Candidate {
                        name: n.clone(),
                        bytes: r.bytes,
                        busy: r.in_flight > 0,
                        last_used: r.last_used,
                    })
                    .chain(state.loading.iter().map(|(n, &bytes)| Candidate { name: n.clone(), bytes, busy: true, last_used: started }))
                    .collect();
                // Memory being freed will be free: count it as such, or a load that waits for
                // it would unload one more model than it needs.
                let room = Room {
                    used: state.used() - state.freeing,
                    need,
                    budget: self.inner.limits.ram_budget,
                    // A grown instance is already one of the loaded models.
                    max_loaded: self.inner.limits.max_loaded.map(|m| m + usize::from(growth == Growth::SameInstance)),
                };
                let victims = choose_evictions(&candidates, room);
                blocked_by_busy = victims.is_none();
                if let Some(victims) = victims {
                    for v in &victims {
                        tracing::info!(model = %v, "unloading to make room for {name}");
                        if let Some(r) = state.loaded.remove(v) {
                            free(&self.inner, &mut state, r.model, r.bytes);
                        }
                    }
                    // Wait until the memory of what was unloaded is actually released.
                    if state.used() + need <= self.inner.limits.ram_budget {
                        state.loading.insert(name.to_string(), need);
                        return Ok(Reservation { inner: Arc::clone(&self.inner), name: Some(name.to_string()) });
                    }
                }
            }
            // Wait for a lease to end or memory to be freed; the timer only guards against a
            // missed wake-up. Only busy models can keep a load waiting past its deadline:
            // memory being freed always comes back.
            if blocked_by_busy && Instant::now() >= deadline {
                return Err(ResourceError::NoRoom { model: name.to_string(), needed: need, waited: started.elapsed() });
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn try_lease(&self, entry: &ModelEntry, wanted_ctx: u32, keep_alive: KeepAlive) -> Result<Option<ModelLease>, ResourceError> {
        let mut state = lock(&self.inner.state);
        if state.loaded.get(&entry.name).is_some_and(|r| !r.model.is_alive()) {
            // Its worker died: requests on it have had their error; the next one loads anew.
            tracing::error!(model = %entry.name, "the model's worker has died; unloading it");
            if let Some(r) = state.loaded.remove(&entry.name) {
                retire(&self.inner, &mut state, r);
            }
            return Ok(None);
        }
        let Some(r) = state.loaded.get_mut(&entry.name) else { return Ok(None) };
        let same_file = r.entry.same_load(entry);
        if !same_file || wanted_ctx > r.requested_ctx {
            return Ok(None);
        }
        let slots = r.model.parallel() as usize;
        let waiting = r.in_flight.saturating_sub(slots);
        if waiting >= self.inner.limits.max_queue {
            return Err(ResourceError::Busy {
                model: entry.name.clone(),
                waiting,
            });
        }
        r.in_flight += 1;
        r.keep_alive = keep_alive;
        r.expires = None;
        r.last_used = Instant::now();
        Ok(Some(ModelLease {
            model: Arc::clone(&r.model),
            entry: r.entry.clone(),
            load_duration: Duration::ZERO,
            inner: Arc::clone(&self.inner),
            generation: r.generation,
        }))
    }

    /// Unloads `name` now if idle, or as soon as its requests finish.
    pub fn unload(&self, name: &str) {
        let mut state = lock(&self.inner.state);
        let idle = state.loaded.get(name).map(|r| r.in_flight == 0);
        match idle {
            Some(true) => {
                if let Some(r) = state.loaded.remove(name) {
                    free(&self.inner, &mut state, r.model, r.bytes);
                }
            }
            Some(false) => {
                if let Some(r) = state.loaded.get_mut(name) {
                    r.keep_alive = KeepAlive::For(Duration::ZERO);
                }
            }
            None => {}
        }
    }

    /// Unloads every model at shutdown and waits, up to `limit`, until their workers have
    /// ended (saving what they keep to disk). An instance a request still holds ends with it.
    pub async fn close(&self, limit: Duration) {
        let models: Vec<Arc<dyn ModelInstance>> = {
            let mut state = lock(&self.inner.state);
            let loaded: Vec<Arc<dyn ModelInstance>> = state.loaded.drain().map(|(_, r)| r.model).collect();
            loaded.into_iter().chain(state.retired.drain(..).map(|(m, _)| m)).collect()
        };
        if models.is_empty() {
            return;
        }
        let dropping = tokio::task::spawn_blocking(move || {
            drop(models);
            return_freed_memory();
        });
        if tokio::time::timeout(limit, dropping).await.is_err() {
            tracing::warn!("models still unloading after {limit:?}; exiting without them");
        }
    }

    /// Unloads every idle model whose keep-alive has run out.
    pub fn reap_expired(&self) {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        let expired: Vec<String> = state
            .loaded
            .iter()
            .filter(|(_, r)| r.in_flight == 0 && r.expires.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            tracing::info!(model = %name, "keep-alive expired; unloading");
            if let Some(r) = state.loaded.remove(&name) {
                free(&self.inner, &mut state, r.model, r.bytes);
            }
        }
    }

    /// Runs `reap_expired` every `period` until `shutdown` resolves.
    pub async fn run_reaper(self, period: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => self.reap_expired(),
                () = &mut shutdown => return,
            }
        }
    }

    pub fn loaded(&self) -> Vec<LoadedInfo> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        let mut out: Vec<LoadedInfo> = lock(&self.inner.state)
            .loaded
            .values()
            .map(|r| {
                let left = match (r.expires, r.keep_alive) {
                    (Some(t), _) => t.saturating_duration_since(now),
                    (None, KeepAlive::For(d)) => d,
                    (None, KeepAlive::Forever) => far,
                };
                LoadedInfo {
                    entry: r.entry.clone(),
                    context_length: r.model.n_ctx_slot(),
                    expires_at: wall.checked_add(left.min(far)).unwrap_or(wall),
                    size: r.bytes,
                    in_flight: r.in_flight,
                }
            })
            .collect();
        out.sort_by_key(|i| i.expires_at);
        out
    }
}

/// What `make_room` makes room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// A new instance of the model (replacing a loaded one).
    NewInstance,
    /// More bytes for the loaded instance (its embedding context).
    SameInstance,
}

/// Bytes set aside for a load in progress; given back when the instance is in the table, or
/// when the load fails (dropped).
struct Reservation {
    inner: Arc<Inner>,
    /// `None` once released.
    name: Option<String>,
}

impl Reservation {
    fn release(mut self, state: &mut State) {
        if let Some(name) = self.name.take() {
            state.loading.remove(&name);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            lock(&self.inner.state).loading.remove(&name);
            self.inner.changed.notify_waiters();
        }
    }
}
