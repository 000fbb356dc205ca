//! Conversations and stored responses in PostgreSQL (`DATABASE_URL`) against the embedded
//! SQLite: the same checks on both, with the same results; two servers sharing one
//! PostgreSQL; and PostgreSQL stopped under load (503 with the reason, then answers again,
//! and no half turn stored). PostgreSQL is Debian's, initialised in a temporary directory and
//! run as the `postgres` user when the tests run as root, on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{run_python, temp_dir, Server, SMOL};

/// PostgreSQL's programs: `HEARTH_TEST_PG_BIN`, else Debian's newest installed version.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEARTH_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (scripts/test.sh installs Debian's postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("postgres").is_file())
        .collect();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    versions.pop().expect("no PostgreSQL under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: PathBuf) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server on a free loopback port, stopped (fast shutdown) when dropped.
struct Postgres {
    child: Option<Child>,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = temp_dir("postgres");
        if running_as_root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
                String::from_utf8_lossy(&out.stdout).trim().parse().expect("the postgres user exists")
            };
            std::os::unix::fs::chown(&dir, Some(id("-u")), Some(id("-g"))).expect("chown the PostgreSQL directory");
        }
        let data = dir.join("data");
        let status = as_postgres(pg_bin().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "hearth", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut pg = Postgres { child: None, data, port };
        pg.run();
        pg
    }

    fn run(&mut self) {
        let child = as_postgres(pg_bin().join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"])
            .arg("-k")
            .arg(self.data.parent().expect("dir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new(pg_bin().join("pg_isready")).args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"]).status().is_ok_and(|s| s.success()) {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT): connections are cut, the server exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("postgres://hearth@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A turn's HTTP status (0: no answer) and body.
type Seen = (u16, String);

fn turn(s: &Server, id: &str, text: &str) -> reqwest::blocking::Response {
    s.post("/api/chat", &json!({"model": SMOL, "conversation_id": id, "stream": false, "use_cache": false,
        "messages": [{"role": "user", "content": text}], "options": {"temperature": 0, "num_predict": 4}}))
}

fn roles(s: &Server, id: &str) -> Vec<String> {
    let c: Value = s.get(&format!("/api/conversations/{id}")).json().expect("conversation");
    c["messages"].as_array().expect("messages").iter().map(|m| m["role"].as_str().unwrap_or("").to_string()).collect()
}

/// A config with one route, `chat`, whose only target is SmolLM2.
fn route_config() -> PathBuf {
    let config = temp_dir("route").join("hearth.yaml");
    std::fs::write(&config, format!("routes:\n  chat:\n    strategy: fallback\n    targets:\n      - model: {SMOL}\n")).expect("write config");
    config
}

/// An answer through the `chat` route; its request id.
fn routed(s: &Server, text: &str) -> String {
    let resp = s.post("/api/chat", &json!({"model": "chat", "stream": false, "use_cache": false, "messages": [{"role": "user", "content": text}], "options": {"num_predict": 4}}));
    assert_eq!(resp.status(), 200);
    resp.headers()["x-request-id"].to_str().expect("id").to_string()
}

/// The `chat` route's target's feedback as `/api/routes` shows it.
fn route_feedback(s: &Server) -> Value {
    let routes: Value = s.get("/api/routes").json().expect("routes");
    routes["routes"][0]["targets"][0]["feedback"].clone()
}

fn tavern(s: &Server) -> u16 {
    s.post("/llm/generate", &json!({"prompt": "What's on the menu?", "scenario": "tavern"})).status().as_u16()
}

/// The same conversation, stored-response, profile and feedback work on a store; what it
/// leaves, as exact state.
fn suite(env: &[(&str, &str)]) -> Value {
    let ids_dir = temp_dir("suite");
    let ids = ids_dir.join("ids.json");
    let ids = ids.to_str().expect("utf8");
    let config = route_config();
    let args = ["--config", config.to_str().expect("utf8")];
    let answered = {
        let s = Server::start_with_env(&args, env);
        for t in 0..3 {
            assert_eq!(turn(&s, "c1", &format!("Turn {t}.")).status(), 200);
        }
        assert_eq!(turn(&s, "c2", "Hello.").status(), 200);
        let url = format!("http://{}/v1", s.addr);
        run_python("responses_client.py", &[("OPENAI_BASE_URL", &url), ("MODEL", SMOL), ("IDS_FILE", ids), ("PHASE", "first")]);
        let conf: Value = s.post("/llm/configure", &json!({"scenario": "tavern", "system": "You keep a tavern.", "temperature": 0, "max_tokens": 4})).json().expect("json");
        assert_eq!(conf["stored"], true, "{conf}");
        let id = routed(&s, "Rate me.");
        assert_eq!(s.post("/api/feedback", &json!({"request_id": id, "score": 1, "label": "good"})).status(), 200);
        id
    };
    // A restart: everything is still there.
    let s = Server::start_with_env(&args, env);
    let url = format!("http://{}/v1", s.addr);
    run_python("responses_client.py", &[("OPENAI_BASE_URL", &url), ("MODEL", SMOL), ("IDS_FILE", ids), ("PHASE", "second")]);
    assert_eq!(turn(&s, "c1", "Turn 3.").status(), 200);
    let list: Value = s.get("/api/conversations").json().expect("list");
    let listed: Vec<(String, u64)> = list["conversations"].as_array().expect("conversations").iter().map(|c| (c["id"].as_str().unwrap_or("").to_string(), c["message_count"].as_u64().unwrap_or(0))).collect();
    assert_eq!(s.client.delete(s.url("/api/conversations/c2")).send().expect("delete").status(), 200);
    let health: Value = s.get("/health").json().expect("health");
    // Feedback on an answer the server before the restart gave.
    let late_feedback = s.post("/api/feedback", &json!({"request_id": answered, "score": 0})).status().as_u16();
    json!({ "c1": roles(&s, "c1"), "listed": listed, "c2_after_delete": s.get("/api/conversations/c2").status().as_u16(), "database": health["database"],
            "profile": tavern(&s), "late_feedback": late_feedback, "feedback": route_feedback(&s) })
}

/// Polls `ok` for up to 30 s: what another server wrote in the background, or its periodic
/// read of the database, takes a moment to show.
fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn conversations_and_stored_responses_behave_alike_on_sqlite_and_postgresql() {
    let data = temp_dir("sqlite-suite");
    let sqlite = suite(&[("HEARTH_DATA", data.to_str().expect("utf8"))]);
    let pg = Postgres::start();
    let url = pg.url();
    let postgres = suite(&[("DATABASE_URL", &url)]);
    let alternating: Vec<&str> = ["user", "assistant"].iter().cycle().take(8).copied().collect();
    assert_eq!(sqlite["c1"], json!(alternating), "{sqlite}");
    assert_eq!(sqlite["listed"], json!([["c1", 8], ["c2", 2]]), "{sqlite}");
    assert_eq!(sqlite["c2_after_delete"], 404);
    assert_eq!((sqlite["database"].as_str(), postgres["database"].as_str()), (Some("sqlite"), Some("postgres")));
    assert_eq!((sqlite["profile"].as_u64(), sqlite["late_feedback"].as_u64()), (Some(200), Some(200)), "{sqlite}");
    assert_eq!(sqlite["feedback"], json!({"count": 2, "scored": 2, "mean_score": 0.5, "labels": {"good": 1}}), "{sqlite}");
    for key in ["c1", "listed", "c2_after_delete", "profile", "late_feedback", "feedback"] {
        assert_eq!(sqlite[key], postgres[key], "{key}: sqlite {sqlite} postgres {postgres}");
    }

    // Two servers on one PostgreSQL share conversations: a turn on one sees the other's.
    let (a, b) = (Server::start_with_env(&[], &[("DATABASE_URL", &url)]), Server::start_with_env(&[], &[("DATABASE_URL", &url)]));
    assert_eq!(turn(&a, "shared", "I am on the first server.").status(), 200);
    let r: Value = turn(&b, "shared", "And now on the second.").json().expect("json");
    assert_eq!(roles(&a, "shared"), ["user", "assistant", "user", "assistant"]);
    // The second server put the first server's turn in front of its prompt.
    let alone: Value = turn(&b, "alone", "And now on the second.").json().expect("json");
    assert!(r["prompt_eval_count"].as_u64() > alone["prompt_eval_count"].as_u64(), "{r} {alone}");
}

#[test]
fn servers_sharing_postgresql_share_profiles_feedback_and_one_turn_at_a_time() {
    let pg = Postgres::start();
    let url = pg.url();
    let config = route_config();
    let start = || Server::start_with_env(&["--config", config.to_str().expect("utf8")], &[("DATABASE_URL", &url)]);
    let (a, b) = (start(), start());

    // A profile stored through one server is used through the other.
    assert_eq!(tavern(&b), 404);
    let conf: Value = a.post("/llm/configure", &json!({"scenario": "tavern", "system": "You keep a tavern.", "temperature": 0, "max_tokens": 4})).json().expect("json");
    assert_eq!(conf["stored"], true, "{conf}");
    assert_eq!(tavern(&a), 200);
    eventually("the profile on the second server", || tavern(&b) == 200);

    // Feedback on the first server's answer, sent to the second, counts on both.
    let id = routed(&a, "Rate me.");
    eventually("the answer known to the second server", || b.post("/api/feedback", &json!({"request_id": id, "score": 0.25, "label": "meh"})).status() == 200);
    let expected = json!({"count": 1, "scored": 1, "mean_score": 0.25, "labels": {"meh": 1}});
    assert_eq!((route_feedback(&a), route_feedback(&b)), (expected.clone(), expected));

    // Six turns on one conversation at once, three through each server: each sees every
    // turn stored before it, so no two prompts have the same length.
    let prompts: Vec<u64> = std::thread::scope(|scope| {
        let threads: Vec<_> = [&a, &b, &a, &b, &a, &b]
            .into_iter()
            .map(|s| scope.spawn(move || turn(s, "busy", "Next.").json::<Value>().expect("json")["prompt_eval_count"].as_u64().expect("prompt count")))
            .collect();
        threads.into_iter().map(|t| t.join().expect("turn")).collect()
    });
    let mut distinct = prompts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "two turns read the same history: {prompts:?}");
    assert_eq!(roles(&a, "busy").len(), 12);
}

#[test]
fn postgresql_stopped_under_load_gives_503_then_answers_and_stores_no_half_turn() {
    let mut pg = Postgres::start();
    let url = pg.url();
    let s = Server::start_with_env(&[], &[("DATABASE_URL", &url)]);
    let stop = Arc::new(AtomicBool::new(false));
    // Each turn's status and body, in order.
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let load = {
        let (stop, seen, client, url) = (stop.clone(), seen.clone(), s.client.clone(), s.url("/api/chat"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let body = json!({"model": SMOL, "conversation_id": "busy", "stream": false, "use_cache": false,
                    "messages": [{"role": "user", "content": format!("Turn {n}.")}], "options": {"num_predict": 4}});
                let (status, text) = match client.post(&url).json(&body).send() {
                    Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                seen.lock().expect("lock").push((status, text));
                if status != 200 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let wait_until = |what: &str, ok: &dyn Fn(&[Seen]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ok(&seen.lock().expect("lock")) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", seen.lock().expect("lock"));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let count = |v: &[Seen], status: u16| v.iter().filter(|(s, _)| *s == status).count();
    wait_until("two answers", &|v| count(v, 200) >= 2);
    pg.stop();
    wait_until("two refusals", &|v| count(v, 503) >= 2);
    // Reading a conversation while the database is down: 503 with the reason, Retry-After.
    let resp = s.get("/api/conversations/busy");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.text().expect("body").contains("unavailable"));
    let ok_before = count(&seen.lock().expect("lock"), 200);
    pg.run();
    wait_until("two answers after the restart", &|v| count(v, 200) >= ok_before + 2);
    stop.store(true, Ordering::Release);
    load.join().expect("load thread");

    let seen = seen.lock().expect("lock");
    // Every request was answered or refused with 503 naming the database: nothing else.
    for (status, body) in seen.iter() {
        assert!(*status == 200 || (*status == 503 && body.contains("database")), "{status}: {body}");
    }
    // Each answered turn is stored whole, and nothing of a refused one.
    let stored = roles(&s, "busy");
    assert_eq!(stored.len(), 2 * count(&seen, 200), "{stored:?}");
    assert!(stored.chunks(2).all(|t| t == ["user", "assistant"]), "{stored:?}");
}

#[test]
fn servers_sharing_postgresql_count_a_keys_usage_together() {
    let pg = Postgres::start();
    let url = pg.url();
    let (key, entry) = crate::security::new_key("team", "generate");
    let config = temp_dir("usage").join("hearth.yaml");
    std::fs::write(&config, format!("database:\n  url: {url}\nauth:\n  keys:\n{entry}")).expect("write config");
    let start = || Server::start_with(&["--config", config.to_str().expect("utf8")]);
    let (a, b) = (start(), start());
    let post = |s: &Server, model: &str| {
        s.client
            .post(s.url("/api/chat"))
            .bearer_auth(&key)
            .json(&json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "Hi."}], "options": {"num_predict": 4}}))
            .send()
            .expect("request")
    };
    // Two requests on the first server (refused as unknown models after admission), one
    // answered on the second.
    assert_eq!(post(&a, "no-such-model").status(), 404);
    assert_eq!(post(&a, "no-such-model").status(), 404);
    let answered: Value = post(&b, SMOL).json().expect("answer");
    let (prompt, completion) = (answered["prompt_eval_count"].as_u64().expect("prompt"), answered["eval_count"].as_u64().expect("eval"));
    // Either server shows all three requests and the answer's tokens (counted in the
    // background, so wait for them).
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = s.client.get(s.url("/api/usage")).bearer_auth(&key).send().expect("usage").json().expect("json");
            let u = &v["keys"][0]["usage"];
            let seen = (u["requests"].as_u64(), u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
            if seen == (Some(3), Some(prompt), Some(completion)) {
                break;
            }
            assert!(Instant::now() < deadline, "usage never reached 3 requests, {prompt}+{completion} tokens: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
