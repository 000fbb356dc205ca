//! Server-side conversations: clients send a `conversation_id` and only their new message, and
//! this module keeps the history in `DATA_DIR/conversations.db` (SQLite, WAL) so it survives a
//! restart. It owns the schema, the blocking SQLite calls (always on `spawn_blocking`, never on
//! an async worker) and the per-conversation turn locks that keep two requests on one
//! conversation from interleaving. It does not render prompts, call the engine or know any wire
//! format; content is stored exactly as given.
//!
//! `responses` keeps the Responses API's stored responses in the same database, and `shared`
//! the routes' feedback (and, on PostgreSQL, the profiles). With `database.url`
//! (`DATABASE_URL`) all of it lives in PostgreSQL instead (`postgres`), shared by every hearth
//! pointed at it; the answers are the same either way.
//!
//! Limit: a conversation keeps at most [`MAX_MESSAGES`] messages. An append that would go past
//! it deletes the oldest messages, in the same transaction, so the count stays at the limit.

mod postgres;
mod responses;
mod shared;
pub use postgres::KeyUsage;
pub use responses::TurnMessages;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

/// The most messages one conversation keeps; older ones are dropped on append.
pub const MAX_MESSAGES: usize = 10_000;

/// The most characters a conversation id may have.
pub const MAX_ID_CHARS: usize = 128;

const DB_FILE: &str = "conversations.db";

/// `PRAGMA user_version` of the schema this code writes. Bump it together with a migration in
/// `migrate`; a database from a newer hearth is refused rather than guessed at.
const SCHEMA_VERSION: i64 = 3;

/// Long enough to ride out another process's checkpoint, short enough that a stuck lock
/// surfaces as an error instead of a hung request.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    id         TEXT PRIMARY KEY NOT NULL,
    model      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated_at ON conversations(updated_at);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
";

/// Everything that can go wrong in the conversation store.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("invalid conversation id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the conversation database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "the conversation database {path} has schema version {found}, but this hearth understands \
         only up to {supported}: upgrade hearth or point it at another data directory"
    )]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("conversation database {path}: {source}")]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error("the conversation store's worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("database.url {url:?} is not a PostgreSQL URL hearth can use: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the database at {url} is unavailable, so conversations and stored responses can't be read or written: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("database {url}: {reason}")]
    Postgres { url: String, reason: String },
}

/// One stored message, oldest first in every list this module returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A conversation with its full history.
#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub id: String,
    /// The model of the latest append.
    pub model: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the latest append.
    pub updated_at: i64,
    pub messages: Vec<StoredMessage>,
}

/// One line of [`ConversationStore::list`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationSummary {
    pub id: String,
    pub model: Option<String>,
    pub message_count: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// Checks a client-chosen conversation id: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
/// The id is only ever a SQL parameter, but keeping it plain keeps it safe to log and to put in
/// URLs and file names later.
pub fn validate_id(id: &str) -> Result<(), ConversationError> {
    let reason = if id.is_empty() {
        Some("it is empty; use 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".to_owned())
    } else if id.chars().count() > MAX_ID_CHARS {
        Some(format!(
            "it has {} characters, more than the {MAX_ID_CHARS} allowed",
            id.chars().count()
        ))
    } else {
        id.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
            .map(|c| format!("character {c:?} is not allowed; use only A-Z a-z 0-9 . _ : @ -"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ConversationError::InvalidId { id: id.to_owned(), reason }),
    }
}

/// Handle on the conversation database. Cheap to clone; every clone shares one connection and
/// one set of turn locks.
#[derive(Clone)]
pub struct ConversationStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// The database file, or the PostgreSQL URL without its password.
    path: PathBuf,
    db: Db,
    turns: Arc<Mutex<TurnLocks>>,
}

enum Db {
    /// One connection is enough: each call is a short transaction, and a single writer is what
    /// SQLite wants anyway.
    Sqlite(Mutex<Connection>),
    Postgres(postgres::PgStore),
}

/// Per-conversation turn mutexes. An entry lives only while someone holds or waits for its
/// mutex: the map's own `Arc` is then not the only one.
type TurnLocks = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

impl std::fmt::Debug for ConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl ConversationStore {
    /// Opens (creating if needed) `data_dir/conversations.db`. Blocks briefly on file I/O; call
    /// it at startup, not on a request path.
    pub fn open(data_dir: &Path) -> Result<Self, ConversationError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| ConversationError::CreateDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| ConversationError::Open { path: path.clone(), source };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some filesystems (network mounts) refuse WAL; SQLite still works, only slower.
            tracing::warn!(path = %path.display(), mode, "conversation database is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        migrate(&mut conn, &path)?;
        conn.execute("DELETE FROM served WHERE created_at < ?1", params![now_millis() - shared::SERVED_KEPT_MS])
            .map_err(|source| ConversationError::Database { path: path.clone(), source })?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                path,
                db: Db::Sqlite(Mutex::new(conn)),
                turns: Arc::new(Mutex::new(HashMap::new())),
            }),
        })
    }

    /// Connects to PostgreSQL at `url` and migrates its schema; fails if the server can't be
    /// reached now.
    pub async fn connect(url: &str) -> Result<Self, ConversationError> {
        let pg = postgres::PgStore::open(url).await?;
        Ok(Self {
            inner: Arc::new(StoreInner { path: PathBuf::from(&pg.shown), db: Db::Postgres(pg), turns: Arc::new(Mutex::new(HashMap::new())) }),
        })
    }

    /// Which database this is, for logs and `/health`: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        if self.is_shared() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Whether other servers may share this store (PostgreSQL), so what it counts is theirs too.
    pub fn is_shared(&self) -> bool {
        self.postgres().is_some()
    }

    fn postgres(&self) -> Option<&postgres::PgStore> {
        match &self.inner.db {
            Db::Postgres(pg) => Some(pg),
            Db::Sqlite(_) => None,
        }
    }

    /// The database file this store writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The conversation with its whole history, or `None` if the id is unknown.
    pub async fn get(&self, id: &str) -> Result<Option<Conversation>, ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.get(id).await;
        }
        let id = id.to_owned();
        self.with_conn(move |conn| {
            // One read transaction so the row and its messages come from the same snapshot even
            // if another process writes in between.
            let tx = conn.transaction()?;
            let row = tx
                .query_row(
                    "SELECT model, created_at, updated_at FROM conversations WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((model, created_at, updated_at)) = row else {
                return Ok(None);
            };
            let messages = read_history(&tx, &id)?;
            tx.commit()?;
            Ok(Some(Conversation { id, model, created_at, updated_at, messages }))
        })
        .await
    }

    /// The messages of a conversation, oldest first; empty if the id is unknown.
    pub async fn history(&self, id: &str) -> Result<Vec<StoredMessage>, ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.history(id).await;
        }
        let id = id.to_owned();
        self.with_conn(move |conn| read_history(conn, &id)).await
    }

    /// Appends `messages` (role, content) after the existing ones in one transaction, creating
    /// the conversation if needed and recording `model` as its latest model. Past
    /// [`MAX_MESSAGES`] the oldest messages are deleted.
    pub async fn append(
        &self,
        id: &str,
        model: &str,
        messages: Vec<(String, String)>,
    ) -> Result<(), ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.append(id, model, &messages).await;
        }
        let id = id.to_owned();
        let model = model.to_owned();
        self.with_conn(move |conn| {
            let now = now_millis();
            // IMMEDIATE takes the write lock up front, so reading MAX(seq) and inserting after it
            // cannot race another writer on the same file.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO conversations (id, model, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(id) DO UPDATE SET model = excluded.model,
                                               updated_at = excluded.updated_at",
                params![id, model, now],
            )?;
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(seq) FROM messages WHERE conversation_id = ?1",
                params![id],
                |row| row.get(0),
            )?;
            let mut seq = last.map_or(0, |last| last + 1);
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (conversation_id, seq, role, content, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (role, content) in &messages {
                    insert.execute(params![id, seq, role, content, now])?;
                    seq += 1;
                }
            }
            // Only the oldest messages are ever deleted, so seqs stay contiguous and everything
            // at or below `newest - MAX_MESSAGES` is exactly the overflow.
            let keep = i64::try_from(MAX_MESSAGES).unwrap_or(i64::MAX);
            tx.execute(
                "DELETE FROM messages WHERE conversation_id = ?1 AND seq < ?2",
                params![id, seq.saturating_sub(keep)],
            )?;
            tx.commit()
        })
        .await
    }

    /// Deletes a conversation and its messages; `true` if it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.delete(id).await;
        }
        let id = id.to_owned();
        self.with_conn(move |conn| {
            // Messages go by ON DELETE CASCADE (foreign_keys is on for this connection).
            let removed = conn.execute("DELETE FROM conversations WHERE id = ?1", params![id])?;
            Ok(removed > 0)
        })
        .await
    }

    /// Up to `limit` conversations, most recently updated first.
    pub async fn list(&self, limit: usize) -> Result<Vec<ConversationSummary>, ConversationError> {
        if let Some(pg) = self.postgres() {
            return pg.list(limit).await;
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.id, c.model, c.created_at, c.updated_at,
                        (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)
                 FROM conversations c
                 ORDER BY c.updated_at DESC, c.id
                 LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |row| {
                Ok(ConversationSummary {
                    id: row.get(0)?,
                    model: row.get(1)?,
                    created_at: row.get(2)?,
                    updated_at: row.get(3)?,
                    // COUNT(*) is never negative.
                    message_count: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Adds to API key `name`'s usage in PostgreSQL, where every server sharing it counts;
    /// nothing on SQLite, where each server counts its own in memory.
    pub async fn add_key_usage(&self, name: &str, usage: KeyUsage) -> Result<(), ConversationError> {
        match self.postgres() {
            Some(pg) => pg.add_usage(name, usage).await,
            None => Ok(()),
        }
    }

    /// Every API key's usage as all servers counted it (PostgreSQL); `None` on SQLite.
    pub async fn key_usage(&self) -> Result<Option<HashMap<String, KeyUsage>>, ConversationError> {
        match self.postgres() {
            Some(pg) => Ok(Some(pg.key_usage().await?.into_iter().collect())),
            None => Ok(None),
        }
    }

    /// Waits for the turn on conversation `id` and holds it until the guard drops. Turns on one
    /// id run one at a time, in arrival order within this process (tokio's mutex is FIFO) and,
    /// on PostgreSQL, across every server sharing it; other ids are unaffected. The id is only
    /// a key here: validate it before calling. Hold the guard across read-history -> generate
    /// -> append so two requests can't interleave. Fails only when PostgreSQL can't be reached.
    pub async fn turn(&self, id: &str) -> Result<TurnGuard, ConversationError> {
        let mutex = {
            let mut turns = self.inner.turns.lock().unwrap_or_else(PoisonError::into_inner);
            // Drops entries a cancelled waiter left behind; live ones have another `Arc` out.
            turns.retain(|_, m| Arc::strong_count(m) > 1);
            Arc::clone(turns.entry(id.to_owned()).or_default())
        };
        let guard = mutex.lock_owned().await;
        let mut turn = TurnGuard { guard: Some(guard), shared: None, id: id.to_owned(), turns: Arc::clone(&self.inner.turns) };
        if let Some(pg) = self.postgres() {
            turn.shared = Some(pg.lock_turn(id).await?);
        }
        Ok(turn)
    }

    /// Runs `f` on the connection on the blocking pool and maps SQLite errors to ours.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, ConversationError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || {
            // A panic mid-call rolled its transaction back when the `Transaction` dropped, so
            // the connection is still sound after a poison.
            let Db::Sqlite(conn) = &inner.db else {
                return Err(rusqlite::Error::InvalidPath(inner.path.clone()));
            };
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await?;
        result.map_err(|source| ConversationError::Database { path: self.inner.path.clone(), source })
    }
}

/// This process's exclusive turn on one conversation; dropping it lets the next waiter in and
/// forgets the conversation's lock if nobody else wants it.
pub struct TurnGuard {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The turn across servers (PostgreSQL), released first.
    shared: Option<postgres::PgTurn>,
    id: String,
    turns: Arc<Mutex<TurnLocks>>,
}

impl std::fmt::Debug for TurnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnGuard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        // Release first so our `Arc` is gone before counting; `turn` clones under the same map
        // lock, so a count of 1 means nobody holds, waits for, or is about to wait for it.
        drop(self.shared.take());
        drop(self.guard.take());
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        if turns.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            turns.remove(&self.id);
        }
    }
}

fn read_history(conn: &Connection, id: &str) -> rusqlite::Result<Vec<StoredMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT role, content, created_at FROM messages WHERE conversation_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![id], |row| {
        Ok(StoredMessage { role: row.get(0)?, content: row.get(1)?, created_at: row.get(2)? })
    })?;
    rows.collect()
}

/// Brings the schema to [`SCHEMA_VERSION`], refusing a database written by a newer hearth.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), ConversationError> {
    let db_err = |source| ConversationError::Open { path: path.to_owned(), source };
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db_err)?;
    if found > SCHEMA_VERSION {
        return Err(ConversationError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
    if found < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(db_err)?;
    }
    tx.execute_batch(responses::SCHEMA_V2).map_err(db_err)?;
    tx.execute_batch(shared::SCHEMA_V3).map_err(db_err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db_err)?;
    tx.commit().map_err(db_err)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests;
