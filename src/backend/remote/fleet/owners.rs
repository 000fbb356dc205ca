//! Which node of a fleet served each prefix last, for `cache_aware`: running hashes of a
//! request's prefixes (`prefix_keys`) mapped to a node's URL, in this front's memory and, when
//! the fleet has a Redis (`cache.redis_url`), in Redis under `hearth:fleet:v1:<fleet>:<key>`,
//! so that several fronts send one conversation to one node. Redis is asked first; while it
//! can't answer, this front's own memory decides. A record goes to Redis in the background:
//! a request never waits for it.
//!
//! Must not: keep a prompt's text (only 64-bit hashes), or make a request fail because Redis
//! did.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::PromptSpec;
use crate::cache::redis_store::RedisStore;

/// How long Redis keeps a prefix's node: a node's saved KV is long gone by then.
const SHARED_FOR: Duration = Duration::from_secs(6 * 3600);

/// Sets every key to the node's URL with the expiry, in one round trip.
const RECORD_SCRIPT: &str = "for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1], 'EX', ARGV[2]) end return {}";

/// Prefix hashes remembered (about 16 bytes of map each, plus the node's URL shared).
pub(super) const OWNERS_KEPT: usize = 200_000;
/// A generate prompt is compared in pieces of this many bytes.
const PIECE: usize = 1024;

/// Which node served each prefix last, oldest forgotten first.
#[derive(Default)]
pub(super) struct Owners {
    pub(super) map: HashMap<u64, (Arc<str>, u64)>,
    pub(super) order: VecDeque<(u64, u64)>,
    stamp: u64,
}

impl Owners {
    /// The node that served the longest of `keys` (each key a longer prefix than the last).
    pub(super) fn owner(&self, keys: &[u64]) -> Option<Arc<str>> {
        keys.iter().rev().find_map(|k| self.map.get(k).map(|(url, _)| Arc::clone(url)))
    }

    pub(super) fn record(&mut self, keys: &[u64], url: &str) {
        let url: Arc<str> = Arc::from(url);
        for &k in keys {
            self.stamp += 1;
            self.map.insert(k, (Arc::clone(&url), self.stamp));
            self.order.push_back((k, self.stamp));
        }
        while self.map.len() > OWNERS_KEPT {
            let Some((k, stamp)) = self.order.pop_front() else { break };
            // Only the key's latest record counts: an older one in the queue is stale.
            if self.map.get(&k).is_some_and(|(_, s)| *s == stamp) {
                self.map.remove(&k);
            }
        }
        // Stale records left in the queue are dropped once it is twice the map.
        if self.order.len() > 2 * OWNERS_KEPT.max(self.map.len()) {
            let map = &self.map;
            self.order.retain(|(k, stamp)| map.get(k).is_some_and(|(_, s)| s == stamp));
        }
    }
}

/// Running hashes of a prompt's prefixes, shortest first: one per chat message, or per 1 KiB
/// of a generate prompt. Two requests share a key exactly when they share that prefix (and
/// the model, tools and system prompt).
pub(super) fn prefix_keys(model: &str, prompt: &PromptSpec) -> Vec<u64> {
    let mut h = DefaultHasher::new();
    model.hash(&mut h);
    let mut keys = Vec::new();
    match prompt {
        PromptSpec::Chat { messages, tools } => {
            serde_json::to_string(tools).unwrap_or_default().hash(&mut h);
            for m in messages {
                m.role.hash(&mut h);
                m.content.hash(&mut h);
                keys.push(h.finish());
            }
        }
        PromptSpec::Generate { prompt, system, template, raw, .. } => {
            (system, template, raw).hash(&mut h);
            for piece in prompt.as_bytes().chunks(PIECE) {
                piece.hash(&mut h);
                keys.push(h.finish());
            }
        }
    }
    keys
}

/// The owners of one fleet's prefixes: this front's, and the fronts' together in Redis.
pub(super) struct PrefixOwners {
    fleet: String,
    local: Mutex<Owners>,
    shared: Option<Arc<RedisStore>>,
}

impl PrefixOwners {
    pub(super) fn new(fleet: &str, redis_url: Option<&str>) -> Result<PrefixOwners, String> {
        let shared = match redis_url {
            Some(url) => Some(Arc::new(RedisStore::new(url, SHARED_FOR).map_err(|e| format!("fleet {fleet}: redis: {e}"))?)),
            None => None,
        };
        Ok(PrefixOwners { fleet: fleet.to_string(), local: Mutex::default(), shared })
    }

    pub(super) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn redis_key(&self, key: u64) -> String {
        format!("hearth:fleet:v1:{}:{key:016x}", self.fleet)
    }

    /// The node that served the longest of `keys` last, as Redis has it, else as this front
    /// remembers.
    pub(super) async fn owner(&self, keys: &[u64]) -> Option<Arc<str>> {
        if let (Some(redis), false) = (&self.shared, keys.is_empty()) {
            let names: Vec<String> = keys.iter().map(|k| self.redis_key(*k)).collect();
            match redis.get_many(&names).await {
                Ok(found) => {
                    if let Some(url) = found.into_iter().rev().flatten().next() {
                        return Some(Arc::from(url));
                    }
                }
                Err(e) => tracing::debug!(fleet = %self.fleet, "prefix owners from redis: {e}"),
            }
        }
        self.local.lock().unwrap_or_else(PoisonError::into_inner).owner(keys)
    }

    /// `url` served `keys`: remembered here now, and in Redis in the background.
    pub(super) fn record(&self, keys: &[u64], url: &str) {
        self.local.lock().unwrap_or_else(PoisonError::into_inner).record(keys, url);
        let (Some(redis), Ok(rt)) = (&self.shared, tokio::runtime::Handle::try_current()) else { return };
        if keys.is_empty() {
            return;
        }
        let names: Vec<String> = keys.iter().map(|k| self.redis_key(*k)).collect();
        let args = vec![url.to_string(), SHARED_FOR.as_secs().to_string()];
        let (redis, fleet) = (Arc::clone(redis), self.fleet.clone());
        rt.spawn(async move {
            if let Err(e) = redis.eval(RECORD_SCRIPT, &names, &args).await {
                tracing::debug!(fleet = %fleet, "could not share prefix owners through redis: {e}");
            }
        });
    }
}
