//! The OpenAI-compatible API, structured output and tool calls: the official `openai` and
//! `ollama` Python clients unchanged, random JSON schemas through both APIs, and each API's own
//! error shape for bad schemas, `n` and `tool_choice`.

use serde_json::{json, Value};

use crate::support::{Server, GEMMA, SMOL};

fn python(script: &str, s: &Server, env: &[(&str, &str)]) {
    let (ollama, openai) = (format!("http://{}", s.addr), format!("http://{}/v1", s.addr));
    let mut all = vec![("OLLAMA_HOST", ollama.as_str()), ("OPENAI_BASE_URL", openai.as_str())];
    all.extend_from_slice(env);
    crate::support::run_python(script, &all);
}

#[test]
fn official_openai_client_works_unchanged() {
    let s = Server::start();
    python("openai_client.py", &s, &[("MODEL", SMOL), ("EMBED", "1")]);
}

#[test]
fn random_schemas_always_parse_and_validate_through_both_apis() {
    let s = Server::start();
    let models = format!("{SMOL},{GEMMA}");
    python("structured_outputs.py", &s, &[("MODELS", &models), ("COUNT", "5")]);
}

#[test]
fn official_ollama_client_gets_structured_output_and_tool_calls() {
    let s = Server::start();
    let models = format!("{SMOL},{GEMMA}");
    python("ollama_tools_client.py", &s, &[("MODELS", &models)]);
}

#[test]
fn each_api_refuses_bad_requests_in_its_own_shape() {
    let s = Server::start();
    let chat = |body: Value| {
        let r = s.post("/v1/chat/completions", &body);
        let status = r.status().as_u16();
        (status, r.json::<Value>().expect("json"))
    };
    let base = json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}]});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    for (body, param) in [
        (with(json!({"n": 0})), "n"),
        (with(json!({"tools": [tool], "tool_choice": "sometimes"})), "tool_choice"),
        (with(json!({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "g"}}})), "tool_choice"),
        (with(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": 7}}}}}})), "response_format"),
        (with(json!({"max_tokens": 0})), "max_tokens"),
        (json!({"model": SMOL}), "messages"),
    ] {
        let (status, v) = chat(body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, v) = chat(with(json!({"model": "no-such-model"})));
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(s.get("/v1/models/no-such-model").status(), 404);

    // Ollama's shape: {"error": "..."}, naming the schema's part.
    for body in [
        json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "format": {"type": "object", "properties": {"a": {"type": "integr"}}}}),
        json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "format": "yaml"}),
        json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "sometimes"}),
        json!({"model": SMOL, "prompt": "hi", "format": {"required": "a"}}),
    ] {
        let path = if body.get("prompt").is_some() { "/api/generate" } else { "/api/chat" };
        let r = s.post(path, &body);
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().expect("json");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let r = s.post("/api/chat", &json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "format": {"type": "object", "properties": {"a": {"type": "integr"}}}}));
    assert!(r.json::<Value>().expect("json")["error"].as_str().expect("error").contains("schema.properties.a.type"));
    assert!(s.alive());
}

#[test]
fn n_choices_are_decoded_in_parallel_and_differ_by_seed() {
    let s = Server::start();
    let r = s.post("/v1/chat/completions", &json!({"model": SMOL, "messages": [{"role": "user", "content": "Name a fruit."}],
        "n": 4, "seed": 5, "temperature": 1.0, "max_tokens": 8}));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    let texts: Vec<&str> = v["choices"].as_array().expect("choices").iter().map(|c| c["message"]["content"].as_str().expect("text")).collect();
    assert_eq!(texts.len(), 4);
    let distinct: std::collections::HashSet<_> = texts.iter().collect();
    assert!(distinct.len() > 1, "seeds seed+i give different choices: {texts:?}");
    // The same request repeats exactly.
    let again: Value = s.post("/v1/chat/completions", &json!({"model": SMOL, "messages": [{"role": "user", "content": "Name a fruit."}],
        "n": 4, "seed": 5, "temperature": 1.0, "max_tokens": 8})).json().expect("json");
    assert_eq!(v["choices"], again["choices"]);
    let used = v["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!((4..=32).contains(&used), "usage counts every choice's tokens: {used}");
}
