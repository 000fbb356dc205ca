//! The rest of what servers sharing a database share: which route, variant and target served
//! each answer, and the feedback clients attached to it (the A/B results, counted over every
//! server), in SQLite or PostgreSQL alike; and the `/llm/configure` profiles, kept here only in
//! PostgreSQL (on SQLite they stay in `profiles.json` beside the database).
//!
//! Must not: decide what feedback counts for (`routing` says which rows an answer's feedback
//! goes to) or parse a profile (`service::catalog` owns its JSON).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{now_millis, ConversationError, ConversationStore};
use crate::routing::Attribution;

/// Added in schema version 3 (SQLite; PostgreSQL's migration 3 is the same plus profiles).
pub(super) const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS served (
    request_id   TEXT PRIMARY KEY NOT NULL,
    route        TEXT NOT NULL,
    variant      TEXT,
    target       TEXT NOT NULL,
    target_route TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS served_created_at ON served(created_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    route      TEXT NOT NULL,
    target     TEXT NOT NULL,
    score      REAL,
    label      TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_target ON feedback(route, target);
";

/// How long an answer's attribution is kept for feedback: 30 days.
pub(super) const SERVED_KEPT_MS: i64 = 30 * 24 * 3600 * 1000;

/// The feedback on one target of one route (a split's variant or a route's target), as every
/// server sharing the database recorded it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackTotal {
    pub count: i64,
    /// Feedback that had a score.
    pub scored: i64,
    pub score_sum: f64,
    pub labels: BTreeMap<String, i64>,
}

/// (route, target) -> its feedback.
pub type FeedbackTotals = BTreeMap<(String, String), FeedbackTotal>;

const TOTALS_SQL: &str = "SELECT route, target, COUNT(*), COUNT(score), COALESCE(SUM(score), 0.0) FROM feedback GROUP BY route, target";
const LABELS_SQL: &str = "SELECT route, target, label, COUNT(*) FROM feedback WHERE label IS NOT NULL GROUP BY route, target, label";

impl ConversationStore {
    /// Records which route, variant and target answered `request_id`.
    pub async fn remember_served(&self, request_id: &str, a: &Attribution) -> Result<(), ConversationError> {
        let (id, a, now) = (request_id.to_owned(), a.clone(), now_millis());
        if let Some(pg) = self.postgres() {
            let client = pg.client().await?;
            client
                .execute(
                    "INSERT INTO served (request_id, route, variant, target, target_route, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (request_id) DO NOTHING",
                    &[&id, &a.route, &a.variant, &a.target, &a.target_route, &now],
                )
                .await
                .map_err(|e| pg.error(e))?;
            return Ok(());
        }
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO served (request_id, route, variant, target, target_route, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, a.route, a.variant, a.target, a.target_route, now],
            )
            .map(|_| ())
        })
        .await
    }

    /// Which route, variant and target answered `request_id`, if any server recorded it.
    pub async fn served(&self, request_id: &str) -> Result<Option<Attribution>, ConversationError> {
        let id = request_id.to_owned();
        if let Some(pg) = self.postgres() {
            let client = pg.client().await?;
            let row = client.query_opt("SELECT route, variant, target, target_route FROM served WHERE request_id = $1", &[&id]).await.map_err(|e| pg.error(e))?;
            return Ok(row.map(|r| Attribution { route: r.get(0), variant: r.get(1), target: r.get(2), target_route: r.get(3) }));
        }
        self.with_conn(move |conn| {
            conn.query_row("SELECT route, variant, target, target_route FROM served WHERE request_id = ?1", params![id], |r| {
                Ok(Attribution { route: r.get(0)?, variant: r.get(1)?, target: r.get(2)?, target_route: r.get(3)? })
            })
            .optional()
        })
        .await
    }

    /// Adds one piece of feedback on `request_id` to each (route, target) of `rows`, in one
    /// transaction.
    pub async fn add_feedback(&self, request_id: &str, rows: Vec<(String, String)>, score: Option<f64>, label: Option<String>) -> Result<(), ConversationError> {
        let (id, now) = (request_id.to_owned(), now_millis());
        if let Some(pg) = self.postgres() {
            let mut client = pg.client().await?;
            let tx = client.transaction().await.map_err(|e| pg.error(e))?;
            for (route, target) in &rows {
                tx.execute("INSERT INTO feedback (request_id, route, target, score, label, created_at) VALUES ($1, $2, $3, $4, $5, $6)", &[&id, route, target, &score, &label, &now])
                    .await
                    .map_err(|e| pg.error(e))?;
            }
            return tx.commit().await.map_err(|e| pg.error(e));
        }
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            for (route, target) in &rows {
                tx.execute("INSERT INTO feedback (request_id, route, target, score, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", params![id, route, target, score, label, now])?;
            }
            tx.commit()
        })
        .await
    }

    /// The feedback on every (route, target), summed over all servers.
    pub async fn feedback_totals(&self) -> Result<FeedbackTotals, ConversationError> {
        type Total = (String, String, i64, i64, f64);
        type Label = (String, String, String, i64);
        let (totals, labels): (Vec<Total>, Vec<Label>) = match self.postgres() {
            Some(pg) => {
                let client = pg.client().await?;
                let totals = client.query(TOTALS_SQL, &[]).await.map_err(|e| pg.error(e))?;
                let labels = client.query(LABELS_SQL, &[]).await.map_err(|e| pg.error(e))?;
                (
                    totals.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect(),
                    labels.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect(),
                )
            }
            None => {
                self.with_conn(|conn| {
                    let totals = conn.prepare_cached(TOTALS_SQL)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect::<rusqlite::Result<_>>()?;
                    let labels = conn.prepare_cached(LABELS_SQL)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<rusqlite::Result<_>>()?;
                    Ok((totals, labels))
                })
                .await?
            }
        };
        let mut out = FeedbackTotals::new();
        for (route, target, count, scored, score_sum) in totals {
            out.insert((route, target), FeedbackTotal { count, scored, score_sum, labels: BTreeMap::new() });
        }
        for (route, target, label, n) in labels {
            out.entry((route, target)).or_default().labels.insert(label, n);
        }
        Ok(out)
    }

    /// The stored profiles as their JSON texts (PostgreSQL); `None` on SQLite, whose profiles
    /// are a file.
    pub async fn profiles(&self) -> Result<Option<Vec<String>>, ConversationError> {
        let Some(pg) = self.postgres() else { return Ok(None) };
        let client = pg.client().await?;
        let rows = client.query("SELECT body FROM profiles ORDER BY name", &[]).await.map_err(|e| pg.error(e))?;
        Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
    }

    /// Stores (or replaces) profile `name` as `body` (PostgreSQL only: on SQLite, an error).
    pub async fn put_profile(&self, name: &str, body: &str) -> Result<(), ConversationError> {
        let Some(pg) = self.postgres() else {
            return Err(ConversationError::Postgres { url: self.inner.path.display().to_string(), reason: "profiles are kept in the database only on PostgreSQL".into() });
        };
        let client = pg.client().await?;
        client
            .execute(
                "INSERT INTO profiles (name, body, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
                &[&name, &body, &now_millis()],
            )
            .await
            .map_err(|e| pg.error(e))?;
        Ok(())
    }
}
