//! API keys as the service sees them: who is asking (`Account`), what they may do (`Scope`),
//! how fast (`Limits`), and what they used. The HTTP edge (`api::auth`) finds the account from
//! the presented key and checks its scope; the service counts tokens and cost on it when an
//! answer finishes, so the per-key limits see every token, cache hits included.
//!
//! Limits are buckets that refill continuously: `rpm` requests per minute, `tpm` tokens per
//! minute, `tpd` tokens per rolling day. A request is admitted while its key has a request left
//! and its token buckets are not in debt; tokens are known only when an answer ends, so a long
//! answer may take a bucket below zero and the key waits until it refills. A refusal says when
//! to come back (`Retry-After`). With Redis configured the buckets live there
//! (`shared_limits`), so every front counts against one; these stay the fallback while Redis
//! is down. Must not: hold the key itself (only its SHA-256 lives in the
//! config and in memory), or block (one short mutex per account).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a key may do. `Admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Generate and chat (Ollama, OpenAI, the seed routes), conversations, templates, personas.
    Generate,
    /// Embeddings.
    Embed,
    /// List and show models, what is loaded.
    ModelsRead,
    /// Pull, create, copy, delete models; upload blobs.
    ModelsWrite,
    /// `/metrics` and `/api/metrics` (a scraper's key).
    Metrics,
    /// Config reload, cache clear, stored profiles, every key's usage; and every other scope.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [Scope::Generate, Scope::Embed, Scope::ModelsRead, Scope::ModelsWrite, Scope::Metrics, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Generate => "generate",
            Scope::Embed => "embed",
            Scope::ModelsRead => "models:read",
            Scope::ModelsWrite => "models:write",
            Scope::Metrics => "metrics",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown scope {s:?} (known: {})", known.join(", "))
        })
    }
}

/// A key's rate limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub tpd: Option<u64>,
}

/// One configured key: its name, the SHA-256 of the key, scopes and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    pub limits: Limits,
}

/// The SHA-256 of a presented key. Keys are long random strings, so a plain hash is enough
/// (nothing to brute-force), and it costs about a microsecond per request.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A fresh key: 256 random bits, hex, with a prefix that says what it is.
pub fn new_key() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let c = uuid::Uuid::new_v4();
    let hex: String = [a, b, c].iter().map(|u| u.simple().to_string()).collect();
    format!("hth_{}", &hex[..64])
}

/// A key's identity, scopes, limits and usage while the server runs.
#[derive(Debug)]
pub struct Account {
    pub name: String,
    scopes: Vec<Scope>,
    limits: Limits,
    state: Mutex<State>,
    /// The buckets in Redis, when configured.
    shared: Option<Arc<super::shared_limits::SharedLimits>>,
    /// Where usage is also counted for every server sharing it (a PostgreSQL store).
    ledger: Option<crate::conversations::ConversationStore>,
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    minute_tokens: Option<Bucket>,
    day_tokens: Option<Bucket>,
    usage: Usage,
}

/// What a key has used since the server started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub requests: u64,
    /// Requests refused with 429.
    pub limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

impl Account {
    pub fn new(spec: &KeySpec, now: Instant) -> Account {
        let bucket = |per: Option<u64>, period: u64| per.map(|n| Bucket::full(n as f64, n as f64 / period as f64, now));
        Account {
            name: spec.name.clone(),
            scopes: spec.scopes.clone(),
            limits: spec.limits,
            state: Mutex::new(State {
                requests: bucket(spec.limits.rpm, 60),
                minute_tokens: bucket(spec.limits.tpm, 60),
                day_tokens: bucket(spec.limits.tpd, 86_400),
                usage: Usage::default(),
            }),
            shared: None,
            ledger: None,
        }
    }

    /// The same account counting its usage in a shared database too.
    pub fn counted_in(mut self, ledger: Option<crate::conversations::ConversationStore>) -> Account {
        self.ledger = ledger;
        self
    }

    /// Adds to the shared usage, in the background (a slow database never delays a request).
    fn to_ledger(&self, usage: crate::conversations::KeyUsage) {
        if let Some(ledger) = self.ledger.clone() {
            let name = self.name.clone();
            in_background(async move {
                if let Err(e) = ledger.add_key_usage(&name, usage).await {
                    tracing::debug!(key = %name, "usage not counted in the database: {e}");
                }
            });
        }
    }

    /// The same account counting its limits in Redis.
    pub fn sharing(mut self, shared: Option<Arc<super::shared_limits::SharedLimits>>) -> Account {
        self.shared = shared;
        self
    }

    /// The same key after a config reload: new scopes and limits, usage and buckets kept.
    pub fn carried_over(&self, spec: &KeySpec, now: Instant) -> Account {
        let fresh = Account::new(spec, now).sharing(self.shared.clone()).counted_in(self.ledger.clone());
        {
            let old = self.lock();
            let mut new = fresh.lock();
            new.usage = old.usage.clone();
            if self.limits == spec.limits {
                new.requests = old.requests;
                new.minute_tokens = old.minute_tokens;
                new.day_tokens = old.day_tokens;
            }
        }
        fresh
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Admits one request, or says how long until the key may ask again (and which limit).
    pub fn admit(&self, now: Instant) -> Result<(), Refusal> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut wait: Option<Refusal> = None;
        for (bucket, limit, need) in [(&mut s.requests, "requests per minute", 1.0), (&mut s.minute_tokens, "tokens per minute", f64::MIN_POSITIVE), (&mut s.day_tokens, "tokens per day", f64::MIN_POSITIVE)] {
            if let Some(b) = bucket {
                let w = b.wait_for(need, now);
                if !w.is_zero() && wait.as_ref().is_none_or(|r| w > r.retry_after) {
                    wait = Some(Refusal { limit, retry_after: w });
                }
            }
        }
        if let Some(refusal) = wait {
            s.usage.limited += 1;
            return Err(refusal);
        }
        if let Some(b) = &mut s.requests {
            b.take(1.0, now);
        }
        s.usage.requests += 1;
        Ok(())
    }

    /// Admits one request against the buckets in Redis when there are any (and Redis
    /// answers), else against this server's own.
    pub async fn admit_anywhere(&self) -> Result<(), Refusal> {
        let verdict = self.admit_shared_or_here().await;
        self.to_ledger(if verdict.is_ok() { (1, 0, 0, 0, 0.0) } else { (0, 1, 0, 0, 0.0) });
        verdict
    }

    async fn admit_shared_or_here(&self) -> Result<(), Refusal> {
        let Some(shared) = &self.shared else { return self.admit(Instant::now()) };
        match shared.admit(&self.name, &self.limits).await {
            Ok(verdict) => {
                let mut s = self.lock();
                match verdict {
                    Ok(()) => s.usage.requests += 1,
                    Err(_) => s.usage.limited += 1,
                }
                verdict
            }
            Err(e) => {
                tracing::debug!(key = %self.name, "shared rate limits unavailable, counting here: {e}");
                self.admit(Instant::now())
            }
        }
    }

    /// Counts a finished answer's tokens on `model`: in the key's metrics (which price them)
    /// and in its limits and usage (in Redis too, when the limits are shared).
    pub fn charge(&self, metrics: &crate::metrics::Metrics, model: &str, prompt_tokens: u64, completion_tokens: u64) {
        let cost = metrics.record_key_usage(&self.name, model, prompt_tokens, completion_tokens);
        self.record(prompt_tokens, completion_tokens, cost, Instant::now());
        self.to_ledger((0, 0, i64::try_from(prompt_tokens).unwrap_or(i64::MAX), i64::try_from(completion_tokens).unwrap_or(i64::MAX), cost));
        if let Some(shared) = self.shared.clone() {
            let (name, limits, tokens) = (self.name.clone(), self.limits, prompt_tokens.saturating_add(completion_tokens));
            in_background(async move {
                if let Err(e) = shared.take_tokens(&name, &limits, tokens).await {
                    tracing::debug!(key = %name, "tokens not counted in the shared rate limits: {e}");
                }
            });
        }
    }

    /// Counts a finished answer's tokens and cost.
    pub fn record(&self, prompt_tokens: u64, completion_tokens: u64, cost: f64, now: Instant) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let tokens = prompt_tokens.saturating_add(completion_tokens) as f64;
        for b in [&mut s.minute_tokens, &mut s.day_tokens].into_iter().flatten() {
            b.take(tokens, now);
        }
        s.usage.prompt_tokens += prompt_tokens;
        s.usage.completion_tokens += completion_tokens;
        s.usage.cost += cost;
    }

    pub fn usage(&self) -> Usage {
        self.lock().usage.clone()
    }

    /// Usage as a shared database counted it.
    pub fn usage_from(counted: crate::conversations::KeyUsage) -> Usage {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Usage { requests: n(counted.0), limited: n(counted.1), prompt_tokens: n(counted.2), completion_tokens: n(counted.3), cost: counted.4 }
    }

    /// The key's limits and what is left of each now, for `/api/usage`.
    pub fn remaining(&self, now: Instant) -> serde_json::Value {
        let mut guard = self.lock();
        let s = &mut *guard;
        let left = |b: &mut Option<Bucket>| b.as_mut().map(|b| b.level(now).max(0.0).floor() as u64);
        serde_json::json!({
            "rpm": self.limits.rpm, "tpm": self.limits.tpm, "tpd": self.limits.tpd,
            "requests_left": left(&mut s.requests),
            "minute_tokens_left": left(&mut s.minute_tokens),
            "day_tokens_left": left(&mut s.day_tokens),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs a count's write to a shared store without making the request wait for it; outside a
/// runtime (a unit test's plain thread) there is nothing to share it with, and it is skipped.
fn in_background(write: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(write);
    }
}

/// Why a request was refused: the limit and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: &'static str,
    pub retry_after: Duration,
}

impl Refusal {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// A bucket of `capacity` that refills at `rate` per second; its level may go below zero.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, rate: f64, now: Instant) -> Bucket {
        Bucket { capacity, rate, level: capacity, at: now }
    }

    fn level(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.at = now.max(self.at);
        self.level
    }

    fn take(&mut self, n: f64, now: Instant) {
        self.level(now);
        self.level -= n;
    }

    /// How long until the level reaches `need` (zero if it has); a limit of 0 never refills.
    fn wait_for(&mut self, need: f64, now: Instant) -> Duration {
        let level = self.level(now);
        if level >= need {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::from_secs(86_400);
        }
        Duration::from_secs_f64(((need - level) / self.rate).min(86_400.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scopes: &[Scope], limits: Limits) -> KeySpec {
        KeySpec { name: "k".into(), sha256: key_hash("secret"), scopes: scopes.to_vec(), limits }
    }

    #[test]
    fn scopes_parse_and_admin_allows_all() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert!("models".parse::<Scope>().expect_err("not a scope").contains("models:read"));
        let a = Account::new(&spec(&[Scope::Generate], Limits::default()), Instant::now());
        assert!(a.allows(Scope::Generate) && !a.allows(Scope::Embed) && !a.allows(Scope::Admin));
        let admin = Account::new(&spec(&[Scope::Admin], Limits::default()), Instant::now());
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
    }

    #[test]
    fn requests_per_minute_refill_continuously() {
        let t0 = Instant::now();
        let a = Account::new(&spec(&[Scope::Generate], Limits { rpm: Some(3), ..Default::default() }), t0);
        for _ in 0..3 {
            a.admit(t0).expect("within the limit");
        }
        let refused = a.admit(t0).expect_err("fourth in the same instant");
        assert_eq!((refused.limit, refused.retry_after_secs()), ("requests per minute", 20));
        a.admit(t0 + Duration::from_secs(20)).expect("one request refilled after 20 s");
        assert!(a.admit(t0 + Duration::from_secs(21)).is_err());
        assert_eq!(a.usage().requests, 4);
        assert_eq!(a.usage().limited, 2);
    }

    #[test]
    fn tokens_put_the_key_in_debt_until_the_bucket_refills() {
        let t0 = Instant::now();
        let a = Account::new(&spec(&[Scope::Generate], Limits { tpm: Some(600), tpd: Some(100_000), ..Default::default() }), t0);
        a.admit(t0).expect("no tokens used yet");
        a.record(500, 400, 0.25, t0);
        let refused = a.admit(t0).expect_err("300 tokens in debt");
        assert_eq!((refused.limit, refused.retry_after_secs()), ("tokens per minute", 30));
        a.admit(t0 + Duration::from_secs(31)).expect("refilled");
        let u = a.usage();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cost, u.requests), (500, 400, 0.25, 2));
        let left = a.remaining(t0 + Duration::from_secs(31));
        assert_eq!(left["tpd"], 100_000);
        assert_eq!(left["requests_left"], serde_json::Value::Null);
    }

    #[test]
    fn a_reload_keeps_usage_and_applies_new_limits() {
        let t0 = Instant::now();
        let old = Account::new(&spec(&[Scope::Generate], Limits { rpm: Some(1), ..Default::default() }), t0);
        old.admit(t0).expect("first");
        let same = old.carried_over(&spec(&[Scope::Generate], Limits { rpm: Some(1), ..Default::default() }), t0);
        assert!(same.admit(t0).is_err(), "the same limit keeps its bucket");
        let raised = old.carried_over(&spec(&[Scope::Embed], Limits { rpm: Some(10), ..Default::default() }), t0);
        raised.admit(t0).expect("a new limit starts full");
        assert!(raised.allows(Scope::Embed) && !raised.allows(Scope::Generate));
        assert_eq!(raised.usage().requests, 2);
    }

    #[test]
    fn new_keys_are_long_random_and_distinct() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 68);
        assert!(a.starts_with("hth_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
