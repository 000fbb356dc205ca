//! The page at `/ui` in a real headless Chromium, driven through the DevTools protocol against
//! a real server and SmolLM2: it loads with no console errors; a message streams an answer; a
//! stop cancels the generation on the server; a conversation survives a reload and is deleted;
//! a pull shows its progress; load and unload; the live view shows what `/api/ps` and
//! `/api/metrics` say; with API keys the page asks for one once and keeps it in the tab; and
//! the page may call its own server by address while a page of another origin may not.
//!
//! With `HEARTH_SCREENSHOTS=DIR` each view is saved there as a PNG (the README's come from it).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::file_server::FileServer;
use crate::support::{model_path, temp_dir, Server, SMOL};

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("HEARTH_SCREENSHOTS").map(PathBuf::from)
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

/// Types `text` into the composer and sends it.
fn send(b: &mut Browser, text: &str) {
    b.eval(&format!("document.getElementById('prompt').value = {}; document.getElementById('composer').requestSubmit(); true", js(text)));
}

fn set(b: &mut Browser, id: &str, value: &str) {
    b.eval(&format!("(() => {{ const e = document.getElementById({}); e.value = {}; e.dispatchEvent(new Event('change')); return true; }})()", js(id), js(value)));
}

/// How many requests the server is running on `model` (its leases), from `/health`.
fn running(s: &Server) -> u64 {
    let h: Value = s.get("/health").json().expect("health");
    h["models"].as_array().into_iter().flatten().filter(|m| m["name"] == SMOL).filter_map(|m| m["requests"].as_u64()).sum()
}

#[test]
fn the_page_chats_stops_on_the_server_and_keeps_a_conversation_across_a_reload() {
    let s = Server::start();
    let mut b = Browser::start();
    // A browser opening the server lands on the page.
    b.open(&format!("http://{}/", s.addr));
    assert_eq!(b.eval("location.pathname"), json!("/ui"));
    // Reported, not asserted: the first paint as the browser timed it.
    let paint = b.eval("performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint')?.startTime ?? null");
    eprintln!("ui: first contentful paint {paint} ms");
    b.wait_for("SmolLM2 offered", &format!("[...document.getElementById('model').options].some(o => o.value === {})", js(SMOL)));
    set(&mut b, "model", SMOL);
    set(&mut b, "temperature", "0");
    set(&mut b, "num-predict", "8");
    let id = b.eval("document.getElementById('conversation-id').textContent").as_str().expect("id").to_string();

    send(&mut b, "Say hello.");
    b.wait_for("the answer", "document.querySelector('.msg.assistant[data-state=done]')");
    let stats = b.eval("document.querySelector('.msg.assistant .stats').textContent").as_str().expect("stats").to_string();
    assert!(stats.contains("tokens/s") && stats.contains("first token"), "{stats}");
    let shown = b.eval("Number(document.querySelector('.msg.assistant .stats').dataset.evalCount)").as_u64().expect("count");
    let stored: Value = s.get(&format!("/api/conversations/{id}")).json().expect("conversation");
    let roles: Vec<&str> = stored["messages"].as_array().expect("messages").iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert!((1..=8).contains(&shown), "{shown}");
    b.wait_for("the conversation listed", &format!("document.querySelector('#conversation-list li[data-id={}]')", js(&id)));
    b.screenshot(screenshots().as_deref(), "chat");

    // A reload keeps the tab's conversation: the same id, its two messages from the server.
    b.reload();
    b.wait_for("the conversation resumed", "document.querySelectorAll('#messages .msg').length === 2");
    assert_eq!(b.eval("document.getElementById('conversation-id').textContent"), json!(id));

    // A long answer, stopped once it streams: the server lets go of the model, and the
    // conversation keeps only the finished turn.
    // Greedy, so the answer is the same on every run on a CPU (a sampled one may end early).
    set(&mut b, "num-predict", "3000");
    set(&mut b, "temperature", "0");
    send(&mut b, "Count from 1 to 2000, one number per line.");
    b.wait_for("the answer streaming", "(document.querySelector('.msg.assistant[data-state=streaming] .body')?.textContent.length ?? 0) > 20");
    assert_eq!(running(&s), 1, "the answer runs on the server");
    b.eval("document.getElementById('stop').click(); true");
    b.wait_for("the answer stopped", "document.querySelector('.msg.assistant[data-state=stopped]')");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running(&s) != 0 {
        assert!(std::time::Instant::now() < deadline, "the generation kept running after stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stored: Value = s.get(&format!("/api/conversations/{id}")).json().expect("conversation");
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(2), "{stored}");

    // Deleting it from the list deletes it on the server.
    b.eval(&format!("document.querySelector('#conversation-list li[data-id={}] .delete').click(); true", js(&id)));
    b.wait_for("the conversation gone from the list", &format!("!document.querySelector('#conversation-list li[data-id={}]')", js(&id)));
    assert_eq!(s.get(&format!("/api/conversations/{id}")).status(), 404);
    assert_ne!(b.eval("document.getElementById('conversation-id').textContent"), json!(id), "a new conversation starts");
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
}

#[test]
fn the_models_view_pulls_with_progress_loads_and_unloads_and_the_live_view_matches_the_server() {
    let files = FileServer::start(model_path(SMOL));
    // About 1.5 s for the download, so it reports progress on its way (every 200 ms).
    files.pace_us.store(1000, std::sync::atomic::Ordering::SeqCst);
    let dir = temp_dir("ui-models");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).expect("models dir");
    std::os::unix::fs::symlink(model_path(SMOL), models.join(format!("{SMOL}.gguf"))).expect("link the model");
    let config = dir.join("hearth.yaml");
    std::fs::write(&config, format!("pull:\n  allow: [127.0.0.1]\nroutes:\n  chat:\n    strategy: fallback\n    targets:\n      - model: {SMOL}\n")).expect("config");
    let s = Server::start_with_env(&["--models", models.to_str().expect("utf8"), "--config", config.to_str().expect("utf8")], &[("OLLAMA_MODELS", dir.join("no-ollama").to_str().expect("utf8"))]);
    let mut b = Browser::start();
    b.open(&format!("http://{}/ui#models", s.addr));
    let row = |name: &str| format!("document.querySelector('#model-table tr[data-model={}]')", js(name));
    b.wait_for("SmolLM2 listed", &row(SMOL));
    let estimate = b.eval(&format!("Number({}.querySelector('.estimate').dataset.bytes)", row(SMOL))).as_u64().expect("estimate");
    let show: Value = s.post("/api/show", &json!({"model": SMOL})).json().expect("show");
    assert_eq!(Some(estimate), show["ram_estimate"]["total"].as_u64());

    // A pull: every progress value the bar takes is recorded, then the new model is listed.
    b.eval("window.seen = []; new MutationObserver(() => seen.push(document.getElementById('pull-progress').value)).observe(document.getElementById('pull-progress'), { attributes: true }); true");
    set(&mut b, "pull-name", &files.url("pulled.gguf"));
    set(&mut b, "pull-as", "pulled");
    b.eval("document.getElementById('pull-form').requestSubmit(); true");
    b.wait_for("the pull to finish", "document.getElementById('pull-status').textContent === 'success'");
    let seen: Vec<f64> = serde_json::from_value(b.eval("seen")).expect("values");
    assert!(seen.iter().any(|v| *v > 0.0 && *v < 1.0), "no progress between 0 and 1: {seen:?}");
    assert_eq!(seen.last(), Some(&1.0), "{seen:?}");
    b.wait_for("the pulled model listed", &row("pulled:latest"));

    // Load: the row says until when; the live view shows the model's share of the budget.
    b.eval(&format!("{}.querySelector('button.load').click(); true", row(SMOL)));
    b.wait_for("SmolLM2 loaded", &format!("{}?.querySelector('[data-loaded=true]')", row(SMOL)));
    assert!(b.eval(&format!("{}.querySelector('.loaded').textContent", row(SMOL))).as_str().is_some_and(|t| t.starts_with("until ")));
    b.screenshot(screenshots().as_deref(), "models");
    let answered = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hello.", "stream": false, "options": {"num_predict": 4, "temperature": 0}}));
    assert_eq!(answered.status(), 200);
    // The same request again: a cache hit. And one through the route.
    assert_eq!(s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hello.", "stream": false, "options": {"num_predict": 4, "temperature": 0}})).status(), 200);
    assert_eq!(s.post("/api/generate", &json!({"model": "chat", "prompt": "Hi.", "stream": false, "options": {"num_predict": 4}})).status(), 200);
    b.eval("location.hash = 'live'; true");
    let ps: Value = s.get("/api/ps").json().expect("ps");
    let metrics: Value = s.get("/api/metrics").json().expect("metrics");
    let size = ps["models"][0]["size"].as_u64().expect("size");
    let expected = json!({
        "budget": ps["ram_budget"].to_string(), "used": ps["ram_used"].to_string(), "model": [SMOL, size.to_string()],
        "hit": metrics["cache"]["hit"].to_string(), "miss": metrics["cache"]["miss"].to_string(), "loaded": metrics["loaded_models"].to_string(),
    });
    // Keys in serde_json's (sorted) order, so the two texts compare.
    let shown = "(() => { const bar = document.getElementById('ram-bar'); const seg = bar.querySelector('span'); const c = document.getElementById('live-cache').dataset;
        return { budget: bar.dataset.budget, hit: c.hit, loaded: document.getElementById('live-loaded').textContent, miss: c.miss,
                 model: seg ? [seg.dataset.model, seg.dataset.bytes] : null, used: bar.dataset.used }; })()";
    b.wait_for("the live view to match /api/ps and /api/metrics", &format!("JSON.stringify({shown}) === {}", js(&expected.to_string())));
    assert_eq!(metrics["cache"]["hit"], 1, "{metrics}");
    // The Prometheus text says the same.
    let text = s.get("/metrics").text().expect("metrics");
    assert!(text.lines().any(|l| l == "hearth_cache_requests_total{result=\"hit\"} 1"), "{text}");
    // The route's row shows what /api/routes counts; the charts hold the server's buckets.
    let routes: Value = s.get("/api/routes").json().expect("routes");
    let served = routes["routes"][0]["targets"][0]["requests"].as_u64().expect("requests");
    assert_eq!(served, 1);
    b.wait_for("the route's row", &format!("document.querySelector('#route-table tr[data-route=chat] .requests')?.textContent === '{served}'"));
    let named: u64 = metrics["requests"].as_array().expect("requests").iter().filter(|r| r["model"] != "none").filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(metrics["recent"]["requests"].as_array().map(|r| r.iter().filter_map(Value::as_u64).sum::<u64>()), Some(named), "{metrics}");
    b.screenshot(screenshots().as_deref(), "live");

    // Unload and delete the pulled model from the models view.
    b.eval("location.hash = 'models'; true");
    b.wait_for("the unload button", &format!("{}?.querySelector('button.unload')", row(SMOL)));
    b.eval(&format!("{}.querySelector('button.unload').click(); true", row(SMOL)));
    b.wait_for("SmolLM2 unloaded", &format!("{}?.querySelector('[data-loaded=false]')", row(SMOL)));
    let ps: Value = s.get("/api/ps").json().expect("ps");
    assert_eq!(ps["models"], json!([]));
    b.eval(&format!("{}.querySelector('button.delete').click(); true", row("pulled:latest")));
    b.eval(&format!("{}.querySelector('button.delete').click(); true", row("pulled:latest")));
    b.wait_for("the pulled model gone", &format!("!{}", row("pulled:latest")));
    let tags: Value = s.get("/api/tags").json().expect("tags");
    let names: Vec<&str> = tags["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, [SMOL, "chat"]);
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
}

#[test]
fn with_api_keys_the_page_is_served_asks_for_a_key_once_and_keeps_it_in_the_tab() {
    let (key, entry) = crate::security::new_key("browser", "generate,models:read,metrics");
    let config = temp_dir("ui-keys").join("hearth.yaml");
    std::fs::write(&config, format!("auth:\n  keys:\n{entry}")).expect("config");
    let s = Server::start_with(&["--config", config.to_str().expect("utf8")]);
    // The page's files need no key and carry the policy; the API still does.
    let page = s.get("/ui");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().expect("csp").to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(s.get("/api/tags").status(), 401);
    assert_eq!(s.get("/").status(), 401, "an API client still needs a key for /");

    let mut b = Browser::start();
    b.open(&format!("http://{}/", s.addr));
    b.wait_for("the key dialog", "document.getElementById('key-dialog').open");
    b.eval(&format!("document.getElementById('key-input').value = {}; document.getElementById('key-form').requestSubmit(); true", js(&key)));
    b.wait_for("the models listed with the key", &format!("[...document.getElementById('model').options].some(o => o.value === {})", js(SMOL)));
    assert_eq!(b.eval("sessionStorage.getItem('hearth-api-key')"), json!(key));
    assert_eq!(b.eval("localStorage.length"), json!(0), "nothing kept beyond the tab");
    // A reload asks no more.
    b.reload();
    b.wait_for("the models listed again", &format!("[...document.getElementById('model').options].some(o => o.value === {})", js(SMOL)));
    assert_eq!(b.eval("document.getElementById('key-dialog').open"), json!(false));
    // The only errors are the first calls' 401s, before the key was given.
    assert!(b.errors.iter().all(|e| e.contains("401")), "{:?}", b.errors);
}

#[test]
fn the_page_may_call_its_own_server_by_address_but_a_foreign_origin_may_not() {
    let s = Server::start();
    let port = s.addr.rsplit(':').next().expect("port");
    // 127.0.0.2 is a loopback address outside the default origin list: only same-origin lets
    // the page opened there call the API.
    let call = |origin: &str| {
        s.client.get(s.url("/api/tags")).header("host", format!("127.0.0.2:{port}")).header("origin", origin).send().expect("request").status().as_u16()
    };
    assert_eq!(call(&format!("http://127.0.0.2:{port}")), 200);
    assert_eq!(call("http://127.0.0.2:1"), 403, "another port is another origin");
    assert_eq!(call(&format!("http://127.0.0.3:{port}")), 403, "another address is another origin");
}
