//! The RAM budget and scheduling on the real server: models kept, swapped and refused by the
//! budget, RSS within it while models cycle, loads of one model done once, queues bounded,
//! `hearth stop`, and how llama.cpp's OpenMP threads wait when several models are loaded.

use std::io::{BufRead, BufReader};

use serde_json::{json, Value};

use crate::support::{hearth, Server, GEMMA, SMOL};

/// The `/api/show` RAM estimate of `model` at this server's settings.
fn estimate(s: &Server, model: &str) -> u64 {
    let v: Value = s.post("/api/show", &json!({"model": model})).json().expect("json");
    v["ram_estimate"]["total"].as_u64().expect("estimate")
}

/// A budget that holds either test model but not both, at the test servers' settings.
fn budget_for_one_model() -> u64 {
    let probe = Server::start();
    let (smol, gemma) = (estimate(&probe, SMOL), estimate(&probe, GEMMA));
    let budget = smol.max(gemma) + (16 << 20);
    assert!(budget < smol + gemma);
    budget
}

fn load(s: &Server, model: &str) -> Value {
    let r = s.post("/api/generate", &json!({"model": model, "prompt": "Hi", "stream": false, "options": {"num_predict": 2}}));
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

#[test]
fn a_budget_for_both_keeps_both_loaded() {
    let s = Server::start_with(&["--ram-budget", "4GiB"]);
    load(&s, SMOL);
    load(&s, GEMMA);
    let mut loaded = s.loaded();
    loaded.sort();
    assert_eq!(loaded, vec![GEMMA.to_string(), SMOL.to_string()]);
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["ram_budget"], 4u64 << 30);
    assert_eq!(ps["ram_used"].as_u64(), Some(estimate(&s, SMOL) + estimate(&s, GEMMA)));
}

/// The variables of a running process's environment whose names start with `prefix`.
fn environ(pid: u32, prefixes: &[&str]) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let mut vars: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| prefixes.iter().any(|p| v.starts_with(p)))
        .collect();
    vars.sort();
    vars
}

#[test]
fn openmp_threads_wait_by_spinning_unless_the_user_chose_otherwise() {
    // With two models loaded, libgomp's default would put their threads to sleep between graph
    // nodes (engine::cpu::openmp); the server starts itself again with the policy set.
    let s = Server::start();
    load(&s, SMOL);
    assert_eq!(environ(s.pid(), &["OMP_", "GOMP_"]), ["GOMP_SPINCOUNT=300000", "OMP_WAIT_POLICY=active"]);
    let chosen = Server::start_with_env(&[], &[("OMP_WAIT_POLICY", "passive")]);
    load(&chosen, SMOL);
    assert_eq!(environ(chosen.pid(), &["OMP_", "GOMP_"]), ["OMP_WAIT_POLICY=passive"]);
}

#[test]
fn a_budget_for_one_swaps_models_back_and_forth() {
    let budget = budget_for_one_model();
    let s = Server::start_with(&["--ram-budget", &budget.to_string()]);
    for _ in 0..3 {
        for m in [SMOL, GEMMA] {
            load(&s, m);
            assert_eq!(s.loaded(), vec![m.to_string()]);
        }
    }
    assert!(s.log_count("unloading to make room") >= 5);
}

#[test]
fn the_loaded_model_cap_evicts_too() {
    let s = Server::start_with(&["--max-loaded-models", "1"]);
    load(&s, SMOL);
    load(&s, GEMMA);
    assert_eq!(s.loaded(), vec![GEMMA.to_string()]);
}

#[test]
fn a_larger_context_switches_instances_without_dropping_requests() {
    let s = std::sync::Arc::new(Server::start_with(&["--parallel", "1"]));
    // A long answer on the 2048-token instance...
    let first = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Write a very long story.",
                                              "options": {"num_predict": 200, "temperature": 0}}));
    let mut reader = BufReader::new(first);
    let mut line = String::new();
    reader.read_line(&mut line).expect("first chunk");
    // ...while a request for a larger context gets a new instance at once, not after it.
    let second = load_with_ctx(&s, 4096);
    assert_eq!(second["done"], true);
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"][0]["context_length"], 4096);
    // The first request finishes on the old instance.
    let mut last = String::new();
    for l in reader.lines() {
        last = l.expect("line");
    }
    let last: Value = serde_json::from_str(&last).expect("json");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(s.loaded(), vec![SMOL.to_string()]);
}

fn load_with_ctx(s: &Server, num_ctx: u32) -> Value {
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "stream": false,
                                            "options": {"num_predict": 2, "num_ctx": num_ctx}}));
    assert_eq!(r.status(), 200);
    r.json().expect("json")
}

#[test]
fn a_model_larger_than_the_budget_is_refused_with_sizes() {
    let s = Server::start_with(&["--ram-budget", "64MiB"]);
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "hi"}));
    assert_eq!(r.status(), 507);
    let e = r.json::<Value>().expect("json")["error"].as_str().unwrap_or("").to_string();
    assert!(e.contains("needs") && e.contains(&(64u64 << 20).to_string()), "{e}");
    assert!(s.alive());
    assert!(s.loaded().is_empty());
}

#[test]
fn keep_alive_durations_and_forever() {
    let s = Server::start();
    s.post("/api/generate", &json!({"model": SMOL, "prompt": "", "keep_alive": "2s"}));
    assert_eq!(s.loaded(), vec![SMOL.to_string()]);
    s.post("/api/generate", &json!({"model": GEMMA, "prompt": "", "keep_alive": -1}));
    // Poll: the two-second model must go within a few seconds; the other must stay.
    let mut gone = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if !s.loaded().contains(&SMOL.to_string()) {
            gone = true;
            break;
        }
    }
    assert!(gone, "keep_alive 2s model still loaded after 10 s");
    assert_eq!(s.loaded(), vec![GEMMA.to_string()]);
    let out = hearth().args(["stop", GEMMA, "--host", &s.addr]).output().expect("stop");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.loaded().is_empty());
}

#[test]
fn concurrent_requests_for_an_unloaded_model_load_it_once() {
    let s = std::sync::Arc::new(Server::start());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || load(&s, GEMMA))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread")["done"], true);
    }
    assert_eq!(s.log_count("loaded in"), 1);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start_with(&["--parallel", "1", "--max-queue", "0"]);
    let body = json!({"model": SMOL, "prompt": "Write a very long story.", "options": {"num_predict": 400}});
    let first = s.post("/api/generate", &body);
    let mut reader = BufReader::new(first);
    let mut line = String::new();
    reader.read_line(&mut line).expect("first chunk");
    assert!(line.contains("\"done\":false"), "{line}");
    // The only slot is busy and no one may wait.
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "hi"}));
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("busy")));
    drop(reader);
    assert!(s.alive());
}

#[test]
fn rss_stays_within_the_budget_while_cycling_models() {
    let budget = budget_for_one_model();
    let s = Server::start_with(&["--ram-budget", &budget.to_string()]);
    // Margin over the budget: the process itself (runtime, HTTP, allocator) plus the
    // estimate's error; stated in the resource-manager note.
    let margin = 64u64 << 20;
    let mut peak = 0;
    // RSS after each cycle (both models loaded once).
    let mut cycles = Vec::new();
    for _ in 0..50 {
        for m in [SMOL, GEMMA] {
            load(&s, m);
            peak = peak.max(s.rss());
        }
        cycles.push(s.rss());
    }
    assert!(peak <= budget + margin, "peak RSS {} MiB over budget {} MiB + margin", peak >> 20, budget >> 20);
    // Creep is the defect: a leak raises the floor. From one cycle to the next RSS swings by up to
    // ~35 MiB either way, so the floors are compared: cycles 5-14, after the allocator settles,
    // against the last twenty. The swing is bimodal: each load's worker is a new thread, which glibc
    // gives one of its two arenas, so the model's many small allocations land in the main heap or in
    // the second arena, and the two keep different amounts of partly used pages (/proc/PID/smaps
    // after Gemma's load: [heap] 1 or 50 MiB). The mode can hold for ten cycles (a CI run's last ten
    // were all high), rarely for twenty.
    let floor = |c: &[u64]| c.iter().copied().min().expect("cycles");
    let (settled, last) = (floor(&cycles[5..15]), floor(&cycles[30..]));
    assert!(
        last <= settled + (16 << 20),
        "RSS crept: its floor went from {} MiB to {} MiB over 25 cycles ({:?} MiB)",
        settled >> 20,
        last >> 20,
        cycles.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
}
