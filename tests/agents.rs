//! The APIs agents speak: Anthropic's Messages API with the official `anthropic` SDK, OpenAI's
//! Responses API with stored responses across a restart (the official `openai` SDK), the
//! tokenizer routes, Ollama's `truncate`, `shift` and `think`, and the structured-output
//! wrap-up leaving answers that fit their budget alone.

use serde_json::{json, Value};

use crate::support::{run_python, temp_dir, Server, GEMMA, SMOL};

#[test]
fn official_anthropic_client_drives_messages() {
    let s = Server::start();
    for model in [SMOL, GEMMA] {
        run_python("anthropic_client.py", &[("ANTHROPIC_BASE_URL", &format!("http://{}", s.addr)), ("MODEL", model)]);
    }
}

#[test]
fn stored_responses_continue_across_a_restart() {
    let data = temp_dir("responses");
    let data = data.to_str().expect("utf8 path");
    let ids = format!("{data}/ids.json");
    for phase in ["first", "second"] {
        let s = Server::start_with_env(&[], &[("HEARTH_DATA", data)]);
        let url = format!("http://{}/v1", s.addr);
        run_python("responses_client.py", &[("OPENAI_BASE_URL", &url), ("MODEL", SMOL), ("IDS_FILE", &ids), ("PHASE", phase)]);
    }
}

#[test]
fn each_new_api_answers_errors_in_its_own_shape() {
    let s = Server::start();
    let question = json!([{"role": "user", "content": "hi"}]);
    for (body, needle) in [
        (json!({"model": SMOL, "messages": question}), "max_tokens"),
        (json!({"model": SMOL, "max_tokens": 0, "messages": question}), "max_tokens"),
        (json!({"model": SMOL, "max_tokens": 8, "messages": []}), "messages"),
        (json!({"model": SMOL, "max_tokens": 8, "messages": question, "tool_choice": {"type": "any"}}), "tool_choice"),
        (json!({"model": SMOL, "max_tokens": 8, "messages": question, "tools": [{"type": "web_search_20250305", "name": "w"}]}), "tools.0"),
        (json!({"model": SMOL, "max_tokens": 8, "messages": question, "temperature": 1.5}), "temperature"),
    ] {
        let r = s.post("/v1/messages", &body);
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().expect("json");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle}: {v}");
    }
    // A body that is not JSON, and an unknown model, still in Anthropic's shape.
    let r = s.post_raw("/v1/messages", "{\"model\":");
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().expect("json")["error"]["type"], "invalid_request_error");
    let r = s.post("/v1/messages", &json!({"model": "no-such-model", "max_tokens": 4, "messages": question}));
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().expect("json")["error"]["type"], "not_found_error");

    // Responses: OpenAI's shape, naming the field.
    for (body, param) in [
        (json!({"model": SMOL}), "input"),
        (json!({"model": SMOL, "input": "hi", "max_output_tokens": 0}), "max_output_tokens"),
        (json!({"model": SMOL, "input": "hi", "tool_choice": "required"}), "tool_choice"),
        (json!({"model": SMOL, "input": "hi", "text": {"format": {"type": "yaml"}}}), "text"),
        (json!({"model": SMOL, "input": "hi", "tools": [{"type": "web_search"}]}), "tools"),
    ] {
        let r = s.post("/v1/responses", &body);
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().expect("json");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let r = s.get("/v1/responses/resp_unknown");
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().expect("json")["error"]["code"], "response_not_found");
    assert!(s.alive());
}

#[test]
fn tokenizer_routes_agree_with_the_prompt_a_chat_gets() {
    let s = Server::start();
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]);
    let chat: Value = s
        .post("/api/chat", &json!({"model": SMOL, "messages": messages, "stream": false, "options": {"num_predict": 2}}))
        .json()
        .expect("json");
    let prompt_tokens = chat["prompt_eval_count"].as_u64().expect("count");
    // apply-template renders that same prompt: tokenized, it is as long as the chat's.
    let rendered: Value = s.post("/api/apply-template", &json!({"model": SMOL, "messages": messages})).json().expect("json");
    assert_eq!(rendered["model"], SMOL);
    assert_eq!(rendered["prompt_tokens"].as_u64(), Some(prompt_tokens), "{rendered}");
    let prompt = rendered["prompt"].as_str().expect("prompt");
    assert!(prompt.contains("Name a colour.") && prompt.contains("<|im_start|>"), "{prompt}");
    let tokens: Value = s.post("/api/tokenize", &json!({"model": SMOL, "content": prompt})).json().expect("json");
    let ids = tokens["tokens"].as_array().expect("tokens").clone();
    assert_eq!(ids.len() as u64, prompt_tokens);
    // Anthropic's count_tokens counts the same prompt.
    let count: Value = s
        .post("/v1/messages/count_tokens", &json!({"model": SMOL, "system": "Be brief.", "messages": [{"role": "user", "content": "Name a colour."}]}))
        .json()
        .expect("json");
    assert_eq!(count["input_tokens"].as_u64(), Some(prompt_tokens), "{count}");
    // Round trip: detokenizing the ids gives the text back.
    let text: Value = s.post("/api/detokenize", &json!({"model": SMOL, "tokens": ids})).json().expect("json");
    assert_eq!(text["text"], prompt);
    // llama-server's shapes: no model while exactly one is loaded; pieces on request.
    let pieces: Value = s.post("/tokenize", &json!({"content": "Hello world", "with_pieces": true})).json().expect("json");
    let pieces = pieces["tokens"].as_array().expect("tokens");
    let joined: String = pieces.iter().map(|p| p["piece"].as_str().expect("piece")).collect();
    assert_eq!(joined, "Hello world");
    let ids: Vec<Value> = pieces.iter().map(|p| p["id"].clone()).collect();
    let back: Value = s.post("/detokenize", &json!({"tokens": ids})).json().expect("json");
    assert_eq!(back["content"], "Hello world");
    let plain: Value = s.post("/apply-template", &json!({"messages": messages})).json().expect("json");
    assert_eq!(plain["prompt"], prompt);
    // Bad input: an id outside the vocabulary, no text, and no model once two are loaded.
    let r = s.post("/api/detokenize", &json!({"model": SMOL, "tokens": [1, 99_999_999]}));
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("99999999")));
    assert_eq!(s.post("/api/tokenize", &json!({"model": SMOL})).status(), 400);
    s.post("/api/generate", &json!({"model": GEMMA, "prompt": "", "stream": false}));
    let r = s.post("/tokenize", &json!({"content": "x"}));
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("model is required")));
}

#[test]
fn truncate_shift_and_think_follow_ollama() {
    let s = Server::start();
    let long = "word ".repeat(3000);
    let body = |extra: Value| {
        let mut b = json!({"model": SMOL, "prompt": long, "stream": false, "options": {"num_ctx": 512, "num_predict": 8}});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    // Refused by default (and with truncate: false), naming the way out.
    for extra in [json!({}), json!({"truncate": false})] {
        let r = s.post("/api/generate", &body(extra));
        assert_eq!(r.status(), 400);
        assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("truncate")));
    }
    // Cut from the front to leave room for the answer: exactly num_ctx - num_predict tokens.
    let v: Value = s.post("/api/generate", &body(json!({"truncate": true}))).json().expect("json");
    assert_eq!(v["prompt_eval_count"], 512 - 8, "{v}");
    // A chat drops its oldest messages first.
    let mut messages: Vec<Value> = (0..40).map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("message {i} {}", "filler ".repeat(40))})).collect();
    messages.push(json!({"role": "user", "content": "Last question?"}));
    let v: Value = s
        .post("/api/chat", &json!({"model": SMOL, "messages": messages, "stream": false, "truncate": true, "options": {"num_ctx": 512, "num_predict": 8}}))
        .json()
        .expect("json");
    assert!(v["prompt_eval_count"].as_u64().is_some_and(|n| n <= 504), "{v}");
    // shift: false ends the answer when the context is full instead of shifting it.
    let v: Value = s
        .post("/api/generate", &json!({"model": SMOL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "raw": true, "stream": false, "shift": false,
                                       "options": {"num_ctx": 64, "num_predict": 200, "temperature": 0}}))
        .json()
        .expect("json");
    // The last token is sampled from the full context and never needs a place in it.
    let used = v["prompt_eval_count"].as_u64().expect("prompt") + v["eval_count"].as_u64().expect("eval");
    assert!(used <= 64 + 1, "{v}");
    // think on a model without thinking: Ollama's error.
    let r = s.post("/api/chat", &json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "think": true}));
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("does not support thinking")));
}

/// The text of an OpenAI chat completion's message, or its call's arguments.
fn completion(s: &Server, body: &Value) -> Value {
    let r = s.post("/v1/chat/completions", body);
    assert_eq!(r.status(), 200);
    r.json::<Value>().expect("json")["choices"][0]["message"].clone()
}

#[test]
fn wrap_up_leaves_answers_that_fit_their_budget_alone() {
    let s = Server::start();
    let tool = json!({"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let call_of = |m: &Value| m["tool_calls"][0]["function"].clone();
    for model in [SMOL, GEMMA] {
        // After a tool's result, with the model free to answer in text or call again (the
        // grammar's text branch): at 32 tokens the answer is what it is at 64, or its start;
        // never a run of closing brackets.
        let after_result = |max: u32| {
            json!({"model": model, "temperature": 0, "max_tokens": max, "tools": [tool], "tool_choice": "auto", "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "22 degrees and sunny"}]})
        };
        completion(&s, &after_result(64));
        let long = completion(&s, &after_result(64));
        let short = completion(&s, &after_result(32));
        match (long["content"].as_str(), short["content"].as_str()) {
            (Some(long), Some(short)) => assert!(long.starts_with(short), "{model}: 32 tokens: {short:?}\n64 tokens: {long:?}"),
            (None, _) => assert_eq!(call_of(&short), call_of(&long), "{model}: the call at 64 tokens fits in 32: {short}"),
            (Some(long), None) => panic!("{model}: text at 64 tokens ({long:?}) but a call at 32: {short}"),
        }
    }
    // A forced call that fits in 32 tokens comes out as it does with room to spare.
    let call = |model: &str, max: u32| {
        json!({"model": model, "temperature": 0, "max_tokens": max, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    };
    completion(&s, &call(SMOL, 256));
    let roomy = completion(&s, &call(SMOL, 256));
    let tight = completion(&s, &call(SMOL, 32));
    assert!(call_of(&roomy)["arguments"].is_string(), "{roomy}");
    assert_eq!(call_of(&tight), call_of(&roomy), "a call that fits its budget must not be closed early");
    // Gemma writes this call in about 36 tokens with its layout: at 32 it is still a whole
    // call, written compactly.
    let tight = completion(&s, &call(GEMMA, 32));
    let args: Value = serde_json::from_str(call_of(&tight)["arguments"].as_str().expect("a call")).expect("arguments are JSON");
    assert!(args["city"].is_string(), "{tight}");
}
