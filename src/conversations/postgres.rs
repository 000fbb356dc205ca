//! The conversation store in PostgreSQL (`database.url`, `DATABASE_URL`), for several hearth
//! fronts sharing conversations and stored responses: the same tables and the same answers
//! as the SQLite store, through a connection pool. The schema is versioned in
//! `hearth_migrations`; migrations run at start, one front at a time (an advisory lock), and a
//! database written by a newer hearth is refused.
//!
//! While the server can't be reached a call fails at once with `Unavailable` (503 with the
//! reason) rather than waiting; each checkout verifies its connection, so the first call
//! after the server is back succeeds. An append is one transaction: a turn is stored whole or
//! not at all. A conversation's turns are one at a time across servers too: each holds an
//! advisory lock on a connection of its own (`lock_turn`). Must not: log the URL's password.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::NoTls;

use super::shared::SERVED_KEPT_MS;
use super::{now_millis, Conversation, ConversationError, ConversationSummary, StoredMessage, MAX_MESSAGES};

/// Connections kept open to the server.
const POOL_SIZE: usize = 16;
/// The longest a call waits for a connection (a new one included).
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Held while migrating, so fronts starting together migrate one after another.
const MIGRATION_LOCK: i64 = 0x6865_6172_7468;
/// Turn locks (each a connection) one server holds at once; more turns wait for one.
const TURN_CONNECTIONS: usize = 32;

/// Each version's schema change, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE conversations (
         id         TEXT PRIMARY KEY,
         model      TEXT,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL
     );
     CREATE INDEX conversations_updated_at ON conversations(updated_at);
     CREATE TABLE messages (
         conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
         seq             BIGINT NOT NULL,
         role            TEXT NOT NULL,
         content         TEXT NOT NULL,
         created_at      BIGINT NOT NULL,
         PRIMARY KEY (conversation_id, seq)
     );
     CREATE TABLE responses (
         id          TEXT PRIMARY KEY,
         previous_id TEXT,
         created_at  BIGINT NOT NULL,
         messages    TEXT NOT NULL,
         body        TEXT NOT NULL
     );",
), (
    2,
    "CREATE TABLE key_usage (
         name              TEXT PRIMARY KEY,
         requests          BIGINT NOT NULL DEFAULT 0,
         limited           BIGINT NOT NULL DEFAULT 0,
         prompt_tokens     BIGINT NOT NULL DEFAULT 0,
         completion_tokens BIGINT NOT NULL DEFAULT 0,
         cost              DOUBLE PRECISION NOT NULL DEFAULT 0
     );",
), (
    3,
    "CREATE TABLE served (
         request_id   TEXT PRIMARY KEY,
         route        TEXT NOT NULL,
         variant      TEXT,
         target       TEXT NOT NULL,
         target_route TEXT NOT NULL,
         created_at   BIGINT NOT NULL
     );
     CREATE INDEX served_created_at ON served(created_at);
     CREATE TABLE feedback (
         request_id TEXT NOT NULL,
         route      TEXT NOT NULL,
         target     TEXT NOT NULL,
         score      DOUBLE PRECISION,
         label      TEXT,
         created_at BIGINT NOT NULL
     );
     CREATE INDEX feedback_target ON feedback(route, target);
     CREATE TABLE profiles (
         name       TEXT PRIMARY KEY,
         body       TEXT NOT NULL,
         updated_at BIGINT NOT NULL
     );",
)];

/// What one API key used, as every server sharing the database counted it: requests,
/// refusals, prompt and completion tokens, and cost.
pub type KeyUsage = (i64, i64, i64, i64, f64);

pub(super) struct PgStore {
    pool: Pool,
    /// For the turn locks' own connections.
    config: tokio_postgres::Config,
    /// Turn locks held at once by this server, each on a connection of its own.
    turn_connections: Arc<Semaphore>,
    /// The URL without its password, for messages.
    pub(super) shown: String,
}

/// A conversation's turn held across servers: a session advisory lock on a connection of its
/// own. Dropping it closes the connection, and the server releases the lock with it, so a
/// server that dies mid-turn can't leave the conversation locked.
pub(super) struct PgTurn {
    _client: tokio_postgres::Client,
    _permit: OwnedSemaphorePermit,
}

/// `url` with any password replaced.
fn hide_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl PgStore {
    /// Connects, checks the server answers, and brings the schema up to date.
    pub(super) async fn open(url: &str) -> Result<PgStore, ConversationError> {
        let shown = hide_password(url);
        let config = tokio_postgres::Config::from_str(url).map_err(|e| ConversationError::BadUrl { url: shown.clone(), reason: e.to_string() })?;
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .recycle_timeout(Some(CONNECT_WAIT))
            .build()
            .map_err(|e| ConversationError::BadUrl { url: shown.clone(), reason: e.to_string() })?;
        let store = PgStore { pool, config, turn_connections: Arc::new(Semaphore::new(TURN_CONNECTIONS)), shown };
        store.migrate().await?;
        let client = store.client().await?;
        client.execute("DELETE FROM served WHERE created_at < $1", &[&(now_millis() - SERVED_KEPT_MS)]).await.map_err(|e| store.error(e))?;
        Ok(store)
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ConversationError {
        ConversationError::Unavailable { url: self.shown.clone(), reason: reason.to_string() }
    }

    /// A server's SQL error is the query's (500); a connection lost, refused or shutting
    /// down is the server's absence (503).
    pub(super) fn error(&self, e: tokio_postgres::Error) -> ConversationError {
        match e.code().map(|c| c.code()) {
            Some(code) if !(code.starts_with("08") || code.starts_with("57") || code.starts_with("53")) => {
                ConversationError::Postgres { url: self.shown.clone(), reason: e.to_string() }
            }
            _ => self.unavailable(e),
        }
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, ConversationError> {
        self.pool.get().await.map_err(|e| self.unavailable(e))
    }

    /// Waits until no other server is in a turn on conversation `id`, and holds the turn.
    pub(super) async fn lock_turn(&self, id: &str) -> Result<PgTurn, ConversationError> {
        let permit = Arc::clone(&self.turn_connections).acquire_owned().await.map_err(|e| self.unavailable(e))?;
        let (client, connection) = tokio::time::timeout(CONNECT_WAIT, self.config.connect(NoTls))
            .await
            .map_err(|_| self.unavailable("no connection within 3 s"))?
            .map_err(|e| self.unavailable(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("a turn lock's connection ended: {e}");
            }
        });
        client.execute("SELECT pg_advisory_lock($1)", &[&turn_key(id)]).await.map_err(|e| self.error(e))?;
        Ok(PgTurn { _client: client, _permit: permit })
    }

    async fn migrate(&self) -> Result<(), ConversationError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| self.error(e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS hearth_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .map_err(|e| self.error(e))?;
        let found: Option<i32> = tx.query_one("SELECT MAX(version) FROM hearth_migrations", &[]).await.map_err(|e| self.error(e))?.get(0);
        let found = found.unwrap_or(0);
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        if found > latest {
            return Err(ConversationError::SchemaTooNew { path: PathBuf::from(&self.shown), found: i64::from(found), supported: i64::from(latest) });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            tx.batch_execute(sql).await.map_err(|e| self.error(e))?;
            tx.execute("INSERT INTO hearth_migrations (version, applied_at) VALUES ($1, $2)", &[version, &now_millis()]).await.map_err(|e| self.error(e))?;
            tracing::info!(database = %self.shown, version, "database schema migrated");
        }
        tx.commit().await.map_err(|e| self.error(e))
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<Conversation>, ConversationError> {
        let mut client = self.client().await?;
        // One snapshot for the row and its messages.
        let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await.map_err(|e| self.error(e))?;
        let Some(row) = tx.query_opt("SELECT model, created_at, updated_at FROM conversations WHERE id = $1", &[&id]).await.map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let messages = read_history(&tx, id).await.map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(Some(Conversation { id: id.to_string(), model: row.get(0), created_at: row.get(1), updated_at: row.get(2), messages }))
    }

    pub(super) async fn history(&self, id: &str) -> Result<Vec<StoredMessage>, ConversationError> {
        let client = self.client().await?;
        read_history(&client, id).await.map_err(|e| self.error(e))
    }

    pub(super) async fn append(&self, id: &str, model: &str, messages: &[(String, String)]) -> Result<(), ConversationError> {
        let mut client = self.client().await?;
        let now = now_millis();
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        // The upsert locks the conversation's row until commit: another front's append on the
        // same conversation waits here, so sequence numbers never collide.
        tx.execute(
            "INSERT INTO conversations (id, model, created_at, updated_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET model = EXCLUDED.model, updated_at = EXCLUDED.updated_at",
            &[&id, &model, &now],
        )
        .await
        .map_err(|e| self.error(e))?;
        let last: Option<i64> = tx.query_one("SELECT MAX(seq) FROM messages WHERE conversation_id = $1", &[&id]).await.map_err(|e| self.error(e))?.get(0);
        let mut seq = last.map_or(0, |l| l + 1);
        let insert = tx
            .prepare("INSERT INTO messages (conversation_id, seq, role, content, created_at) VALUES ($1, $2, $3, $4, $5)")
            .await
            .map_err(|e| self.error(e))?;
        for (role, content) in messages {
            tx.execute(&insert, &[&id, &seq, role, content, &now]).await.map_err(|e| self.error(e))?;
            seq += 1;
        }
        let keep = i64::try_from(MAX_MESSAGES).unwrap_or(i64::MAX);
        tx.execute("DELETE FROM messages WHERE conversation_id = $1 AND seq < $2", &[&id, &seq.saturating_sub(keep)]).await.map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    pub(super) async fn delete(&self, id: &str) -> Result<bool, ConversationError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM conversations WHERE id = $1", &[&id]).await.map_err(|e| self.error(e))?;
        Ok(n > 0)
    }

    pub(super) async fn list(&self, limit: usize) -> Result<Vec<ConversationSummary>, ConversationError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT c.id, c.model, c.created_at, c.updated_at,
                        (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)
                 FROM conversations c ORDER BY c.updated_at DESC, c.id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|r| ConversationSummary { id: r.get(0), model: r.get(1), created_at: r.get(2), updated_at: r.get(3), message_count: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0) })
            .collect())
    }

    pub(super) async fn put_response(&self, id: &str, previous: Option<&str>, messages: &str, body: &str) -> Result<(), ConversationError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO responses (id, previous_id, created_at, messages, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET previous_id = EXCLUDED.previous_id, created_at = EXCLUDED.created_at,
                                                messages = EXCLUDED.messages, body = EXCLUDED.body",
                &[&id, &previous, &now_millis(), &messages, &body],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    pub(super) async fn response(&self, id: &str) -> Result<Option<String>, ConversationError> {
        let client = self.client().await?;
        let row = client.query_opt("SELECT body FROM responses WHERE id = $1", &[&id]).await.map_err(|e| self.error(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Each turn's stored messages (JSON), from the first response of the chain to `id`.
    pub(super) async fn response_chain(&self, id: &str) -> Result<Vec<String>, ConversationError> {
        let client = self.client().await?;
        let limit = i32::try_from(MAX_MESSAGES).unwrap_or(i32::MAX);
        let rows = client
            .query(
                "WITH RECURSIVE chain(id, previous_id, messages, depth) AS (
                     SELECT id, previous_id, messages, 0 FROM responses WHERE id = $1
                     UNION ALL
                     SELECT r.id, r.previous_id, r.messages, c.depth + 1
                     FROM responses r JOIN chain c ON r.id = c.previous_id
                     WHERE c.depth < $2
                 )
                 SELECT messages FROM chain ORDER BY depth DESC",
                &[&id, &limit],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) async fn delete_response(&self, id: &str) -> Result<bool, ConversationError> {
        let client = self.client().await?;
        let n = client.execute("DELETE FROM responses WHERE id = $1", &[&id]).await.map_err(|e| self.error(e))?;
        Ok(n > 0)
    }
}

impl PgStore {
    /// Adds to key `name`'s usage.
    pub(super) async fn add_usage(&self, name: &str, (requests, limited, prompt, completion, cost): KeyUsage) -> Result<(), ConversationError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO key_usage (name, requests, limited, prompt_tokens, completion_tokens, cost) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET requests = key_usage.requests + EXCLUDED.requests,
                     limited = key_usage.limited + EXCLUDED.limited, prompt_tokens = key_usage.prompt_tokens + EXCLUDED.prompt_tokens,
                     completion_tokens = key_usage.completion_tokens + EXCLUDED.completion_tokens, cost = key_usage.cost + EXCLUDED.cost",
                &[&name, &requests, &limited, &prompt, &completion, &cost],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Every key's usage.
    pub(super) async fn key_usage(&self) -> Result<Vec<(String, KeyUsage)>, ConversationError> {
        let client = self.client().await?;
        let rows = client.query("SELECT name, requests, limited, prompt_tokens, completion_tokens, cost FROM key_usage", &[]).await.map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))).collect())
    }
}

/// The advisory lock key of conversation `id`'s turns (64 bits of a SHA-256, so ids can't
/// meet the migration lock's key but by chance).
fn turn_key(id: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("hearth turn\u{0}{id}").as_bytes());
    i64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

async fn read_history(client: &impl deadpool_postgres::GenericClient, id: &str) -> Result<Vec<StoredMessage>, tokio_postgres::Error> {
    let rows = client.query("SELECT role, content, created_at FROM messages WHERE conversation_id = $1 ORDER BY seq", &[&id]).await?;
    Ok(rows.iter().map(|r| StoredMessage { role: r.get(0), content: r.get(1), created_at: r.get(2) }).collect())
}
