//! One KV pool shared by a model's slots: requests that together need more cells than the pool
//! holds all finish, one waiting (its cells given up) while the others use them, and its answer
//! ends by its own limit, not the pool's. The server's debug log shows that the pool did fill,
//! so the test cannot pass without exercising that path.

use serde_json::{json, Value};

use crate::support::{Server, SMOL};

/// A raw prompt of about 200 tokens, different for each `i`.
fn prompt(i: usize) -> String {
    let words: Vec<String> = (0..60).map(|k| format!("w{}", (k * 7 + i * 13) % 101)).collect();
    format!("List {i}: {}. Continue the list:", words.join(" "))
}

fn generate(s: &Server, i: usize) -> Value {
    let body = json!({"model": SMOL, "prompt": prompt(i), "raw": true, "stream": false,
        "options": {"temperature": 0, "num_predict": 150, "stop": []}});
    let r = s.post("/api/generate", &body);
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

#[test]
fn requests_needing_more_than_the_pool_all_finish() {
    // 512 cells for three requests of ~350 tokens each.
    let s = Server::start_with_env(&["--context-length", "512", "--parallel", "3"], &[("HEARTH_LOG", "hearth=debug")]);
    // These leave their sequences cached in the slots: room is first taken from those.
    let alone: Vec<Value> = (0..3).map(|i| generate(&s, i)).collect();
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|i| scope.spawn({ let s = &s; move || generate(s, i + 3) })).collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    let fresh: Vec<Value> = (3..6).map(|i| generate(&s, i)).collect();
    for (i, (t, f)) in together.iter().zip(&fresh).enumerate() {
        assert_eq!(t["done"], true, "request {i}: {t}");
        assert_eq!(t["prompt_eval_count"], f["prompt_eval_count"], "request {i}");
        // Cut short only by its own limit (or the model's end of text), never by the pool.
        let n = t["eval_count"].as_u64().expect("eval_count");
        match t["done_reason"].as_str() {
            Some("length") => assert_eq!(n, 150, "request {i}: {t}"),
            Some("stop") => assert!(n > 0, "request {i}: {t}"),
            other => panic!("request {i}: done_reason {other:?}"),
        }
    }
    assert!(alone.iter().all(|a| a["eval_count"].as_u64().unwrap_or(0) > 0));
    assert!(s.log_count("KV pool full") > 0, "the pool never filled: the test proves nothing");
}
