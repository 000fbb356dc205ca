//! Embeddings through the real binary: `/api/embed` with strings and lists on both test models,
//! `dimensions`, truncation, bad requests, an embed request while a chat streams on the same
//! instance, the legacy `/api/embeddings`, memory against the estimate, and the official client.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use serde_json::{json, Value};

use crate::support::{Server, GEMMA, SMOL};

fn embed(s: &Server, body: Value) -> Value {
    let r = s.post("/api/embed", &body);
    assert_eq!(r.status(), 200, "status for {body}");
    r.json().expect("json")
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|e| e.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number")).collect())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The model's width, from `/api/show`.
fn n_embd(s: &Server, model: &str) -> usize {
    let v: Value = s.post("/api/show", &json!({"model": model})).json().expect("json");
    let info = v["model_info"].as_object().expect("model_info");
    let width = info
        .iter()
        .find(|(k, _)| k.ends_with(".embedding_length"))
        .and_then(|(_, v)| v.as_u64())
        .expect("embedding_length");
    usize::try_from(width).expect("width")
}

/// The same input embedded alone or in a list must give the same vector. llama.cpp's CPU
/// kernels pick their code path by the batch's row count, so a vector computed in a bigger
/// decode can differ in the last digits (measured up to 1e-2 per component on gemma3, cosine
/// 0.9995); a mixed-up or corrupted sequence would be far off (different texts: cosine < 0.9).
fn assert_same_vector(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: widths differ");
    assert!(dot(a, b) > 0.999, "{what}: cosine {} (max diff {})", dot(a, b), max_diff(a, b));
    assert!(max_diff(a, b) < 2e-2, "{what}: max diff {}", max_diff(a, b));
}

#[test]
fn embed_gives_unit_vectors_per_input_on_both_models() {
    let s = Server::start();
    let texts = ["The cat sat on the mat.", "Quarterly revenue grew by nine percent.", "Bonjour"];
    for model in [SMOL, GEMMA] {
        let width = n_embd(&s, model);
        let one = embed(&s, json!({"model": model, "input": texts[0]}));
        assert_eq!(one["model"], model);
        for k in ["total_duration", "load_duration", "prompt_eval_count"] {
            assert!(one[k].as_u64().is_some(), "{k} missing in {one}");
        }
        assert!(one["prompt_eval_count"].as_u64().is_some_and(|n| n > 0));
        let single = vectors(&one);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].len(), width, "{model}: one vector of the model's width");
        assert!((norm(&single[0]) - 1.0).abs() < 1e-3, "{model}: norm {}", norm(&single[0]));

        let list = embed(&s, json!({"model": model, "input": texts}));
        let batch = vectors(&list);
        assert_eq!(batch.len(), 3);
        let mut prompt_tokens = 0;
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(batch[i].len(), width);
            assert!((norm(&batch[i]) - 1.0).abs() < 1e-3, "{model} input {i}: norm {}", norm(&batch[i]));
            let alone = embed(&s, json!({"model": model, "input": text}));
            prompt_tokens += alone["prompt_eval_count"].as_u64().expect("count");
            assert_same_vector(&batch[i], &vectors(&alone)[0], &format!("{model} input {i} in a list vs alone"));
        }
        assert_eq!(list["prompt_eval_count"].as_u64(), Some(prompt_tokens), "{model}: tokens add up");
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            assert!(dot(&batch[i], &batch[j]) < 0.99, "{model}: inputs {i} and {j} should differ");
        }
    }
    // Both models stay loaded side by side and each made one embedding context.
    assert_eq!(s.log_count("embedding context ready"), 2);
}

#[test]
fn a_long_input_fed_over_several_decodes_matches_itself_in_a_batch() {
    // Longer than one embedding decode (160 tokens for smollm2), so it is pooled from pieces.
    let s = Server::start();
    let long: String = (0..60).map(|i| format!("Sentence {i} talks about topic {}. ", i % 7)).collect();
    let alone = vectors(&embed(&s, json!({"model": SMOL, "input": long})));
    let mixed = embed(&s, json!({"model": SMOL, "input": ["short", long, "another short one"]}));
    assert!(mixed["prompt_eval_count"].as_u64().is_some_and(|n| n > 400), "{}", mixed["prompt_eval_count"]);
    let mixed = vectors(&mixed);
    assert!((norm(&mixed[1]) - 1.0).abs() < 1e-3);
    assert_same_vector(&alone[0], &mixed[1], "long input alone vs at another offset in a batch");
}

#[test]
fn dimensions_keep_the_first_ones_renormalized() {
    let s = Server::start();
    let full = vectors(&embed(&s, json!({"model": SMOL, "input": "Dimensions test"})));
    let short = vectors(&embed(&s, json!({"model": SMOL, "input": "Dimensions test", "dimensions": 64})));
    assert_eq!(short[0].len(), 64);
    assert!((norm(&short[0]) - 1.0).abs() < 1e-3);
    let head = &full[0][..64];
    let expected: Vec<f64> = head.iter().map(|x| x / norm(head)).collect();
    assert!(max_diff(&short[0], &expected) < 1e-4, "max diff {}", max_diff(&short[0], &expected));
    // The whole width is allowed too.
    let width = n_embd(&s, SMOL);
    assert_eq!(vectors(&embed(&s, json!({"model": SMOL, "input": "x", "dimensions": width})))[0].len(), width);
}

#[test]
fn bad_embed_requests_are_client_errors_and_the_server_stays_up() {
    let s = Server::start();
    let long = "word ".repeat(300);
    let width = n_embd(&s, SMOL);
    let cases = [
        (json!({"input": "x"}), 400, "model is required"),
        (json!({"model": "no-such-model", "input": "x"}), 404, "not found"),
        (json!({"model": SMOL, "input": "x", "dimensions": 0}), 400, "dimensions"),
        (json!({"model": SMOL, "input": "x", "dimensions": width + 1}), 400, "dimensions"),
        (json!({"model": SMOL, "input": 5}), 400, "invalid input type"),
        (json!({"model": SMOL, "input": ["ok", 7]}), 400, "invalid input type"),
        (json!({"model": SMOL, "input": long, "truncate": false, "options": {"num_ctx": 64}}), 400, "64"),
    ];
    for (body, status, needle) in cases {
        let r = s.post("/api/embed", &body);
        assert_eq!(r.status().as_u16(), status, "status for {body}");
        let v: Value = r.json().expect("json error body");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: error {msg:?} should mention {needle:?}");
    }
    let tokens = embed(&s, json!({"model": SMOL, "input": long}))["prompt_eval_count"].as_u64().expect("count");
    let too_long = s.post("/api/embed", &json!({"model": SMOL, "input": long, "truncate": false, "options": {"num_ctx": 64}}));
    let msg = too_long.json::<Value>().expect("json")["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains(&format!("{tokens} tokens")) && msg.contains("64"), "names both sizes: {msg}");
    // By default the input is cut to the context instead.
    let cut = embed(&s, json!({"model": SMOL, "input": long, "options": {"num_ctx": 64}}));
    assert_eq!(cut["prompt_eval_count"], 64);
    assert_eq!(vectors(&cut)[0].len(), width);
    // An empty string or list embeds nothing, as in Ollama (it only loads the model).
    for input in [json!(""), json!([])] {
        let v = embed(&s, json!({"model": SMOL, "input": input}));
        assert_eq!(v["embeddings"], json!([]));
    }
    assert!(s.alive());
}

#[test]
fn embedding_while_a_chat_streams_reuses_the_loaded_instance() {
    let s = std::sync::Arc::new(Server::start());
    let chat = s.post(
        "/api/chat",
        &json!({"model": SMOL, "options": {"temperature": 0, "num_predict": 200},
                "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}),
    );
    assert_eq!(chat.status(), 200);
    // Record when each chunk arrives; say when the first one is here.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut last = Value::Null;
        for l in BufReader::new(chat).lines() {
            last = serde_json::from_str(&l.expect("line")).expect("json");
            arrivals.push(Instant::now());
            let _ = started_tx.send(());
        }
        (arrivals, last)
    });
    started_rx.recv().expect("the chat started");
    // The chat is generating now: embed on the same model, long enough to take a while.
    let long: String = (0..30).map(|i| format!("Sentence {i} talks about topic {}. ", i % 7)).collect();
    let inputs: Vec<&str> = std::iter::repeat_n(long.as_str(), 6).collect();
    let embed_start = Instant::now();
    let v = embed(&s, json!({"model": SMOL, "input": inputs}));
    let embed_end = Instant::now();
    assert_eq!(vectors(&v).len(), 6);
    assert_eq!(v["load_duration"], 0, "no second load");
    let again = embed(&s, json!({"model": SMOL, "input": "and once more"}));
    assert_eq!(again["load_duration"], 0);
    assert_eq!(s.loaded(), vec![SMOL.to_string()]);
    let (arrivals, last) = reader.join().expect("reader");
    assert_eq!(last["done"], true, "the chat finishes: {last}");
    let during = arrivals.iter().filter(|t| **t > embed_start && **t < embed_end).count();
    assert!(
        during >= 2,
        "the chat kept streaming while the inputs were embedded ({during} of {} chunks in {:?})",
        arrivals.len(),
        embed_end - embed_start
    );
    assert_eq!(s.log_count("loaded in"), 1, "one load for chat and embeddings");
    assert_eq!(s.log_count("embedding context ready"), 1, "the embedding context is kept");
}

#[test]
fn legacy_embeddings_returns_one_raw_vector() {
    let s = Server::start();
    let width = n_embd(&s, SMOL);
    let r = s.post("/api/embeddings", &json!({"model": SMOL, "prompt": "Legacy endpoint"}));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only `embedding`: {v}");
    let raw: Vec<f64> = v["embedding"].as_array().expect("embedding").iter().filter_map(Value::as_f64).collect();
    assert_eq!(raw.len(), width);
    // Not normalized (like Ollama's), but the same direction as /api/embed's vector.
    assert!((norm(&raw) - 1.0).abs() > 1e-3, "norm {}", norm(&raw));
    let unit: Vec<f64> = raw.iter().map(|x| x / norm(&raw)).collect();
    let new = vectors(&embed(&s, json!({"model": SMOL, "input": "Legacy endpoint"})));
    assert!(max_diff(&unit, &new[0]) < 1e-4);
    // An empty prompt loads the model and returns an empty vector.
    let empty: Value = s.post("/api/embeddings", &json!({"model": SMOL, "prompt": ""})).json().expect("json");
    assert_eq!(empty, json!({"embedding": []}));
    let missing = s.post("/api/embeddings", &json!({"prompt": "x"}));
    assert_eq!(missing.status(), 400);
}

#[test]
fn the_embedding_context_is_counted_on_the_first_embed_and_memory_stays_within_it() {
    let s = Server::start();
    let show: Value = s.post("/api/show", &json!({"model": SMOL})).json().expect("json");
    let (total, embedding) = (show["ram_estimate"]["total"].as_u64().expect("total"), show["ram_estimate"]["embedding"].as_u64().expect("embedding"));
    assert!(embedding > 0);
    let size = || -> u64 {
        let ps: Value = s.get("/api/ps").json().expect("json");
        assert_eq!(ps["models"][0]["size"], ps["ram_used"]);
        ps["ram_used"].as_u64().expect("ram_used")
    };
    // Loaded to generate: the embedding context is neither made nor counted.
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 1}}));
    assert_eq!(r.status(), 200);
    assert_eq!(size(), total);
    // Longer than a decode's batch, so the embedding context's buffers are all in use.
    let long: String = (0..30).map(|i| format!("Sentence {i} talks about topic {}. ", i % 7)).collect();
    let inputs: Vec<&str> = std::iter::repeat_n(long.as_str(), 2).collect();
    embed(&s, json!({"model": SMOL, "input": inputs}));
    assert_eq!(size(), total + embedding);
    embed(&s, json!({"model": SMOL, "input": "once more"}));
    assert_eq!(size(), total + embedding, "counted once");
    // The same margin as the RAM-budget tests: the process itself plus the estimate's error.
    let margin = 64u64 << 20;
    assert!(
        s.rss() <= total + embedding + margin,
        "RSS {} MiB after embedding, estimate {} MiB",
        s.rss() >> 20,
        (total + embedding) >> 20
    );
}

#[test]
fn the_official_client_embeds() {
    let s = Server::start();
    crate::support::run_python("ollama_embed_client.py", &[("OLLAMA_HOST", &format!("http://{}", s.addr)), ("MODEL", SMOL)]);
}
