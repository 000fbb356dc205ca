//! The conversation store's tests: a real SQLite file in a temporary directory.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hearth-conversations-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn msgs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(r, c)| ((*r).to_owned(), (*c).to_owned())).collect()
}

fn contents(history: &[StoredMessage]) -> Vec<(&str, &str)> {
    history.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect()
}

fn message_rows(store: &ConversationStore, id: &str) -> i64 {
    let Db::Sqlite(conn) = &store.inner.db else { panic!("a SQLite store") };
    let conn = conn.lock().expect("connection lock");
    conn.query_row("SELECT COUNT(*) FROM messages WHERE conversation_id = ?1", [id], |r| r.get(0))
        .expect("count messages")
}

#[tokio::test]
async fn append_keeps_order_across_appends() {
    let dir = TempDir::new("order");
    let store = ConversationStore::open(&dir.0).expect("open");
    store.append("chat-1", "m1", msgs(&[("user", "hi"), ("assistant", "hello")])).await.expect("append");
    store.append("chat-1", "m2", msgs(&[("user", "again"), ("assistant", "yes")])).await.expect("append");
    let history = store.history("chat-1").await.expect("history");
    assert_eq!(
        contents(&history),
        [("user", "hi"), ("assistant", "hello"), ("user", "again"), ("assistant", "yes")]
    );
    assert!(store.history("unknown").await.expect("history").is_empty());

    let conv = store.get("chat-1").await.expect("get").expect("exists");
    assert_eq!(conv.model.as_deref(), Some("m2"));
    assert_eq!(conv.messages, history);
    assert!(conv.updated_at >= conv.created_at);
    assert!(store.get("nope").await.expect("get").is_none());
}

#[tokio::test]
async fn history_survives_reopening() {
    let dir = TempDir::new("reopen");
    {
        let store = ConversationStore::open(&dir.0).expect("open");
        store.append("persist", "m", msgs(&[("user", "remember me")])).await.expect("append");
    }
    let store = ConversationStore::open(&dir.0).expect("reopen");
    let history = store.history("persist").await.expect("history");
    assert_eq!(contents(&history), [("user", "remember me")]);
    store.append("persist", "m", msgs(&[("assistant", "I do")])).await.expect("append");
    assert_eq!(store.history("persist").await.expect("history").len(), 2);
}

#[tokio::test]
async fn delete_cascades_and_reports_existence() {
    let dir = TempDir::new("delete");
    let store = ConversationStore::open(&dir.0).expect("open");
    store.append("gone", "m", msgs(&[("user", "a"), ("assistant", "b")])).await.expect("append");
    store.append("kept", "m", msgs(&[("user", "c")])).await.expect("append");
    assert_eq!(message_rows(&store, "gone"), 2);
    assert!(store.delete("gone").await.expect("delete"));
    assert_eq!(message_rows(&store, "gone"), 0, "messages must cascade");
    assert!(!store.delete("gone").await.expect("delete again"));
    assert_eq!(message_rows(&store, "kept"), 1);
}

#[tokio::test]
async fn list_is_newest_first_with_counts() {
    let dir = TempDir::new("list");
    let store = ConversationStore::open(&dir.0).expect("open");
    store.append("older", "m1", msgs(&[("user", "a")])).await.expect("append");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.append("newer", "m2", msgs(&[("user", "b"), ("assistant", "c")])).await.expect("append");
    let all = store.list(10).await.expect("list");
    let ids: Vec<_> = all.iter().map(|s| (s.id.as_str(), s.message_count)).collect();
    assert_eq!(ids, [("newer", 2), ("older", 1)]);
    assert_eq!(all[0].model.as_deref(), Some("m2"));
    assert_eq!(store.list(1).await.expect("list").len(), 1);
}

#[test]
fn invalid_ids_are_refused() {
    let long = "a".repeat(MAX_ID_CHARS + 1);
    for bad in ["../x", "", long.as_str(), "has space", "a/b", "é"] {
        let err = validate_id(bad).expect_err(bad);
        assert!(matches!(err, ConversationError::InvalidId { .. }), "{bad}: {err}");
    }
    assert!(validate_id("").expect_err("empty").to_string().contains("A-Z a-z 0-9"));
    assert!(validate_id(&long).expect_err("long").to_string().contains("128"));
    for good in ["a", "user@example.com", "tg:12345", "A-b_c.d", &"z".repeat(MAX_ID_CHARS)] {
        validate_id(good).expect(good);
    }
}

#[tokio::test]
async fn store_methods_refuse_invalid_ids() {
    let dir = TempDir::new("badid");
    let store = ConversationStore::open(&dir.0).expect("open");
    let err = store.append("../x", "m", msgs(&[("user", "a")])).await.expect_err("refused");
    assert!(matches!(err, ConversationError::InvalidId { .. }));
    assert!(store.get("a b").await.is_err());
    assert!(store.list(10).await.expect("list").is_empty());
}

#[tokio::test]
async fn wal_mode_and_pragmas_are_set() {
    let dir = TempDir::new("wal");
    let store = ConversationStore::open(&dir.0).expect("open");
    let Db::Sqlite(conn) = &store.inner.db else { panic!("a SQLite store") };
    let conn = conn.lock().expect("connection lock");
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).expect("mode");
    assert_eq!(mode, "wal");
    let fk: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).expect("fk");
    assert_eq!(fk, 1);
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = TempDir::new("schema");
    drop(ConversationStore::open(&dir.0).expect("open"));
    {
        let conn = Connection::open(dir.0.join(DB_FILE)).expect("raw open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bump");
    }
    let err = ConversationStore::open(&dir.0).expect_err("newer schema");
    assert!(matches!(err, ConversationError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade hearth"), "{err}");
}

#[tokio::test]
async fn append_drops_the_oldest_past_the_limit() {
    let dir = TempDir::new("limit");
    let store = ConversationStore::open(&dir.0).expect("open");
    let first: Vec<_> = (0..MAX_MESSAGES - 2).map(|i| ("user".to_owned(), i.to_string())).collect();
    store.append("big", "m", first).await.expect("append");
    let more: Vec<_> = (0..5).map(|i| ("assistant".to_owned(), format!("new{i}"))).collect();
    store.append("big", "m", more).await.expect("append");
    let history = store.history("big").await.expect("history");
    assert_eq!(history.len(), MAX_MESSAGES);
    assert_eq!(history[0].content, "3", "the three oldest go");
    assert_eq!(history[MAX_MESSAGES - 1].content, "new4");
    assert_eq!(store.list(1).await.expect("list")[0].message_count, MAX_MESSAGES as u64);
}

#[tokio::test]
async fn turns_serialize_per_conversation() {
    let dir = TempDir::new("turn");
    let store = ConversationStore::open(&dir.0).expect("open");
    let first = store.turn("a").await.expect("turn");

    // A second turn on "a" must wait; one on "b" must not.
    let waiting = tokio::time::timeout(Duration::from_millis(50), store.turn("a")).await;
    assert!(waiting.is_err(), "turn(\"a\") was granted while another was held");
    let other = tokio::time::timeout(Duration::from_secs(5), store.turn("b")).await;
    let other = other.expect("turn(\"b\") must not wait for \"a\"").expect("turn");

    let first_done = Arc::new(AtomicBool::new(false));
    let second = tokio::spawn({
        let store = store.clone();
        let first_done = Arc::clone(&first_done);
        async move {
            let _turn = store.turn("a").await.expect("turn");
            let saw_flag = first_done.load(Ordering::SeqCst);
            let history = store.history("a").await.expect("history");
            store.append("a", "m", msgs(&[("user", "second")])).await.expect("append");
            (saw_flag, history.len())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.append("a", "m", msgs(&[("user", "first")])).await.expect("append");
    first_done.store(true, Ordering::SeqCst);
    drop(first);

    let (saw_flag, history_len) = second.await.expect("second turn");
    assert!(saw_flag, "second turn ran before the first released");
    assert_eq!(history_len, 1, "second turn must see the first turn's append");
    let history = store.history("a").await.expect("history");
    assert_eq!(contents(&history), [("user", "first"), ("user", "second")]);
    drop(other);
}

#[tokio::test]
async fn turn_map_is_pruned_after_guards_drop() {
    let dir = TempDir::new("prune");
    let store = ConversationStore::open(&dir.0).expect("open");
    let map_len = || store.inner.turns.lock().expect("turn map").len();

    let a = store.turn("a").await.expect("turn");
    let b = store.turn("b").await.expect("turn");
    assert_eq!(map_len(), 2);

    // A waiter keeps the entry alive after the holder leaves, then takes it over.
    let waiter = tokio::spawn({
        let store = store.clone();
        async move {
            let _turn = store.turn("a").await.expect("turn");
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(a);
    waiter.await.expect("waiter");
    drop(b);
    assert_eq!(map_len(), 0, "entries must go once nobody holds or waits");

    // A waiter cancelled after the lock was handed to it leaves an entry nobody refers to;
    // the next turn sweeps it.
    store.inner.turns.lock().expect("turn map").insert("stale".to_owned(), Arc::default());
    let _d = store.turn("d").await.expect("turn");
    let keys: Vec<String> = store.inner.turns.lock().expect("turn map").keys().cloned().collect();
    assert_eq!(keys, ["d"]);
}

// ---------------------------------------------------------------- stored responses

fn turn(q: &str, a: &str) -> TurnMessages {
    vec![("user".into(), q.into()), ("assistant".into(), a.into())]
}

#[tokio::test]
async fn chains_read_back_oldest_first_and_survive_a_reopen() {
    let dir = TempDir::new("responses");
    let store = ConversationStore::open(&dir.0).expect("open");
    store.put_response("resp_1", None, turn("q1", "a1"), "{\"id\":\"resp_1\"}".into()).await.expect("put");
    store.put_response("resp_2", Some("resp_1"), turn("q2", "a2"), "{}".into()).await.expect("put");
    // A branch from the first response.
    store.put_response("resp_3", Some("resp_1"), turn("q3", "a3"), "{}".into()).await.expect("put");
    drop(store);
    let store = ConversationStore::open(&dir.0).expect("reopen");
    let chain = store.response_chain("resp_2").await.expect("chain").expect("stored");
    let contents: Vec<&str> = chain.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["q1", "a1", "q2", "a2"]);
    let branch = store.response_chain("resp_3").await.expect("chain").expect("stored");
    assert_eq!(branch.len(), 4);
    assert_eq!(branch[2].1, "q3");
    assert_eq!(store.response("resp_1").await.expect("get").as_deref(), Some("{\"id\":\"resp_1\"}"));
    assert!(store.response_chain("resp_9").await.expect("chain").is_none());
    assert!(store.delete_response("resp_1").await.expect("delete"));
    assert!(!store.delete_response("resp_1").await.expect("delete"));
    // The chain stops where a response was deleted.
    let cut = store.response_chain("resp_2").await.expect("chain").expect("stored");
    assert_eq!(cut.len(), 2);
    assert!(store.response("bad id!").await.is_err());
}
