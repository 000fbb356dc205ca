//! Warm after a restart or an eviction, on the real binary and SmolLM2 (with Gemma 3 as the
//! model that evicts it): a conversation's KV cache goes to `<data>/prefixes/` when its model
//! is unloaded, and the next turn after the server restarted or the model came back reads it
//! instead of the prompt. A damaged entry (one byte changed) is deleted and the prompt read in full. Counts are
//! OpenAI's `usage.prompt_tokens` and `cached_tokens`; SmolLM2 reuses exactly by default, so the
//! restored turn's answer is a fresh server's, bit for bit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::prefix::{chat, counts, fresh_answer, opening};
use crate::support::{temp_dir, Server, GEMMA, SMOL};

/// Every saved entry (`.seq` file) under a data directory.
fn entries(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(data.join("prefixes")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "seq") {
                found.push(f.path());
            }
        }
    }
    found
}

/// SIGTERM, then waits for the server to unload its models and exit.
fn stop(mut s: Server) {
    let status = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    assert!(s.wait_exit(Duration::from_secs(60)).is_some_and(|st| st.success()), "the server exits cleanly on SIGTERM");
}

fn second_turn(first: &Value) -> Vec<Value> {
    let mut messages = opening();
    messages.push(first["message"].clone());
    messages.push(json!({"role": "user", "content": "And in box 13?"}));
    messages
}

#[test]
fn a_conversation_is_warm_after_a_restart_and_a_damaged_entry_is_read_in_full() {
    let data = temp_dir("disk-prefixes");
    let data_s = data.to_str().expect("utf-8").to_string();
    let env = [("HEARTH_DATA", data_s.as_str())];
    let s = Server::start_with_env(&["--parallel", "1"], &env);
    let first = chat(&s, SMOL, &opening());
    let (first_prompt, first_cached) = counts(&first);
    assert!(first_prompt > 900 && first_cached == 0, "{first_prompt} {first_cached}");
    stop(s);
    let saved = entries(&data);
    assert_eq!(saved.len(), 1, "one conversation, one entry: {saved:?}");

    // A copy of the data with one byte of the entry's KV changed (llama.cpp would read it).
    let damaged = temp_dir("disk-prefixes-damaged");
    let key = saved[0].parent().and_then(Path::file_name).expect("key folder");
    std::fs::create_dir_all(damaged.join("prefixes").join(key)).expect("mkdir");
    for f in std::fs::read_dir(saved[0].parent().expect("dir")).expect("list").flatten() {
        std::fs::copy(f.path(), damaged.join("prefixes").join(key).join(f.file_name())).expect("copy");
    }
    let cut = damaged.join("prefixes").join(key).join(saved[0].file_name().expect("name"));
    let mut bytes = std::fs::read(&cut).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&cut, bytes).expect("write");

    let messages = second_turn(&first);
    let s = Server::start_with_env(&["--parallel", "1"], &env);
    let warm = chat(&s, SMOL, &messages);
    let (prompt, cached) = counts(&warm);
    // Exact reuse (the default) reads the chunk it resumes in from at most 64 tokens back.
    assert!(cached + 64 >= first_prompt, "after a restart the first turn is cached: {cached} of {prompt}");
    assert!((prompt - cached) * 10 <= first_prompt, "the second turn read {} tokens", prompt - cached);
    stop(s);
    assert_eq!(entries(&data).len(), 1, "the longer conversation replaced the entry it continued");

    let damaged_s = damaged.to_str().expect("utf-8").to_string();
    let s = Server::start_with_env(&["--parallel", "1"], &[("HEARTH_DATA", damaged_s.as_str())]);
    let cold = chat(&s, SMOL, &messages);
    assert_eq!(counts(&cold), (prompt, 0), "a damaged entry is not used");
    assert_eq!(s.log_count("could not be restored (the file does not match"), 1);
    assert!(!cut.exists(), "the damaged entry is deleted");
    drop(s);

    // SmolLM2 reuses exactly by default: the restored turn is a fresh server's, bit for bit.
    let fresh = fresh_answer(SMOL, &messages);
    assert_eq!(warm["logprobs"], fresh["logprobs"], "SmolLM2, second turn restored from disk");
    assert_eq!(warm["message"], fresh["message"]);
}

#[test]
fn a_conversation_is_warm_after_its_model_was_evicted() {
    let s = Server::start_with(&["--parallel", "1", "--max-loaded-models", "1"]);
    let first = chat(&s, SMOL, &opening());
    let (first_prompt, _) = counts(&first);
    // Another model takes the only place: SmolLM2 is unloaded and its slot saved.
    let other = chat(&s, GEMMA, &[json!({"role": "user", "content": "Write a haiku about rain."})]);
    assert_eq!(counts(&other).1, 0);
    assert_eq!(s.loaded(), vec![GEMMA.to_string()]);
    // The evicted instance is freed (and writes) on a thread of its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while entries(&s.data).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(entries(&s.data).len(), 1, "the evicted model's conversation is on disk");
    let warm = chat(&s, SMOL, &second_turn(&first));
    let (prompt, cached) = counts(&warm);
    assert_eq!(s.loaded(), vec![SMOL.to_string()]);
    assert!(cached + 64 >= first_prompt && (prompt - cached) * 10 <= first_prompt, "{cached} of {prompt} cached");
}
