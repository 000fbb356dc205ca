//! API keys' rate limits counted in Redis, so several hearth fronts enforce one key's limits
//! together: the same buckets as `accounts` (requests per minute, tokens per minute and per
//! day, refilling continuously, tokens may go into debt), kept as Redis hashes under
//! `hearth:limit:v1:<key name>:<limit>` and changed by one Lua script per call, which reads
//! Redis's own clock, so the fronts' clocks need not agree. A bucket left alone until it would
//! be full again expires.
//!
//! While Redis can't be reached, each front falls back to its own buckets (`Account::admit`):
//! a key then gets up to its limit per front, never nothing. Must not: store a key or its
//! hash (buckets are named by the key's configured name), or make a request wait on a dead
//! Redis longer than the cache's connection's own timeouts.

use std::time::Duration;

use super::accounts::{Limits, Refusal};
use crate::cache::redis_store::{RedisFailure, RedisStore};

/// Checks every bucket (refilled to Redis's clock); if each has what the call needs, takes
/// from each what the call takes and answers {0, 0}; else changes nothing and answers {i,
/// milliseconds} for the bucket that must wait longest. ARGV: then four values per key:
/// capacity, refill per millisecond, need, take.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local worst, worst_wait = 0, 0
for i, key in ipairs(KEYS) do
  local cap, rate, need = tonumber(ARGV[i*4-3]), tonumber(ARGV[i*4-2]), tonumber(ARGV[i*4-1])
  local v = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(v[1]) or cap
  local at = tonumber(v[2]) or now
  if now > at then level = math.min(cap, level + (now - at) * rate) end
  levels[i] = level
  if level < need then
    local wait = 86400000
    if rate > 0 then wait = math.min(wait, math.ceil((need - level) / rate)) end
    if wait > worst_wait then worst, worst_wait = i, wait end
  end
end
if worst > 0 then return {worst, worst_wait} end
for i, key in ipairs(KEYS) do
  local cap, rate, take = tonumber(ARGV[i*4-3]), tonumber(ARGV[i*4-2]), tonumber(ARGV[i*4])
  redis.call('HSET', key, 'level', tostring(levels[i] - take), 'at', now)
  local full = 86400000
  if rate > 0 then full = math.ceil(cap / rate) end
  redis.call('PEXPIRE', key, full + 60000)
end
return {0, 0}
";

/// What a token bucket needs before a request: to be out of debt.
const OUT_OF_DEBT: f64 = 1e-6;
/// What taking tokens needs: nothing (a bucket may go into debt).
const NO_NEED: f64 = -1e300;

/// One key's limits as buckets: (name in Redis, what a refusal names, capacity, refill per
/// millisecond, whether it counts requests rather than tokens).
fn buckets(limits: &Limits) -> Vec<(&'static str, &'static str, f64, f64, bool)> {
    let per_ms = |n: u64, period_ms: f64| n as f64 / period_ms;
    let mut out = Vec::new();
    if let Some(n) = limits.rpm {
        out.push(("rpm", "requests per minute", n as f64, per_ms(n, 60_000.0), true));
    }
    if let Some(n) = limits.tpm {
        out.push(("tpm", "tokens per minute", n as f64, per_ms(n, 60_000.0), false));
    }
    if let Some(n) = limits.tpd {
        out.push(("tpd", "tokens per day", n as f64, per_ms(n, 86_400_000.0), false));
    }
    out
}

/// Rate limits shared through Redis.
pub struct SharedLimits {
    redis: RedisStore,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedLimits")
    }
}

impl SharedLimits {
    /// Parses the URL now; connects on first use.
    pub(crate) fn new(url: &str) -> Result<SharedLimits, String> {
        let redis = RedisStore::new(url, Duration::from_secs(60)).map_err(|e| format!("invalid Redis URL for the shared rate limits: {e}"))?;
        Ok(SharedLimits { redis })
    }

    /// Admits one request of key `name` (taking a request), or says how long it must wait.
    pub(crate) async fn admit(&self, name: &str, limits: &Limits) -> Result<Result<(), Refusal>, RedisFailure> {
        let b = buckets(limits);
        if b.is_empty() {
            return Ok(Ok(()));
        }
        let args = b.iter().flat_map(|&(_, _, cap, rate, requests)| if requests { [cap, rate, 1.0, 1.0] } else { [cap, rate, OUT_OF_DEBT, 0.0] });
        let reply = self.call(name, &b, args).await?;
        Ok(match reply.as_slice() {
            [0, ..] => Ok(()),
            [i, wait, ..] => Err(Refusal {
                limit: b.get((*i as usize).saturating_sub(1)).map_or("rate limit", |x| x.1),
                retry_after: Duration::from_millis((*wait).max(1) as u64),
            }),
            _ => Err(Refusal { limit: "rate limit", retry_after: Duration::from_secs(1) }),
        })
    }

    /// Takes a finished answer's tokens from key `name`'s token buckets.
    pub(crate) async fn take_tokens(&self, name: &str, limits: &Limits, tokens: u64) -> Result<(), RedisFailure> {
        let b: Vec<_> = buckets(limits).into_iter().filter(|x| !x.4).collect();
        if b.is_empty() || tokens == 0 {
            return Ok(());
        }
        let args = b.iter().flat_map(|&(_, _, cap, rate, _)| [cap, rate, NO_NEED, tokens as f64]);
        self.call(name, &b, args).await.map(|_| ())
    }

    async fn call(&self, name: &str, b: &[(&'static str, &'static str, f64, f64, bool)], args: impl Iterator<Item = f64>) -> Result<Vec<i64>, RedisFailure> {
        let keys: Vec<String> = b.iter().map(|x| format!("hearth:limit:v1:{name}:{}", x.0)).collect();
        let args: Vec<String> = args.map(|a| format!("{a:e}")).collect();
        self.redis.eval(SCRIPT, &keys, &args).await
    }
}
