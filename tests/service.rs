//! The service layer over the real server: response cache (in memory and shared through a real
//! redis-server), personas, prompt templates, conversations across restarts, metrics, health,
//! config files, the seeds' routes and request ids.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{hearth, run_python, temp_dir, Redis, Server, SMOL};

fn greedy(prompt: &str) -> Value {
    json!({"model": SMOL, "prompt": prompt, "stream": false, "options": {"temperature": 0, "num_predict": 12}})
}

fn cache_header(r: &reqwest::blocking::Response) -> String {
    r.headers().get("x-hearth-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// Writes `text` as a config file in a fresh directory and returns its path.
fn config_file(text: &str) -> std::path::PathBuf {
    let path = temp_dir("config").join("hearth.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

// ---------------------------------------------------------------- response cache

#[test]
fn a_repeated_deterministic_request_is_a_cache_hit_with_the_same_answer() {
    let s = Server::start();
    let first = s.post("/api/generate", &greedy("Name three fruits."));
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().expect("json");
    assert_eq!(first["cache"], "miss");

    let again = s.post("/api/generate", &greedy("Name three fruits."));
    assert_eq!(cache_header(&again), "hit");
    let again: Value = again.json().expect("json");
    assert_eq!(again["cache"], "hit");
    assert_eq!(again["response"], first["response"]);
    assert_eq!(again["eval_count"], first["eval_count"]);
    // Answered without running the model: far less time than the generation took.
    let (t1, t2) = (first["total_duration"].as_u64().expect("ns"), again["total_duration"].as_u64().expect("ns"));
    assert!(t2 < t1, "hit took {t2} ns, the generation {t1} ns");

    // A streamed request that hits still streams, ending with the same text.
    let mut body = greedy("Name three fruits.");
    body["stream"] = json!(true);
    let lines = s.ndjson("/api/generate", &body);
    assert!(lines.len() > 2, "{lines:?}");
    let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(text, first["response"].as_str().expect("text"));
    assert_eq!(lines.last().expect("final")["cache"], "hit");

    // use_cache: false bypasses; a sampled request isn't cached unless asked.
    let mut bypass = greedy("Name three fruits.");
    bypass["use_cache"] = json!(false);
    assert_eq!(cache_header(&s.post("/api/generate", &bypass)), "miss");
    let sampled = json!({"model": SMOL, "prompt": "Pick a number.", "stream": false, "options": {"temperature": 0.9, "num_predict": 4}});
    s.post("/api/generate", &sampled);
    assert_eq!(cache_header(&s.post("/api/generate", &sampled)), "miss");
    let mut opted = sampled.clone();
    opted["use_cache"] = json!(true);
    s.post("/api/generate", &opted);
    assert_eq!(cache_header(&s.post("/api/generate", &opted)), "hit");

    // Clearing empties it.
    let cleared: Value = s.post("/api/cache/clear", &json!({})).json().expect("json");
    assert!(cleared["cleared"].as_u64().expect("count") >= 2, "{cleared}");
    assert_eq!(cache_header(&s.post("/api/generate", &greedy("Name three fruits."))), "miss");
}

#[test]
fn openai_and_chat_requests_are_cached_too() {
    let s = Server::start();
    let chat = json!({"model": SMOL, "messages": [{"role": "user", "content": "Say yes."}], "stream": false,
                      "options": {"seed": 7, "num_predict": 6}});
    assert_eq!(cache_header(&s.post("/api/chat", &chat)), "miss");
    assert_eq!(cache_header(&s.post("/api/chat", &chat)), "hit");
    let oai = json!({"model": SMOL, "messages": [{"role": "user", "content": "Say no."}], "temperature": 0, "max_tokens": 6});
    let a: Value = s.post("/v1/chat/completions", &oai).json().expect("json");
    let r = s.post("/v1/chat/completions", &oai);
    assert_eq!(cache_header(&r), "hit");
    let b: Value = r.json().expect("json");
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
}

#[test]
fn two_instances_share_the_cache_through_redis_and_survive_its_loss() {
    let redis = Redis::start(None);
    let url = redis.url();
    let a = Server::start_with_env(&[], &[("REDIS_URL", &url)]);
    let b = Server::start_with_env(&[], &[("REDIS_URL", &url)]);
    let health: Value = a.get("/health").json().expect("json");
    assert_eq!(health["cache"]["backend"], "redis", "{health}");
    assert_eq!(health["cache"]["reachable"], true, "{health}");

    let first = a.post("/api/generate", &greedy("Write a haiku about rain."));
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().expect("json");
    // The other instance answers from what the first stored.
    let second = b.post("/api/generate", &greedy("Write a haiku about rain."));
    assert_eq!(cache_header(&second), "hit");
    let second: Value = second.json().expect("json");
    assert_eq!(second["response"], first["response"]);

    // Redis gone: requests still succeed, bypassing the cache, and the metrics say so.
    drop(redis);
    let r = b.post("/api/generate", &greedy("Write a haiku about snow."));
    assert_eq!(r.status(), 200);
    assert_eq!(cache_header(&r), "miss");
    assert!(!r.json::<Value>().expect("json")["response"].as_str().unwrap_or("").is_empty());
    let metrics = b.get("/metrics").text().expect("metrics");
    let unavailable = metrics
        .lines()
        .find(|l| l.starts_with("hearth_cache_requests_total{result=\"unavailable\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(unavailable >= 1.0, "{metrics}");
    let health: Value = b.get("/health").json().expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["cache"]["reachable"], false, "{health}");
}

// ---------------------------------------------------------------- personas and templates

const PERSONAS: &str = r#"
personas:
  pirate:
    model: smollm2:135m
    system: "You are a pirate captain. Answer every question like a pirate."
    options:
      temperature: 0
      num_predict: 16
"#;

#[test]
fn a_persona_applies_its_system_prompt_by_field_and_by_name() {
    let config = config_file(PERSONAS);
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    let question = json!([{"role": "user", "content": "What do you do all day?"}]);
    // The same exchange spelled out: the persona's system prompt and options.
    let explicit: Value = s
        .post("/api/chat", &json!({"model": SMOL, "stream": false, "use_cache": false,
            "messages": [{"role": "system", "content": "You are a pirate captain. Answer every question like a pirate."},
                         {"role": "user", "content": "What do you do all day?"}],
            "options": {"temperature": 0, "num_predict": 16}}))
        .json()
        .expect("json");
    let expected = explicit["message"]["content"].as_str().expect("text").to_string();
    assert!(!expected.is_empty());

    let by_name: Value = s.post("/api/chat", &json!({"model": "pirate", "messages": question, "stream": false})).json().expect("json");
    assert_eq!(by_name["message"]["content"], expected.as_str(), "{by_name}");
    assert_eq!(by_name["model"], "pirate");
    let by_field: Value = s
        .post("/api/chat", &json!({"model": SMOL, "persona": "pirate", "messages": question, "stream": false}))
        .json()
        .expect("json");
    assert_eq!(by_field["message"]["content"], expected.as_str());
    // Plain OpenAI clients use it as a model name.
    let oai: Value = s
        .post("/v1/chat/completions", &json!({"model": "pirate", "messages": question}))
        .json()
        .expect("json");
    assert_eq!(oai["choices"][0]["message"]["content"], expected.as_str(), "{oai}");
    // An unknown persona is a 404 that names it.
    let r = s.post("/api/chat", &json!({"model": SMOL, "persona": "ninja", "messages": question}));
    assert_eq!(r.status(), 404);
    assert!(r.text().expect("body").contains("ninja"));
    let listed: Value = s.get("/api/personas").json().expect("json");
    assert!(listed["personas"].as_array().expect("list").iter().any(|p| p["model"] == SMOL), "{listed}");
}

#[test]
fn prompt_templates_render_and_name_a_missing_variable() {
    let s = Server::start();
    let r: Value = s
        .post("/api/templates/render", &json!({"template": "rag_query", "variables": {"context": "The sky is green here.", "question": "What colour is the sky?"}}))
        .json()
        .expect("json");
    let prompt = r["prompt"].as_str().expect("prompt");
    assert!(prompt.contains("The sky is green here.") && prompt.contains("What colour is the sky?"), "{r}");

    let missing = s.post("/api/templates/render", &json!({"template": "rag_query", "variables": {"context": "x"}}));
    assert_eq!(missing.status(), 400);
    assert!(missing.text().expect("body").contains("question"));
    let unknown = s.post("/api/templates/render", &json!({"template": "nope", "variables": {}}));
    assert_eq!(unknown.status(), 404);

    // Used on a request: the rendered prompt is what the model answers.
    let vars = json!({"context": "Zorbs are blue.", "question": "What colour are zorbs?"});
    let via_template: Value = s
        .post("/api/generate", &json!({"model": SMOL, "template": "rag_query", "variables": vars, "stream": false, "options": {"temperature": 0, "num_predict": 10}}))
        .json()
        .expect("json");
    let direct: Value = s.post("/api/generate", &json!({"model": SMOL, "prompt": prompt_for(&s, &vars), "stream": false, "options": {"temperature": 0, "num_predict": 10}})).json().expect("json");
    assert_eq!(via_template["response"], direct["response"]);
    let bad = s.post("/api/chat", &json!({"model": SMOL, "template": "summarization", "variables": {}, "messages": []}));
    assert_eq!(bad.status(), 400);
    assert!(bad.text().expect("body").contains("text"));
}

fn prompt_for(s: &Server, vars: &Value) -> String {
    let r: Value = s.post("/api/templates/render", &json!({"template": "rag_query", "variables": vars})).json().expect("json");
    r["prompt"].as_str().expect("prompt").to_string()
}

// ---------------------------------------------------------------- conversations

#[test]
fn a_conversation_continues_across_a_restart() {
    let data = temp_dir("conversations");
    let data_s = data.to_str().expect("path").to_string();
    let turn = |s: &Server, text: &str| -> Value {
        s.post("/api/chat", &json!({"model": SMOL, "conversation_id": "chat-1", "stream": false,
            "messages": [{"role": "user", "content": text}], "options": {"temperature": 0, "num_predict": 12}}))
            .json()
            .expect("json")
    };
    let first = {
        let s = Server::start_with_env(&[], &[("HEARTH_DATA", &data_s)]);
        let r = turn(&s, "My name is Alice and I like tea.");
        assert_eq!(r["conversation_id"], "chat-1");
        assert_eq!(r["dropped_messages"], 0);
        r
    };
    let s = Server::start_with_env(&[], &[("HEARTH_DATA", &data_s)]);
    let stored: Value = s.get("/api/conversations/chat-1").json().expect("json");
    assert_eq!(stored["messages"].as_array().expect("messages").len(), 2, "{stored}");
    let second = turn(&s, "What is my name?");
    // The server put the history in front: the prompt is the one of sending it all (counted
    // exactly; the greedy words of a prompt whose KV was reused may differ on another CPU).
    let full: Value = s
        .post("/api/chat", &json!({"model": SMOL, "stream": false, "use_cache": false, "options": {"temperature": 0, "num_predict": 12},
            "messages": [{"role": "user", "content": "My name is Alice and I like tea."},
                         {"role": "assistant", "content": first["message"]["content"]},
                         {"role": "user", "content": "What is my name?"}]}))
        .json()
        .expect("json");
    assert_eq!(second["prompt_eval_count"], full["prompt_eval_count"]);
    let stored: Value = s.get("/api/conversations/chat-1").json().expect("json");
    let contents: Vec<&Value> = stored["messages"].as_array().expect("messages").iter().map(|m| &m["content"]).collect();
    assert_eq!(
        contents,
        [&json!("My name is Alice and I like tea."), &first["message"]["content"], &json!("What is my name?"), &second["message"]["content"]],
        "{stored}"
    );

    assert_eq!(s.client.delete(s.url("/api/conversations/chat-1")).send().expect("delete").status(), 200);
    assert_eq!(s.get("/api/conversations/chat-1").status(), 404);
    assert_eq!(s.get("/api/conversations/..%2Fetc").status(), 400);
}

#[test]
fn a_long_conversation_is_trimmed_to_fit_and_says_how_much() {
    let s = Server::start_with(&["--context-length", "256"]);
    let mut dropped = 0;
    for i in 0..8 {
        let r: Value = s
            .post("/api/chat", &json!({"model": SMOL, "conversation_id": "long", "stream": false,
                "messages": [{"role": "user", "content": format!("Fact {i}: {}", "the quick brown fox jumps over the lazy dog. ".repeat(3))}],
                "options": {"temperature": 0, "num_predict": 16}}))
            .json()
            .expect("json");
        assert_eq!(r["done"], true, "{r}");
        dropped = r["dropped_messages"].as_u64().expect("dropped");
    }
    assert!(dropped > 0, "a 256-token context can't hold 8 long turns");
    // All turns are kept in the store; only the prompt leaves the oldest out.
    let stored: Value = s.get("/api/conversations/long").json().expect("json");
    assert_eq!(stored["messages"].as_array().expect("messages").len(), 16);
}

// ---------------------------------------------------------------- health, metrics, logging

#[test]
fn health_and_metrics_describe_the_server() {
    let s = Server::start();
    let h: Value = s.get("/health").json().expect("json");
    assert_eq!(h["status"], "ok");
    assert!(h["uptime_seconds"].as_f64().is_some(), "{h}");
    assert_eq!(h["cache"]["backend"], "memory");
    run_python("metrics_check.py", &[("HEARTH_URL", &format!("http://{}", s.addr))]);
    let j: Value = s.get("/api/metrics").json().expect("json");
    let text = j.to_string();
    assert!(text.contains("p50") && text.contains("p99"), "{j}");
}

#[test]
fn request_ids_and_json_logs() {
    let s = Server::start_with(&["--log-format", "json"]);
    let r = s.client.post(s.url("/api/generate")).header("x-request-id", "trace-42").json(&greedy("Hi")).send().expect("request");
    assert_eq!(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-42"));
    let r = s.post("/api/generate", &greedy("Hi"));
    let generated = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("an id").to_string();
    assert!(generated.len() >= 16);
    std::thread::sleep(Duration::from_millis(300));
    let log = s.log.lock().expect("log").clone();
    let json_lines: Vec<Value> = log.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let done = json_lines
        .iter()
        .find(|l| l.to_string().contains("trace-42") && l.to_string().contains("generation done"))
        .unwrap_or_else(|| panic!("no JSON log line for trace-42: {log:?}"));
    assert!(done.to_string().contains("eval_tokens"), "{done}");
    // Prompts stay out of the logs unless asked.
    assert!(!log.iter().any(|l| l.contains("\"Hi\"")), "{log:?}");
}

// ---------------------------------------------------------------- config

#[test]
fn a_misspelt_config_key_is_refused_with_its_line() {
    let config = config_file("cache:\n  ttl: 1h\npersonas:\n  bot:\n    model: smollm2:135m\n    sytem: hello\n");
    let out = hearth().args(["config", "check", config.to_str().expect("path")]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sytem") && err.contains(":6"), "{err}");
    let out = hearth().args(["serve", "--port", "0", "--config", config.to_str().expect("path")]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sytem"));
    let good = config_file(PERSONAS);
    let out = hearth().args(["config", "check", good.to_str().expect("path")]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pirate"));
}

#[test]
fn reload_picks_up_new_personas_by_request_and_by_sighup() {
    let config = config_file(PERSONAS);
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    let ask = |name: &str| s.post("/api/chat", &json!({"model": name, "messages": [{"role": "user", "content": "Hello"}], "stream": false}));
    assert_eq!(ask("chef").status(), 404);
    std::fs::write(&config, format!("{PERSONAS}  chef:\n    model: smollm2:135m\n    system: You are a chef.\n    options: {{num_predict: 4}}\n")).expect("write");
    let report: Value = s.post("/api/config/reload", &json!({})).json().expect("json");
    assert!(report["personas"].to_string().contains("chef"), "{report}");
    assert_eq!(ask("chef").status(), 200);

    // A broken file is refused and the running config stays.
    std::fs::write(&config, "personas: [oops").expect("write");
    assert_eq!(s.post("/api/config/reload", &json!({})).status(), 400);
    assert_eq!(ask("chef").status(), 200);

    // Every persona asked here has a token limit: without one, a sampled answer may run on
    // (context shifting, as Ollama does) past the client's timeout.
    std::fs::write(&config, format!("{PERSONAS}  baker:\n    model: smollm2:135m\n    system: You bake.\n    options: {{num_predict: 4}}\n")).expect("write");
    let status = Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask("baker").status() != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ask("chef").status(), 404);
}

#[test]
fn max_concurrent_requests_answers_503_beyond_the_limit() {
    let s = Server::start_with_env(&[], &[("MAX_CONCURRENT_REQUESTS", "1")]);
    let long = json!({"model": SMOL, "prompt": "Write a long story about a dragon.", "options": {"num_predict": 300}});
    let first = s.post("/api/generate", &long);
    let mut reader = BufReader::new(first);
    let mut line = String::new();
    reader.read_line(&mut line).expect("first chunk");
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "hi", "options": {"seed": 1}}));
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    drop(reader);
}

// ---------------------------------------------------------------- seed routes

#[test]
fn seed_routes_answer_in_their_shapes() {
    let config = config_file(PERSONAS);
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    let body = json!({"prompt": "Where is the treasure?", "character_name": "pirate", "conversation_id": "discord-1",
                      "settings": {"max_tokens": 12, "temperature": 0}});
    let r: Value = s.post("/generate", &body).json().expect("json");
    assert!(r["response"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
    assert_eq!(r["model"], SMOL);
    assert!(r["generation_time"].as_f64().is_some_and(|t| t > 0.0));
    assert_eq!(r["cache_hit"], false);
    assert_eq!(r["metadata"]["conversation_id"], "discord-1");
    assert!(r["metadata"]["completion_tokens"].as_u64().is_some_and(|n| n > 0));
    let again: Value = s.post("/generate", &json!({"prompt": "Hi", "use_cache": true, "settings": {"temperature": 0, "max_tokens": 4}})).json().expect("json");
    assert_eq!(again["cache_hit"], false);
    let again: Value = s.post("/generate", &json!({"prompt": "Hi", "use_cache": true, "settings": {"temperature": 0, "max_tokens": 4}})).json().expect("json");
    assert_eq!(again["cache_hit"], true);
    assert_eq!(s.post("/generate", &json!({"prompt": ""})).status(), 400);

    let v: Value = s.post("/validate-model", &json!({"model": SMOL})).json().expect("json");
    assert_eq!(v["available"], true, "{v}");
    assert!(v["size"].as_u64().is_some_and(|n| n > 1_000_000));
    assert!(v["score"]["tokens_per_second"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    let missing: Value = s.post("/validate-model", &json!({"model": "nope:1b"})).json().expect("json");
    assert_eq!(missing["available"], false);
    assert!(s.post("/cache/clear", &json!({})).status().is_success());

    let conf: Value = s
        .post("/llm/configure", &json!({"scenario": "tavern", "system": "You are a tavern keeper in a fantasy game.", "temperature": 0, "max_tokens": 8}))
        .json()
        .expect("json");
    assert_eq!(conf["stored"], true, "{conf}");
    let g: Value = s.post("/llm/generate", &json!({"prompt": "What's on the menu?", "scenario": "tavern"})).json().expect("json");
    assert!(g["text"].as_str().is_some_and(|t| !t.is_empty()), "{g}");
    assert!(g["usage"]["completion_tokens"].as_u64().is_some_and(|n| (1..=8).contains(&n)), "{g}");
    assert_eq!(s.post("/llm/generate", &json!({"prompt": "x", "scenario": "nowhere"})).status(), 404);
    assert_eq!(s.post("/llm/configure", &json!({"scenario": "bad", "temperature": "hot"})).status(), 400);
}

#[test]
fn a_persona_with_an_adapter_loads_as_its_own_instance() {
    let dir = temp_dir("persona-lora");
    let python = std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let lora = dir.join("lora.gguf");
    let status = Command::new(&python)
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make_lora.py")])
        .arg(crate::support::model_path(SMOL))
        .arg(&lora)
        .status()
        .expect("run make_lora.py (HEARTH_TEST_PYTHON needs the gguf package)");
    assert!(status.success());
    let config = dir.join("hearth.yaml");
    std::fs::write(&config, "personas:\n  tuned:\n    model: smollm2:135m\n    adapter: lora.gguf\n    options: {temperature: 0, num_predict: 12}\n").expect("write");
    let s = Server::start_with(&["--config", config.to_str().expect("path")]);
    let ask = |model: &str| -> Value {
        s.post("/api/generate", &json!({"model": model, "prompt": "Who are you?", "stream": false, "options": {"temperature": 0, "num_predict": 12}}))
            .json()
            .expect("json")
    };
    let tuned = ask("tuned");
    let base = ask(SMOL);
    assert_ne!(tuned["response"], base["response"], "the adapter is applied");
    let mut loaded = s.loaded();
    loaded.sort();
    assert_eq!(loaded, vec![SMOL.to_string(), "tuned:latest".to_string()]);
}

#[test]
fn a_generation_past_the_request_timeout_is_stopped_with_504() {
    let s = Server::start_with_env(&[], &[("REQUEST_TIMEOUT", "3")]);
    let long = json!({"model": SMOL, "prompt": "Write a very long story about a dragon.", "stream": false,
                      "options": {"num_predict": 2000, "temperature": 0.8}});
    let started = Instant::now();
    let r = s.post("/api/generate", &long);
    assert_eq!(r.status(), 504);
    assert!(r.text().expect("body").contains("time limit"));
    assert!(started.elapsed() < Duration::from_secs(60), "the timeout stopped it");
    // The server goes on serving.
    assert!(s.alive());
}

#[test]
fn concurrent_turns_on_one_conversation_take_turns() {
    let s = std::sync::Arc::new(Server::start());
    let turn = |s: &Server, text: &str| -> Value {
        s.post("/api/chat", &json!({"model": SMOL, "conversation_id": "busy", "stream": false,
            "messages": [{"role": "user", "content": text}], "options": {"temperature": 0, "num_predict": 8}}))
            .json()
            .expect("json")
    };
    let handles: Vec<_> = ["Tell me about cats.", "Tell me about dogs."]
        .into_iter()
        .map(|text| {
            let s = s.clone();
            std::thread::spawn(move || turn(&s, text))
        })
        .collect();
    let mut answers: Vec<Value> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    // Whichever went second saw the first's exchange in its prompt.
    answers.sort_by_key(|a| a["prompt_eval_count"].as_u64());
    let (first, second) = (&answers[0], &answers[1]);
    assert!(
        second["prompt_eval_count"].as_u64() > first["prompt_eval_count"].as_u64().map(|n| n + 8),
        "the later turn includes the earlier one: {first} {second}"
    );
    let stored: Value = s.get("/api/conversations/busy").json().expect("json");
    let roles: Vec<&str> = stored["messages"].as_array().expect("messages").iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
}

// ---------------------------------------------------------------- failure paths

#[test]
fn a_worker_that_panics_costs_its_request_one_500_and_the_next_request_loads_the_model_again() {
    // The debug build's hook: the process's first generation panics on the worker thread.
    let s = Server::start_with_env(&[], &[("HEARTH_FAULT_WORKER_PANIC", "1")]);
    let ask = || s.post("/api/generate", &json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 4}}));
    let first = ask();
    assert_eq!(first.status(), 500);
    let body: Value = first.json().expect("json");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("worker")), "{body}");
    let second = ask();
    assert_eq!(second.status(), 200);
    let body: Value = second.json().expect("json");
    assert_eq!(body["done"], true, "{body}");
    assert!(body["eval_count"].as_u64().is_some_and(|n| (1..=4).contains(&n)), "{body}");
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"].as_array().expect("models").len(), 1, "{ps}");
}
