//! Each provider API's request as built from a job, and its answer's stream read back into
//! events, from recorded lines: no server.

use super::*;
use crate::engine::grammar::{ToolChoice, ToolRequest, ToolSpec};
use crate::spec::options::OptionPatch;

fn job(prompt: PromptSpecArg) -> GenerateJob {
    let asked = OptionPatch { temperature: Some(0.0), num_predict: Some(16), ..OptionPatch::default() };
    GenerateJob {
        prompt: match prompt {
            PromptSpecArg::Chat(m) => crate::backend::PromptSpec::Chat { messages: m, tools: Vec::new() },
        },
        droppable: 0..0,
        options: asked.resolve(2048),
        model_system: None,
        model_template: None,
        asked,
        tools: None,
        format: None,
    }
}

enum PromptSpecArg {
    Chat(Vec<TemplateMessage>),
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage { role: role.into(), content: content.into() }
}

fn weather() -> ToolRequest {
    ToolRequest { tools: vec![ToolSpec { name: "weather".into(), description: "w".into(), parameters: serde_json::json!({"type": "object"}) }], choice: ToolChoice::Required }
}

fn read(decoder: &mut dyn Decoder, lines: &[&str]) -> Vec<String> {
    let mut events: Vec<Event> = lines.iter().flat_map(|l| decoder.line(l)).collect();
    if !ends(&events) {
        events.extend(decoder.end());
    }
    events
        .into_iter()
        .map(|e| match e {
            Event::Text(t) => format!("text {t}"),
            Event::Done(c) => format!("done {:?} {} {}", c.reason, c.prompt_tokens, c.eval_tokens),
            Event::Failed(e) => format!("failed {e}"),
            Event::Logprob(_) => "logprob".into(),
        })
        .collect()
}

#[test]
fn tool_history_gets_ids_that_link_calls_and_results() {
    let t = turns(&[msg("user", "hi"), msg("assistant", r#"{"name": "weather", "arguments": {"city": "Paris"}}"#), msg("tool", "sunny"), msg("assistant", "It is sunny.")]);
    assert_eq!(t[1], Turn::Call { id: "call_1".into(), name: "weather".into(), arguments: serde_json::json!({"city": "Paris"}) });
    assert_eq!(t[2], Turn::Result { id: "call_1".into(), content: "sunny".into() });
    assert_eq!(t[3], Turn::Say { role: "assistant".into(), content: "It is sunny.".into() });
}

#[test]
fn each_api_gets_the_options_that_were_asked_for_in_its_own_names() {
    let j = job(PromptSpecArg::Chat(vec![msg("system", "be brief"), msg("user", "hi")]));
    let (path, body, _) = ollama::request("m", &j).expect("ok");
    assert_eq!((path, &body["options"]["temperature"], &body["options"]["num_predict"]), ("/api/chat", &serde_json::json!(0.0), &serde_json::json!(16)));
    assert!(body["options"].get("top_k").is_none(), "only what was asked");
    let (path, body, _) = openai::request("m", &j).expect("ok");
    assert_eq!((path, &body["max_tokens"], &body["stream_options"]["include_usage"]), ("/v1/chat/completions", &serde_json::json!(16), &serde_json::json!(true)));
    let (path, body, _) = anthropic::request("m", &j, 4096).expect("ok");
    assert_eq!((path, &body["system"], &body["max_tokens"]), ("/v1/messages", &serde_json::json!("be brief"), &serde_json::json!(16)));
    assert_eq!(body["messages"], serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));
    let mut with_logprobs = j.clone();
    with_logprobs.options.logprobs = Some(1);
    assert!(matches!(openai::request("m", &with_logprobs), Err(EngineError::Unsupported(_))));
}

#[test]
fn a_required_tool_call_goes_as_each_apis_choice() {
    let mut j = job(PromptSpecArg::Chat(vec![msg("user", "weather?")]));
    j.tools = Some(weather());
    let (_, body, _) = ollama::request("m", &j).expect("ok");
    assert_eq!((body["tools"][0]["function"]["name"].as_str(), body["tool_choice"].as_str()), (Some("weather"), Some("required")), "{body}");
    let (_, body, _) = openai::request("m", &j).expect("ok");
    assert_eq!(body["tool_choice"], "required");
    let (_, body, _) = anthropic::request("m", &j, 10).expect("ok");
    assert_eq!(body["tool_choice"], serde_json::json!({"type": "any"}));
}

#[test]
fn streams_read_back_as_text_calls_and_counts() {
    let (_, _, mut d) = ollama::request("m", &job(PromptSpecArg::Chat(vec![msg("user", "x")]))).expect("ok");
    let got = read(d.as_mut(), &[r#"{"message":{"content":"He"},"done":false}"#, r#"{"message":{"content":"llo"},"done":true,"done_reason":"length","prompt_eval_count":5,"eval_count":2}"#]);
    assert_eq!(got, ["text He", "text llo", "done Length 5 2"]);
    let (_, _, mut d) = openai::request("m", &job(PromptSpecArg::Chat(vec![msg("user", "x")]))).expect("ok");
    let got = read(
        d.as_mut(),
        &[
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"weather","arguments":"{\"ci"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            "data: [DONE]",
        ],
    );
    assert_eq!(got, [r#"text {"arguments":{"city":"Paris"},"name":"weather"}"#, "done Stop 7 3"]);
    let (_, _, mut d) = anthropic::request("m", &job(PromptSpecArg::Chat(vec![msg("user", "x")])), 10).expect("ok");
    let got = read(
        d.as_mut(),
        &[
            "event: message_start",
            r#"data: {"type":"message_start","message":{"usage":{"input_tokens":9}}}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":1}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
    );
    assert_eq!(got, ["text Hi", "done Length 9 1"]);
    let (_, _, mut d) = anthropic::request("m", &job(PromptSpecArg::Chat(vec![msg("user", "x")])), 10).expect("ok");
    assert_eq!(read(d.as_mut(), &[r#"data: {"type":"error","error":{"message":"overloaded"}}"#]), ["failed upstream: overloaded"]);
    let (_, _, mut d) = ollama::request("m", &job(PromptSpecArg::Chat(vec![msg("user", "x")]))).expect("ok");
    assert_eq!(read(d.as_mut(), &[r#"{"message":{"content":"He"},"done":false}"#]), ["text He", "failed upstream: the answer ended without its done line"]);
}
