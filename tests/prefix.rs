//! Prefix reuse on the real models: a follow-up chat turn reads only what is new, from its slot
//! or, after an unrelated conversation took the only slot, from the saved-prefix store; and the
//! greedy answer is the one a fresh server (nothing cached) gives. Gemma 3 covers the
//! sliding-window cache. The cached counts come from the worker's debug log line.
//!
//! "The same answer" allows one thing: where the fresh server's two best tokens are nearly tied,
//! float rounding may pick either. That is not reuse's doing: a fresh server's greedy answer
//! already changes there with the batch size alone (measured on Gemma 3 270M with this
//! history: `--batch-size 512` and `64` diverge at a token whose top two log-probabilities are
//! 0.15 apart), because llama.cpp's kernels round differently for different batch shapes.

use serde_json::{json, Value};

use crate::support::{Server, GEMMA, SMOL};

const WORKER_LOG: (&str, &str) = ("HEARTH_LOG", "warn,hearth=info,hearth::engine::worker=debug");

/// A conversation opening with about a thousand tokens of history.
pub fn opening() -> Vec<Value> {
    let colours = ["red", "blue", "green", "amber"];
    let facts: Vec<String> = (0..60)
        .map(|i| format!("Fact {i}: the {} box number {i} holds {} marbles.", colours[i % 4], i * 7))
        .collect();
    vec![
        json!({"role": "system", "content": "You are a careful assistant."}),
        json!({"role": "user", "content": format!("Here are some facts. {} How many marbles are in box 12?", facts.join(" "))}),
    ]
}

pub fn chat(s: &Server, model: &str, messages: &[Value]) -> Value {
    let r = s.post(
        "/api/chat",
        &json!({"model": model, "stream": false, "messages": messages, "logprobs": true, "top_logprobs": 2,
                "options": {"temperature": 0, "num_predict": 24}}),
    );
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

/// `(prompt_tokens, cached_tokens)` of each finished generation, in order, once there are `n`
/// (the log line may reach the test's log reader after the answer reached the client).
fn counts(s: &Server, n: usize) -> Vec<(u64, u64)> {
    let mut found = finished(s);
    for _ in 0..100 {
        if found.len() >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        found = finished(s);
    }
    found
}

fn finished(s: &Server) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}"));
        line[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a number")
    };
    s.log
        .lock()
        .expect("log")
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains("generation finished"))
        .map(|l| (field(&l, "prompt_tokens"), field(&l, "cached_tokens")))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The answer to `messages` from a new server, where nothing can be cached.
fn fresh_answer(model: &str, messages: &[Value]) -> Value {
    let s = Server::start_with_env(&[], &[WORKER_LOG]);
    let v = chat(&s, model, messages);
    assert_eq!(counts(&s, 1), vec![(v["prompt_eval_count"].as_u64().expect("count"), 0)], "a fresh server reads it all");
    v
}

/// Nats between the two best tokens below which rounding may pick either.
const NEAR_TIE: f64 = 0.5;

/// Asserts that `reused` and `fresh` (chat answers with two top log-probabilities per token)
/// hold the same tokens, or part ways only where the fresh answer's best two were nearly tied.
fn assert_same_greedy(what: &str, reused: &Value, fresh: &Value) {
    assert_greedy_close(what, reused, fresh, NEAR_TIE);
}

/// `assert_same_greedy` with the near-tie margin given (`near_tie` nats).
pub fn assert_greedy_close(what: &str, reused: &Value, fresh: &Value, near_tie: f64) {
    let tokens = |v: &Value| v["logprobs"].as_array().expect("logprobs").clone();
    let (a, b) = (tokens(reused), tokens(fresh));
    assert!(!b.is_empty(), "{what}: no tokens in {fresh}");
    let token = |t: &Value| t["token"].as_str().expect("token").to_string();
    match a.iter().zip(&b).position(|(x, y)| token(x) != token(y)) {
        None => assert_eq!(reused["message"]["content"], fresh["message"]["content"], "{what}"),
        Some(i) => {
            let top: Vec<f64> = b[i]["top_logprobs"]
                .as_array()
                .expect("top_logprobs")
                .iter()
                .map(|t| t["logprob"].as_f64().expect("logprob"))
                .collect();
            let margin = top[0] - top.get(1).copied().unwrap_or(f64::NEG_INFINITY);
            assert!(
                margin < near_tie,
                "{what}: answers part at token {i} where the fresh server was sure ({margin:.2} nats):\n  reused: {}\n  fresh:  {}",
                reused["message"]["content"],
                fresh["message"]["content"]
            );
        }
    }
}

fn follow_up_turns_reuse_the_prefix(model: &str) {
    let s = Server::start_with_env(&["--parallel", "1"], &[WORKER_LOG]);
    let mut messages = opening();
    let first = chat(&s, model, &messages);
    messages.push(first["message"].clone());
    messages.push(json!({"role": "user", "content": "And in box 13?"}));
    let second = chat(&s, model, &messages);
    let second_messages = messages.clone();

    // An unrelated chat takes the only slot; the conversation's prefix goes to the store.
    chat(&s, model, &[json!({"role": "user", "content": "Write a haiku about rain."})]);
    messages.push(second["message"].clone());
    messages.push(json!({"role": "user", "content": "And in box 14?"}));
    let third = chat(&s, model, &messages);

    let c = counts(&s, 4);
    assert_eq!(c.len(), 4, "{c:?}");
    let (first_prompt, first_cached) = c[0];
    assert!(first_prompt > 900, "the history should be about 1k tokens: {c:?}");
    assert_eq!(first_cached, 0);
    for (turn, (prompt, cached)) in [("second", c[1]), ("third", c[3])] {
        let evaluated = prompt - cached;
        assert!(
            evaluated * 10 <= first_prompt,
            "{model}: the {turn} turn evaluated {evaluated} of {prompt} tokens; the first evaluated {first_prompt}"
        );
    }

    assert_same_greedy(&format!("{model}, second turn (slot reuse)"), &second, &fresh_answer(model, &second_messages));
    assert_same_greedy(&format!("{model}, third turn (restored prefix)"), &third, &fresh_answer(model, &messages));
}

#[test]
fn follow_up_turns_reuse_the_prefix_smollm2() {
    follow_up_turns_reuse_the_prefix(SMOL);
}

#[test]
fn follow_up_turns_reuse_the_prefix_gemma3_sliding_window() {
    follow_up_turns_reuse_the_prefix(GEMMA);
}
