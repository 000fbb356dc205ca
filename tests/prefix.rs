//! Prefix reuse on the real models: a follow-up chat turn reads only what is new, from its slot
//! or, after an unrelated conversation took the only slot, from the saved-prefix store; and the
//! greedy answer is the one a fresh server (nothing cached) gives. Gemma 3 covers the
//! sliding-window cache. The counts are the API's own: OpenAI's `usage.prompt_tokens` and
//! `usage.prompt_tokens_details.cached_tokens`.
//!
//! "The same answer" allows one thing: where the fresh server's two best tokens are nearly tied,
//! float rounding may pick either. That is not reuse's doing: a fresh server's greedy answer
//! already changes there with the batch size alone (measured on Gemma 3 270M with this
//! history: `--batch-size 512` and `64` diverge at a token whose top two log-probabilities are
//! 0.15 apart), because llama.cpp's kernels round differently for different batch shapes.

use serde_json::{json, Value};

use crate::support::{Server, GEMMA, SMOL};

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

/// A greedy chat answer with two top log-probabilities per token, through OpenAI's API (which
/// reports the cached prompt tokens), in the shape the checks below read: `message`,
/// `logprobs`, `prompt_eval_count` and `cached_tokens`.
pub fn chat(s: &Server, model: &str, messages: &[Value]) -> Value {
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": messages, "logprobs": true, "top_logprobs": 2, "temperature": 0, "max_tokens": 24}),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    let choice = &v["choices"][0];
    json!({
        "message": {"role": "assistant", "content": choice["message"]["content"]},
        "logprobs": choice["logprobs"]["content"],
        "prompt_eval_count": v["usage"]["prompt_tokens"],
        "cached_tokens": v["usage"]["prompt_tokens_details"]["cached_tokens"],
    })
}

/// `(prompt tokens, cached prompt tokens)` of an answer.
pub fn counts(v: &Value) -> (u64, u64) {
    (v["prompt_eval_count"].as_u64().expect("prompt tokens"), v["cached_tokens"].as_u64().expect("cached tokens"))
}

/// The answer to `messages` from a new server, where nothing can be cached.
pub fn fresh_answer(model: &str, messages: &[Value]) -> Value {
    let s = Server::start();
    let v = chat(&s, model, messages);
    assert_eq!(counts(&v).1, 0, "a fresh server reads it all");
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

/// `--prefix-reuse fast`: every cached token a prompt shares is kept, from the slot or the
/// store; answers are held to the near-tie allowance.
fn follow_up_turns_reuse_the_prefix(model: &str) {
    let s = Server::start_with(&["--parallel", "1", "--prefix-reuse", "fast"]);
    let mut messages = opening();
    let first = chat(&s, model, &messages);
    messages.push(first["message"].clone());
    messages.push(json!({"role": "user", "content": "And in box 13?"}));
    let second = chat(&s, model, &messages);
    let second_messages = messages.clone();

    // An unrelated chat takes the only slot; the conversation's prefix goes to the store.
    let unrelated = chat(&s, model, &[json!({"role": "user", "content": "Write a haiku about rain."})]);
    messages.push(second["message"].clone());
    messages.push(json!({"role": "user", "content": "And in box 14?"}));
    let third = chat(&s, model, &messages);

    let c = [counts(&first), counts(&second), counts(&unrelated), counts(&third)];
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

/// Exact reuse (`args`): the second turn reuses what a fresh read computes the same way (the
/// first turn's prompt, and its answer, which the idle server read again in a tiled batch), and
/// its answer is the fresh server's to the last bit: the same tokens with the same
/// log-probabilities, no near-tie allowed. So is the third, after an unrelated chat took the
/// only slot: the conversation comes back from the prefix store (`from_store`), or, on a
/// sliding-window model, is read afresh. (With fast reuse these differ on the Sapphire Rapids
/// machine: 8 of 8 second turns had other log-probabilities, 4 of 8 other text.)
fn exact_reuse_answers_as_a_fresh_server(model: &str, args: &[&str], from_store: bool) {
    let exact = [args, &["--parallel", "1"]].concat();
    let s = Server::start_with(&exact);
    let mut messages = opening();
    let first = chat(&s, model, &messages);
    messages.push(first["message"].clone());
    // A follow-up of 64 tokens or more: the chunk it is read in takes the tiled path from
    // wherever the reused part ends.
    let ask = "Answer in one short sentence that names the box and the count, nothing else. ".repeat(5);
    messages.push(json!({"role": "user", "content": format!("And in box 30? {ask}")}));
    let second = chat(&s, model, &messages);
    let fresh = chat(&Server::start_with(&exact), model, &messages);

    let ((first_prompt, _), (prompt, cached)) = (counts(&first), counts(&second));
    assert!(cached > first_prompt, "{model}: the first turn's answer, read again while idle, is reused: {cached} of {prompt}, first prompt {first_prompt}");
    assert!(prompt - cached >= 64, "{model}: {cached} of {prompt}");
    assert_eq!(counts(&fresh), (prompt, 0));
    assert_eq!(second["logprobs"], fresh["logprobs"], "{model}: the reused answer differs from the fresh one");
    assert_eq!(second["message"], fresh["message"]);

    // An unrelated chat takes the only slot: what the conversation computed in tiled batches
    // goes to the store, and the third turn takes it back from there.
    let unrelated = chat(&s, model, &[json!({"role": "user", "content": "Write a haiku about rain."})]);
    messages.push(second["message"].clone());
    messages.push(json!({"role": "user", "content": format!("And in box 31? {ask}")}));
    let third = chat(&s, model, &messages);
    let fresh = chat(&Server::start_with(&exact), model, &messages);
    let (third_prompt, third_cached) = counts(&third);
    assert!(counts(&unrelated).1 < 64, "{model}: the unrelated chat shares little: {:?}", counts(&unrelated));
    if from_store {
        // The store holds the tiled part (a last chunk of the second prompt under 64 tokens is
        // not), and the third turn resumes at most 64 tokens before that.
        assert!(third_cached + 128 >= prompt, "{model}: the conversation came back from the store: {third_cached} of {third_prompt}, second prompt {prompt}");
    } else {
        assert!(third_cached < 64, "{model}: exact reuse of a sliding-window model leaves the store alone: {third_cached} of {third_prompt}");
    }
    assert_eq!(counts(&fresh), (third_prompt, 0));
    assert_eq!(third["logprobs"], fresh["logprobs"], "{model}: the restored answer differs from the fresh one");
    assert_eq!(third["message"], fresh["message"]);
}

/// SmolLM2 at the default, `auto`: exact, with the prefix store.
#[test]
fn exact_reuse_answers_as_a_fresh_server_smollm2() {
    exact_reuse_answers_as_a_fresh_server(SMOL, &[], true);
}

/// Gemma 3 has a sliding window: `auto` leaves it fast, `exact` asked for keeps the store out.
#[test]
fn exact_reuse_answers_as_a_fresh_server_gemma3() {
    exact_reuse_answers_as_a_fresh_server(GEMMA, &["--prefix-reuse", "exact"], false);
}
