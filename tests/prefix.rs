//! Prefix reuse on the real models: a follow-up chat turn reads only what is new, from its slot
//! or, after an unrelated conversation took the only slot, from the saved-prefix store; and the
//! greedy answer is the one a fresh server (nothing cached) gives. Gemma 3 covers the
//! sliding-window cache. The cached counts come from the worker's debug log line.

use serde_json::{json, Value};

use crate::support::{Server, GEMMA, SMOL};

const WORKER_LOG: (&str, &str) = ("HEARTH_LOG", "warn,hearth=info,hearth::engine::worker=debug");

/// A conversation opening with about a thousand tokens of history.
fn opening() -> Vec<Value> {
    let colours = ["red", "blue", "green", "amber"];
    let facts: Vec<String> = (0..60)
        .map(|i| format!("Fact {i}: the {} box number {i} holds {} marbles.", colours[i % 4], i * 7))
        .collect();
    vec![
        json!({"role": "system", "content": "You are a careful assistant."}),
        json!({"role": "user", "content": format!("Here are some facts. {} How many marbles are in box 12?", facts.join(" "))}),
    ]
}

fn chat(s: &Server, model: &str, messages: &[Value]) -> Value {
    let r = s.post(
        "/api/chat",
        &json!({"model": model, "stream": false, "messages": messages, "options": {"temperature": 0, "num_predict": 24}}),
    );
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

/// `(prompt_tokens, cached_tokens)` of each finished generation, in order.
fn counts(s: &Server) -> Vec<(u64, u64)> {
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
fn fresh_answer(model: &str, messages: &[Value]) -> String {
    let s = Server::start_with_env(&[], &[WORKER_LOG]);
    let v = chat(&s, model, messages);
    assert_eq!(counts(&s), vec![(v["prompt_eval_count"].as_u64().expect("count"), 0)], "a fresh server reads it all");
    v["message"]["content"].as_str().expect("content").to_string()
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

    let c = counts(&s);
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

    let text = |v: &Value| v["message"]["content"].as_str().expect("content").to_string();
    assert_eq!(text(&second), fresh_answer(model, &second_messages), "{model}: reuse changed the second turn's answer");
    assert_eq!(text(&third), fresh_answer(model, &messages), "{model}: a restored prefix changed the third turn's answer");
}

#[test]
fn follow_up_turns_reuse_the_prefix_smollm2() {
    follow_up_turns_reuse_the_prefix(SMOL);
}

#[test]
fn follow_up_turns_reuse_the_prefix_gemma3_sliding_window() {
    follow_up_turns_reuse_the_prefix(GEMMA);
}
