//! The shared backend: Redis or KeyDB, so several hearth instances see one cache. It owns the
//! connection and the "down" window, and must never make a request wait on a dead server: every
//! call is bounded by a short timeout, and after a failure it refuses at once for `DOWN_FOR`
//! before trying to reconnect. It knows nothing of counters or of what a value means: the
//! shared rate limits (`service::shared_limits`) bring their own script to `eval`, and a
//! fleet's prefix owners (`backend::remote::fleet::owners`) read theirs with `get_many`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue};
use tokio::sync::Mutex;

use super::CacheKey;

/// Longest wait to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest wait for one command's reply.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long after a failure requests skip Redis without trying it.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// Every key this cache writes starts with this, so `clear` can find exactly ours.
const KEY_PREFIX: &str = "hearth:cache:v1:";
/// Keys asked for per SCAN step and deleted per DEL.
const SCAN_BATCH: usize = 500;

/// Why a Redis call gave nothing back.
#[derive(Debug)]
pub(crate) enum RedisFailure {
    /// Inside the down window: not tried.
    Down,
    /// Tried and failed (connect, timeout, or an error reply).
    Failed(String),
}

impl std::fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisFailure::Down => {
                write!(
                    f,
                    "redis failed recently; retrying in at most {}s",
                    DOWN_FOR.as_secs()
                )
            }
            RedisFailure::Failed(reason) => f.write_str(reason),
        }
    }
}

/// Whether a call may be skipped while the backend is down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// A request on the hot path: skip Redis while it is down.
    RespectDownWindow,
    /// An operator's explicit action (clear, health): always try.
    Force,
}

/// A lazily (re)opened multiplexed connection with a cool-down after failures.
pub(crate) struct RedisStore {
    client: Client,
    ttl_secs: u64,
    config: AsyncConnectionConfig,
    /// The live connection; `None` until first use and after a failure. Held across a connect
    /// so a burst of requests opens one connection, not one each (each waits at most
    /// CONNECT_TIMEOUT).
    connection: Mutex<Option<MultiplexedConnection>>,
    down_until: StdMutex<Option<Instant>>,
    /// Set while down, so the log says "down" and "back" once per outage, not per request.
    degraded: AtomicBool,
}

impl RedisStore {
    /// Parses the URL now (so a typo fails at start) but connects only on first use.
    pub(crate) fn new(url: &str, ttl: Duration) -> Result<RedisStore, redis::RedisError> {
        let client = Client::open(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        Ok(RedisStore {
            client,
            ttl_secs: whole_seconds_at_least_one(ttl),
            config,
            connection: Mutex::new(None),
            down_until: StdMutex::new(None),
            degraded: AtomicBool::new(false),
        })
    }

    pub(super) async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, RedisFailure> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(redis_key(key));
        let value: Option<Vec<u8>> = self.run(&cmd, Attempt::RespectDownWindow).await?;
        Ok(value.map(Bytes::from))
    }

    pub(super) async fn put(&self, key: &CacheKey, value: &[u8]) -> Result<(), RedisFailure> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key))
            .arg(value)
            .arg("EX")
            .arg(self.ttl_secs);
        let () = self.run(&cmd, Attempt::RespectDownWindow).await?;
        Ok(())
    }

    /// Deletes every `hearth:cache:v1:*` key (SCAN + DEL in batches, never FLUSHDB: the
    /// database may hold other people's keys) and says how many went.
    pub(super) async fn clear(&self) -> Result<u64, RedisFailure> {
        let pattern = format!("{KEY_PREFIX}*");
        let mut cursor: u64 = 0;
        let mut removed: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let (next, keys): (u64, Vec<String>) = self.run(&scan, Attempt::Force).await?;
            for batch in keys.chunks(SCAN_BATCH) {
                let mut del = redis::cmd("DEL");
                del.arg(batch);
                let deleted: u64 = self.run(&del, Attempt::Force).await?;
                removed += deleted;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Runs a Lua script (`EVAL`) on `keys` with `args`; its reply is a list of integers.
    pub(crate) async fn eval(&self, script: &str, keys: &[String], args: &[String]) -> Result<Vec<i64>, RedisFailure> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
        self.run(&cmd, Attempt::RespectDownWindow).await
    }

    /// The string values of `keys` (MGET), `None` for each that is missing.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, RedisFailure> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.run(&cmd, Attempt::RespectDownWindow).await
    }

    /// PINGs the server now, whatever the down window says.
    pub(super) async fn ping(&self) -> Result<(), RedisFailure> {
        let reply: String = self.run(&redis::cmd("PING"), Attempt::Force).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(RedisFailure::Failed(format!(
                "unexpected PING reply {reply:?}"
            )))
        }
    }

    /// Runs one command under COMMAND_TIMEOUT; a transport failure drops the connection and
    /// opens the down window.
    async fn run<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        attempt: Attempt,
    ) -> Result<T, RedisFailure> {
        let mut connection = self.connection(attempt).await?;
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let reason = format!("redis command failed: {error}");
                // An error reply (wrong type, OOM...) says the server is up: keep the connection.
                if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_unrecoverable_error()
                {
                    self.mark_down(&reason).await;
                }
                Err(RedisFailure::Failed(reason))
            }
            Err(_elapsed) => {
                let reason = format!("redis command timed out after {COMMAND_TIMEOUT:?}");
                self.mark_down(&reason).await;
                Err(RedisFailure::Failed(reason))
            }
        }
    }

    /// The live connection, opening one if there is none and the down window allows.
    async fn connection(&self, attempt: Attempt) -> Result<MultiplexedConnection, RedisFailure> {
        if attempt == Attempt::RespectDownWindow && self.in_down_window() {
            return Err(RedisFailure::Down);
        }
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        // Another task may have failed while this one waited for the lock.
        if attempt == Attempt::RespectDownWindow && self.in_down_window() {
            return Err(RedisFailure::Down);
        }
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        let reason = match opened {
            Ok(Ok(connection)) => {
                *slot = Some(connection.clone());
                drop(slot);
                self.mark_up();
                return Ok(connection);
            }
            Ok(Err(error)) => format!("cannot connect to redis: {error}"),
            Err(_elapsed) => format!("cannot connect to redis: no answer in {CONNECT_TIMEOUT:?}"),
        };
        drop(slot);
        self.open_down_window(&reason);
        Err(RedisFailure::Failed(reason))
    }

    fn in_down_window(&self) -> bool {
        let down_until = self
            .down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        down_until.is_some_and(|until| Instant::now() < until)
    }

    /// Forgets the connection (the next attempt opens a fresh one) and opens the down window.
    async fn mark_down(&self, reason: &str) {
        *self.connection.lock().await = None;
        self.open_down_window(reason);
    }

    fn open_down_window(&self, reason: &str) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now() + DOWN_FOR);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                retry_after_s = DOWN_FOR.as_secs(),
                "response cache: redis unavailable, requests bypass the cache"
            );
        }
    }

    fn mark_up(&self) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("response cache: redis reachable again");
        }
    }
}

/// The Redis key for a cache key: prefix plus 64 hex digits.
pub(super) fn redis_key(key: &CacheKey) -> String {
    format!("{KEY_PREFIX}{}", key.to_hex())
}

/// `SET ... EX` takes whole seconds and refuses 0, so a sub-second TTL rounds up.
fn whole_seconds_at_least_one(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds_at_least_one(Duration::from_secs(3600)), 3600);
    }

    #[test]
    fn redis_keys_carry_the_versioned_prefix() {
        let key = redis_key(&CacheKey::of(&[b"x"]));
        assert!(key.starts_with("hearth:cache:v1:"), "{key}");
        assert_eq!(key.len(), "hearth:cache:v1:".len() + 64);
    }
}
