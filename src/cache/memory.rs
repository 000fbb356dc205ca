//! The in-process backend: a moka cache bounded by the bytes its entries hold and by a
//! time-to-live. It owns nothing but that map; counting hits and deciding what is too large to
//! store are the caller's (`cache::ResponseCache`) business.

use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

use super::CacheKey;

/// Size-bounded, TTL-bounded map from keys to response bytes.
pub(super) struct MemoryStore {
    map: Cache<CacheKey, Bytes>,
}

impl MemoryStore {
    /// A store that keeps at most `max_bytes` (keys included) for at most `ttl` each.
    pub(super) fn new(max_bytes: u64, ttl: Duration) -> MemoryStore {
        let map = Cache::builder()
            .max_capacity(max_bytes)
            // moka weighs in u32; a value past 4 GiB is refused by the caller long before this.
            .weigher(|_key: &CacheKey, value: &Bytes| {
                u32::try_from(entry_weight(value.len())).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        MemoryStore { map }
    }

    pub(super) async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.map.get(key).await
    }

    pub(super) async fn put(&self, key: CacheKey, value: Bytes) {
        self.map.insert(key, value).await;
    }

    /// Removes every entry and says how many there were.
    pub(super) async fn clear(&self) -> u64 {
        // Removing key by key (rather than invalidate_all) gives an exact count of what went.
        let keys: Vec<CacheKey> = self.map.iter().map(|(key, _)| *key).collect();
        let mut removed = 0;
        for key in keys {
            if self.map.remove(&key).await.is_some() {
                removed += 1;
            }
        }
        self.map.run_pending_tasks().await;
        removed
    }

    /// Entry count and weighted bytes as moka last accounted them (eventually consistent).
    pub(super) fn usage(&self) -> (u64, u64) {
        (self.map.entry_count(), self.map.weighted_size())
    }

    /// Applies pending evictions and bookkeeping so `usage` is exact.
    #[cfg(test)]
    pub(super) async fn settle(&self) {
        self.map.run_pending_tasks().await;
    }
}

/// What one entry costs against `max_bytes`: its value plus its key.
pub(super) fn entry_weight(value_len: usize) -> u64 {
    (value_len as u64).saturating_add(std::mem::size_of::<CacheKey>() as u64)
}
