//! The response cache: opaque bytes under 32-byte keys, kept in process memory (moka, bounded by
//! bytes and a TTL) or in Redis/KeyDB so several hearth instances share it. It owns storage,
//! expiry, the hit/miss counters and the rule that a broken Redis only ever costs a cache miss.
//! It must not know what a value means or how a key is chosen: the service layer serializes
//! responses and builds keys with `CacheKey::of`. Nothing here touches the engine or HTTP.

mod memory;
pub(crate) mod redis_store;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use memory::MemoryStore;
use redis_store::RedisStore;

/// How the response cache is configured; `ResponseCache::new` validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Whether responses are cached at all. On by default: only deterministic requests
    /// (temperature 0 or a fixed seed) are cached unless a request asks with `use_cache`.
    pub enabled: bool,
    /// How long an entry lives after it is stored.
    pub ttl: Duration,
    /// Memory backend: the most bytes all entries may hold; any backend: values over 1/8 are skipped.
    pub max_bytes: u64,
    /// `redis://host:port/db` or `unix:///path.sock`: use Redis/KeyDB instead of process memory.
    pub redis_url: Option<String>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60 * 60),
            max_bytes: 256 * 1024 * 1024,
            redis_url: None,
        }
    }
}

/// What can go wrong in the cache subsystem.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configured Redis URL cannot be used; found at start, before any request.
    #[error(
        "cache redis_url {url} is not usable: {reason}; expected redis://[:password@]host[:port][/db] or unix:///path/to/redis.sock"
    )]
    InvalidRedisUrl {
        /// The URL with any password masked.
        url: String,
        /// What the redis client said about it.
        reason: String,
    },
    /// A setting is out of range.
    #[error("cache setting {setting} is invalid: {reason}")]
    InvalidSetting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Redis could not be reached or answered with an error during an explicit operation.
    #[error("redis cache unavailable: {0}")]
    Unavailable(String),
}

/// A cache key: sha256 over length-prefixed parts, so part boundaries matter.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key for these parts; ("ab","c") and ("a","bc") give different keys.
    pub fn of(parts: &[&[u8]]) -> CacheKey {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        CacheKey(hasher.finalize().into())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The stored bytes.
    Hit(Bytes),
    /// Nothing stored under the key (or the cache is disabled).
    Miss,
    /// The backend could not answer in time; the request should go on without the cache.
    Unavailable,
}

/// Counters and usage since start, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStats {
    /// "memory", "redis" or "disabled".
    pub backend: &'static str,
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Lookups that bypassed the cache because Redis failed, timed out or was in its down window.
    pub unavailable: u64,
    /// Values stored.
    pub stores: u64,
    /// Stores that failed (Redis down or erroring); the value was dropped.
    pub store_errors: u64,
    /// Values not stored because they were larger than `max_bytes / 8`.
    pub oversized: u64,
    /// Entries held now (memory backend only; eventually consistent).
    pub entries: Option<u64>,
    /// Bytes held now, keys included (memory backend only; eventually consistent).
    pub bytes: Option<u64>,
}

/// The cache's health for /health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHealth {
    /// "memory", "redis" or "disabled".
    pub backend: &'static str,
    /// Whether the backend answers now (always true for memory and disabled).
    pub reachable: bool,
    /// Why it is unreachable, when it is.
    pub detail: Option<String>,
}

/// A cheap-to-clone handle on the one response cache of this process.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Values longer than this are not stored: one response must not crowd out the rest.
    max_value_bytes: u64,
    counters: Counters,
}

enum Backend {
    Disabled,
    Memory(MemoryStore),
    // Boxed: the Redis store is several times the size of the others.
    Redis(Box<RedisStore>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Disabled => "disabled",
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    unavailable: AtomicU64,
    stores: AtomicU64,
    store_errors: AtomicU64,
    oversized: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ResponseCache {
    /// Builds the cache; a bad setting or Redis URL is an error now, an unreachable Redis is not.
    pub fn new(settings: &CacheSettings) -> Result<ResponseCache, CacheError> {
        let backend = if !settings.enabled {
            Backend::Disabled
        } else {
            if settings.ttl.is_zero() {
                return Err(CacheError::InvalidSetting {
                    setting: "ttl",
                    reason: "must be longer than zero",
                });
            }
            if settings.max_bytes == 0 {
                return Err(CacheError::InvalidSetting {
                    setting: "max_bytes",
                    reason: "must be more than zero",
                });
            }
            match &settings.redis_url {
                None => Backend::Memory(MemoryStore::new(settings.max_bytes, settings.ttl)),
                Some(url) => {
                    let store = RedisStore::new(url, settings.ttl).map_err(|error| {
                        CacheError::InvalidRedisUrl {
                            url: mask_password(url),
                            reason: error.to_string(),
                        }
                    })?;
                    Backend::Redis(Box::new(store))
                }
            }
        };
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                backend,
                max_value_bytes: settings.max_bytes / 8,
                counters: Counters::default(),
            }),
        })
    }

    /// A cache that stores nothing.
    pub fn disabled() -> ResponseCache {
        ResponseCache {
            inner: Arc::new(Inner {
                backend: Backend::Disabled,
                max_value_bytes: 0,
                counters: Counters::default(),
            }),
        }
    }

    /// Looks a key up; never fails, and with Redis down answers `Unavailable` within ~250 ms.
    pub async fn get(&self, key: &CacheKey) -> Lookup {
        let counters = &self.inner.counters;
        let found = match &self.inner.backend {
            Backend::Disabled => return Lookup::Miss,
            Backend::Memory(store) => store.get(key).await,
            Backend::Redis(store) => match store.get(key).await {
                Ok(found) => found,
                Err(failure) => {
                    tracing::debug!(%failure, "response cache lookup bypassed");
                    bump(&counters.unavailable);
                    return Lookup::Unavailable;
                }
            },
        };
        match found {
            Some(bytes) => {
                bump(&counters.hits);
                Lookup::Hit(bytes)
            }
            None => {
                bump(&counters.misses);
                Lookup::Miss
            }
        }
    }

    /// Stores a value for the TTL; failures are counted, not returned, and oversized values skipped.
    pub async fn put(&self, key: &CacheKey, value: Vec<u8>) {
        let counters = &self.inner.counters;
        if matches!(self.inner.backend, Backend::Disabled) {
            return;
        }
        if value.len() as u64 > self.inner.max_value_bytes {
            bump(&counters.oversized);
            return;
        }
        match &self.inner.backend {
            Backend::Disabled => {}
            Backend::Memory(store) => {
                store.put(*key, Bytes::from(value)).await;
                bump(&counters.stores);
            }
            Backend::Redis(store) => match store.put(key, &value).await {
                Ok(()) => bump(&counters.stores),
                Err(failure) => {
                    tracing::debug!(%failure, "response cache store dropped");
                    bump(&counters.store_errors);
                }
            },
        }
    }

    /// Removes every entry this cache holds and returns how many; Redis keys of others are kept.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        match &self.inner.backend {
            Backend::Disabled => Ok(0),
            Backend::Memory(store) => Ok(store.clear().await),
            Backend::Redis(store) => store
                .clear()
                .await
                .map_err(|failure| CacheError::Unavailable(failure.to_string())),
        }
    }

    /// Counters since start and current usage.
    pub fn stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        let (entries, bytes) = match &self.inner.backend {
            Backend::Memory(store) => {
                let (entries, bytes) = store.usage();
                (Some(entries), Some(bytes))
            }
            Backend::Disabled | Backend::Redis(_) => (None, None),
        };
        CacheStats {
            backend: self.inner.backend.name(),
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            unavailable: counters.unavailable.load(Ordering::Relaxed),
            stores: counters.stores.load(Ordering::Relaxed),
            store_errors: counters.store_errors.load(Ordering::Relaxed),
            oversized: counters.oversized.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// The backend's name and whether it answers now (Redis: a PING under a short timeout).
    pub async fn status(&self) -> CacheHealth {
        let backend = self.inner.backend.name();
        match &self.inner.backend {
            Backend::Disabled | Backend::Memory(_) => CacheHealth {
                backend,
                reachable: true,
                detail: None,
            },
            Backend::Redis(store) => match store.ping().await {
                Ok(()) => CacheHealth {
                    backend,
                    reachable: true,
                    detail: None,
                },
                Err(failure) => CacheHealth {
                    backend,
                    reachable: false,
                    detail: Some(failure.to_string()),
                },
            },
        }
    }

    /// "memory", "redis" or "disabled".
    pub fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Lets moka finish pending evictions so `stats` is exact.
    #[cfg(test)]
    async fn settle(&self) {
        if let Backend::Memory(store) = &self.inner.backend {
            store.settle().await;
        }
    }
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("backend", &self.backend())
            .finish()
    }
}

/// The URL with its password replaced, so an error message can be logged safely.
fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |offset| authority_start + offset);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let user_info = &authority[..at];
    let user = user_info.split(':').next().unwrap_or_default();
    format!(
        "{}{user}:***{}",
        &url[..authority_start],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests;
