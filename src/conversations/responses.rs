//! Stored responses (OpenAI's Responses API with `store`): each response keeps the messages of
//! its own turn (the input as the model saw it, then the answer) and the response object as it
//! was returned, with a link to the response it continued. A chain of `previous_response_id`s
//! is read back in one recursive query, oldest turn first. Lives in the conversation database,
//! so stored responses survive a restart like conversations do.
//!
//! Must not: know the wire format beyond keeping the response object as text.

use rusqlite::{params, OptionalExtension};

use super::{now_millis, validate_id, ConversationError, ConversationStore, MAX_MESSAGES};

/// Added in schema version 2.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS responses (
    id          TEXT PRIMARY KEY NOT NULL,
    previous_id TEXT,
    created_at  INTEGER NOT NULL,
    messages    TEXT NOT NULL,
    body        TEXT NOT NULL
);
";

/// One turn's messages, (role, content), as stored.
pub type TurnMessages = Vec<(String, String)>;

impl ConversationStore {
    /// Stores a response: its turn's messages and its object, linked to `previous`.
    pub async fn put_response(&self, id: &str, previous: Option<&str>, messages: TurnMessages, body: String) -> Result<(), ConversationError> {
        validate_id(id)?;
        let (id, previous) = (id.to_owned(), previous.map(str::to_owned));
        let messages = serde_json::to_string(&messages).unwrap_or_else(|_| "[]".into());
        if let Some(pg) = self.postgres() {
            return pg.put_response(&id, previous.as_deref(), &messages, &body).await;
        }
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, previous_id, created_at, messages, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, previous, now_millis(), messages, body],
            )
            .map(|_| ())
        })
        .await
    }

    /// The response object stored under `id`.
    pub async fn response(&self, id: &str) -> Result<Option<String>, ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.response(id).await;
        }
        let id = id.to_owned();
        self.with_conn(move |conn| conn.query_row("SELECT body FROM responses WHERE id = ?1", params![id], |row| row.get(0)).optional()).await
    }

    /// The messages of every turn from the first response of the chain to `id`, oldest first;
    /// `None` when `id` is not stored. At most [`MAX_MESSAGES`] of the newest are kept.
    pub async fn response_chain(&self, id: &str) -> Result<Option<TurnMessages>, ConversationError> {
        validate_id(id)?;
        let id = id.to_owned();
        let limit = i64::try_from(MAX_MESSAGES).unwrap_or(i64::MAX);
        let turns: Vec<String> = match self.postgres() {
            Some(pg) => pg.response_chain(&id).await?,
            None => self
            .with_conn(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "WITH RECURSIVE chain(id, previous_id, messages, depth) AS (
                         SELECT id, previous_id, messages, 0 FROM responses WHERE id = ?1
                         UNION ALL
                         SELECT r.id, r.previous_id, r.messages, c.depth + 1
                         FROM responses r JOIN chain c ON r.id = c.previous_id
                         WHERE c.depth < ?2
                     )
                     SELECT messages FROM chain ORDER BY depth DESC",
                )?;
                let rows = stmt.query_map(params![id, limit], |row| row.get(0))?;
                rows.collect()
            })
            .await?,
        };
        if turns.is_empty() {
            return Ok(None);
        }
        let mut all: TurnMessages = turns.iter().flat_map(|t| serde_json::from_str::<TurnMessages>(t).unwrap_or_default()).collect();
        if all.len() > MAX_MESSAGES {
            all.drain(..all.len() - MAX_MESSAGES);
        }
        Ok(Some(all))
    }

    /// Deletes a stored response; `true` if it existed. Responses that continued it can no
    /// longer be continued themselves.
    pub async fn delete_response(&self, id: &str) -> Result<bool, ConversationError> {
        validate_id(id)?;
        if let Some(pg) = self.postgres() {
            return pg.delete_response(id).await;
        }
        let id = id.to_owned();
        self.with_conn(move |conn| conn.execute("DELETE FROM responses WHERE id = ?1", params![id]).map(|n| n > 0)).await
    }
}
