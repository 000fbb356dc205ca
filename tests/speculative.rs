//! Speculative decoding by prompt lookup, on the real models: a server guessing ahead answers a
//! copy task with the tokens a server decoding one token at a time (`--speculative off`) gives,
//! keeps most of its guesses while it copies, and counts them in `/metrics`.
//!
//! "The same tokens" allows what `prefix.rs` allows, for the same reason: where the plain
//! answer's two best tokens are nearly tied, float rounding may pick either, because llama.cpp's
//! CPU kernels round differently for a token decoded alone and in a batch (README
//! "Speculative decoding").

use serde_json::{json, Value};

use crate::prefix::{assert_greedy_close, chat};
use crate::support::{Server, GEMMA, SMOL};

const PASSAGE: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk. \
He wound the clockwork, trimmed the wick and polished the great lens until it shone. \
Ships far out at sea saw the beam sweep across the water and knew where the rocks were.";

fn copy_task() -> Vec<Value> {
    vec![json!({"role": "user", "content": format!("Repeat this passage exactly, word for word:\n\n{PASSAGE}")})]
}

/// Draft tokens a server counted, by result.
fn drafts(s: &Server, model: &str, result: &str) -> f64 {
    s.metric("hearth_draft_tokens_total", &format!("model=\"{model}\",result=\"{result}\"")).unwrap_or(0.0)
}

fn lookup_answers_as_plain_decoding_does(model: &str) {
    let guessing = Server::start();
    let plain = Server::start_with(&["--speculative", "off"]);
    let fast = chat(&guessing, model, &copy_task());
    let slow = chat(&plain, model, &copy_task());
    assert_greedy_close(&format!("{model}, lookup against plain"), &fast, &slow, 0.5);

    let (accepted, rejected) = (drafts(&guessing, model, "accepted"), drafts(&guessing, model, "rejected"));
    assert!(accepted > 0.0, "{model}: no guessed token was kept while copying ({rejected} rejected)");
    assert_eq!((drafts(&plain, model, "accepted"), drafts(&plain, model, "rejected")), (0.0, 0.0), "{model}: --speculative off guessed");
}

#[test]
fn lookup_answers_as_plain_decoding_does_smollm2() {
    lookup_answers_as_plain_decoding_does(SMOL);
}

#[test]
fn lookup_answers_as_plain_decoding_does_gemma3() {
    lookup_answers_as_plain_decoding_does(GEMMA);
}

#[test]
fn a_structured_answer_stays_valid_while_guessing() {
    // JSON repeats keys and punctuation, so guesses are made; the grammar must still hold.
    let s = Server::start();
    let schema = json!({"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object",
        "properties": {"name": {"type": "string"}, "colour": {"type": "string"}}, "required": ["name", "colour"]}}},
        "required": ["items"]});
    let body = json!({"model": SMOL, "stream": false, "format": schema, "options": {"temperature": 0, "num_predict": 200},
        "messages": [{"role": "user", "content": "List five fruits with their colours as JSON: {\"items\": [{\"name\": ..., \"colour\": ...}]}"}]});
    let r = s.post("/api/chat", &body);
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    let content = v["message"]["content"].as_str().expect("content");
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    assert!(parsed["items"].is_array(), "{parsed}");
    assert!(drafts(&s, SMOL, "accepted") + drafts(&s, SMOL, "rejected") > 0.0, "no guesses were made: the check proves nothing");
}
