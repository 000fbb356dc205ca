//! Which models are loaded, and for how long: loads on demand, shares one instance between
//! requests, and unloads a model when its keep-alive runs out.
//!
//! A request holds a `ModelLease`; while any lease on an instance is alive it is never unloaded
//! under it, and dropping the lease (also when the client goes away) starts the keep-alive
//! clock. Loads are serialised, so two requests for one unloaded model load it once.
//! (The RAM budget arrives with the resource-manager issue; this module is where it goes.)

pub mod keep_alive;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::engine::{EngineError, LoadSettings, LoadedModel};
use crate::store::{ModelEntry, ModelStore, StoreError};
pub use keep_alive::KeepAlive;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model load was interrupted")]
    LoadAborted,
}

/// A loaded instance and its bookkeeping.
struct Resident {
    entry: ModelEntry,
    model: Arc<LoadedModel>,
    /// Context size asked for when loading (before clamping to the model).
    requested_ctx: u32,
    in_flight: usize,
    keep_alive: KeepAlive,
    /// When it will be unloaded if nothing uses it; `None` while in use or kept forever.
    expires: Option<Instant>,
    /// Bumped on each (re)load so a stale lease can't touch a newer instance's counters.
    generation: u64,
}

/// What `/api/ps` shows about a loaded model.
#[derive(Debug, Clone)]
pub struct LoadedInfo {
    pub entry: ModelEntry,
    pub context_length: u32,
    pub expires_at: SystemTime,
}

struct Inner {
    store: Arc<ModelStore>,
    defaults: LoadSettings,
    default_keep_alive: KeepAlive,
    loaded: Mutex<HashMap<String, Resident>>,
    load_lock: tokio::sync::Mutex<()>,
    generations: std::sync::atomic::AtomicU64,
}

/// Cheap-to-clone handle to the loaded-model table.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

/// A request's hold on a loaded model; dropping it releases the model.
pub struct ModelLease {
    pub model: Arc<LoadedModel>,
    pub entry: ModelEntry,
    /// Time spent loading for this request (zero when it was already loaded).
    pub load_duration: Duration,
    inner: Arc<Inner>,
    generation: u64,
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        let mut loaded = lock(&self.inner.loaded);
        let name = &self.entry.name;
        let Some(r) = loaded.get_mut(name).filter(|r| r.generation == self.generation) else {
            return;
        };
        r.in_flight = r.in_flight.saturating_sub(1);
        if r.in_flight == 0 {
            match r.keep_alive {
                KeepAlive::For(d) if d.is_zero() => {
                    loaded.remove(name);
                }
                KeepAlive::For(d) => r.expires = Some(Instant::now() + d),
                KeepAlive::Forever => r.expires = None,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the map consistent, so a panic elsewhere can't corrupt it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ModelManager {
    pub fn new(store: Arc<ModelStore>, defaults: LoadSettings, default_keep_alive: KeepAlive) -> Self {
        ModelManager {
            inner: Arc::new(Inner {
                store,
                defaults,
                default_keep_alive,
                loaded: Mutex::new(HashMap::new()),
                load_lock: tokio::sync::Mutex::new(()),
                generations: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn store(&self) -> &Arc<ModelStore> {
        &self.inner.store
    }

    pub fn defaults(&self) -> &LoadSettings {
        &self.inner.defaults
    }

    /// Leases `entry`, loading it first if needed. `num_ctx` larger than the loaded instance's
    /// context loads a new instance (requests on the old one finish there); smaller or equal is
    /// served by the loaded instance, so differing `num_ctx` values never thrash.
    pub async fn acquire(&self, entry: ModelEntry, num_ctx: Option<u32>, keep_alive: Option<KeepAlive>) -> Result<ModelLease, ResourceError> {
        let keep_alive = keep_alive.unwrap_or(self.inner.default_keep_alive);
        let wanted_ctx = num_ctx.unwrap_or(self.inner.defaults.num_ctx);
        if let Some(lease) = self.try_lease(&entry, wanted_ctx, keep_alive) {
            return Ok(lease);
        }
        let _guard = self.inner.load_lock.lock().await;
        if let Some(lease) = self.try_lease(&entry, wanted_ctx, keep_alive) {
            return Ok(lease);
        }
        let started = Instant::now();
        let mut settings = self.inner.defaults.clone();
        settings.num_ctx = wanted_ctx;
        let path = entry.path.clone();
        let model = tokio::task::spawn_blocking(move || LoadedModel::load(&path, settings))
            .await
            .map_err(|_| ResourceError::LoadAborted)??;
        tracing::info!(model = %entry.name, n_ctx = model.n_ctx_slot, "loaded in {:?}", model.load_duration);
        let model = Arc::new(model);
        let generation = self.inner.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut loaded = lock(&self.inner.loaded);
        loaded.insert(
            entry.name.clone(),
            Resident {
                entry: entry.clone(),
                model: Arc::clone(&model),
                requested_ctx: wanted_ctx,
                in_flight: 1,
                keep_alive,
                expires: None,
                generation,
            },
        );
        Ok(ModelLease {
            model,
            entry,
            load_duration: started.elapsed(),
            inner: Arc::clone(&self.inner),
            generation,
        })
    }

    fn try_lease(&self, entry: &ModelEntry, wanted_ctx: u32, keep_alive: KeepAlive) -> Option<ModelLease> {
        let mut loaded = lock(&self.inner.loaded);
        let r = loaded.get_mut(&entry.name)?;
        let same_file = r.entry.path == entry.path && r.entry.modified == entry.modified && r.entry.size == entry.size;
        if !same_file || wanted_ctx > r.requested_ctx {
            return None;
        }
        r.in_flight += 1;
        r.keep_alive = keep_alive;
        r.expires = None;
        Some(ModelLease {
            model: Arc::clone(&r.model),
            entry: r.entry.clone(),
            load_duration: Duration::ZERO,
            inner: Arc::clone(&self.inner),
            generation: r.generation,
        })
    }

    /// Unloads `name` now if idle, or as soon as its requests finish.
    pub fn unload(&self, name: &str) {
        let mut loaded = lock(&self.inner.loaded);
        if let Some(r) = loaded.get_mut(name) {
            if r.in_flight == 0 {
                loaded.remove(name);
            } else {
                r.keep_alive = KeepAlive::For(Duration::ZERO);
            }
        }
    }

    /// Unloads every idle model whose keep-alive has run out.
    pub fn reap_expired(&self) {
        let now = Instant::now();
        lock(&self.inner.loaded).retain(|name, r| {
            let expired = r.in_flight == 0 && r.expires.is_some_and(|t| t <= now);
            if expired {
                tracing::info!(model = %name, "keep-alive expired; unloading");
            }
            !expired
        });
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
        let mut out: Vec<LoadedInfo> = lock(&self.inner.loaded)
            .values()
            .map(|r| {
                let left = match (r.expires, r.keep_alive) {
                    (Some(t), _) => t.saturating_duration_since(now),
                    (None, KeepAlive::For(d)) => d,
                    (None, KeepAlive::Forever) => far,
                };
                LoadedInfo {
                    entry: r.entry.clone(),
                    context_length: r.model.n_ctx_slot,
                    expires_at: wall + left,
                }
            })
            .collect();
        out.sort_by_key(|i| i.expires_at);
        out
    }
}
