//! The embedding context's share of the budget: llama.cpp's second context for embeddings is
//! made on a model's first embed request, so its bytes are counted then, not at the load (most
//! models never embed): `ModelManager::count_embedding`, called before each embed request.
//! Must not: make the context (the engine does, on the request) or count it twice.

use std::sync::Arc;

use super::{lock, Growth, ModelLease, ModelManager, ResourceError};

impl ModelManager {
    /// Counts the embedding context of `lease`'s instance against the budget before its first
    /// embed request makes it (it is not counted at load: most models never embed). Room is
    /// made as for a load: idle models are unloaded, busy ones waited for up to
    /// `Limits::load_wait`. Once per instance; later calls return at once.
    pub async fn count_embedding(&self, lease: &ModelLease) -> Result<(), ResourceError> {
        let name = &lease.entry.name;
        let counted = || {
            let state = lock(&self.inner.state);
            let resident = state.loaded.get(name).filter(|r| r.generation == lease.generation);
            resident.map(|r| (r.embedding_counted, r.bytes, r.requested_ctx))
        };
        if counted().is_some_and(|c| c.0) {
            return Ok(());
        }
        let load_lock = Arc::clone(lock(&self.inner.load_locks).entry(name.clone()).or_default());
        let _one_change = load_lock.lock().await;
        // A retired instance (replaced by a reload) is counted as if at the defaults' context.
        let (already, bytes, requested_ctx) = counted().unwrap_or((false, 0, self.inner.defaults.num_ctx));
        if already {
            return Ok(());
        }
        let mut settings = self.inner.defaults.clone();
        settings.num_ctx = requested_ctx;
        let backend = Arc::clone(&self.inner.backend);
        let entry = lease.entry.clone();
        let need = tokio::task::spawn_blocking(move || backend.embedding_estimate(&entry, &settings))
            .await
            .map_err(|_| ResourceError::LoadAborted)?
            .map_err(|reason| ResourceError::BadModel { model: name.clone(), reason })?;
        let budget = self.inner.limits.ram_budget;
        if bytes + need > budget {
            return Err(ResourceError::TooLarge { model: name.clone(), needed: bytes + need, budget });
        }
        let reservation = self.make_room(name, need, self.inner.limits.load_wait, Growth::SameInstance).await?;
        let mut state = lock(&self.inner.state);
        if let Some(r) = state.loaded.get_mut(name).filter(|r| r.generation == lease.generation) {
            r.bytes += need;
            r.embedding_counted = true;
        } else if let Some(r) = state.retired.iter_mut().find(|(m, _)| Arc::ptr_eq(m, &lease.model)) {
            // Each request on a retired instance counts it again: over, never under, and only
            // until the instance is freed.
            r.1 += need;
        }
        reservation.release(&mut state);
        tracing::info!(model = %name, bytes = need, "embedding context counted against the budget");
        Ok(())
    }
}
