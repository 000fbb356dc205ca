//! OpenAI's API as a provider's (llama-server, vLLM, LM Studio, a cloud API):
//! `/v1/chat/completions` (and `/v1/completions` for a raw prompt), streamed as SSE with the
//! usage in the last chunk, and `/v1/embeddings`. Ollama's options map to OpenAI's fields;
//! those OpenAI lacks (`top_k`, `min_p`, `repeat_penalty`) go as the extra fields llama-server
//! and vLLM read, and only when the request set them.

use serde_json::{json, Map, Value};

use super::{call_text, done, failed, refuse_local_only, turns, Decoder, ProviderKind, Turn};
use crate::backend::{EmbedInput, EmbedJob, Embedded, EngineError, Event, GenerateJob, OutputFormat, PromptSpec};
use crate::engine::grammar::ToolChoice;
use crate::spec::options::OptionPatch;

pub(super) fn request(model: &str, job: &GenerateJob) -> Result<(&'static str, Value, Box<dyn Decoder>), EngineError> {
    refuse_local_only(job, ProviderKind::OpenAi)?;
    let mut body = sampling(&job.asked);
    body.insert("model".into(), json!(model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    let path = match &job.prompt {
        PromptSpec::Generate { template: Some(_), .. } => return Err(EngineError::Unsupported("a request template (`template`) can't be used with an OpenAI-API provider".into())),
        PromptSpec::Generate { context, .. } if !context.is_empty() => return Err(EngineError::Unsupported("`context` tokens can't be sent to an OpenAI-API provider: use /api/chat".into())),
        PromptSpec::Generate { prompt, raw: true, .. } => {
            body.insert("prompt".into(), json!(prompt));
            "/v1/completions"
        }
        PromptSpec::Generate { prompt, system, .. } => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({ "role": "system", "content": s }));
            }
            messages.push(json!({ "role": "user", "content": prompt }));
            body.insert("messages".into(), json!(messages));
            "/v1/chat/completions"
        }
        PromptSpec::Chat { messages, .. } => {
            let messages: Vec<Value> = turns(messages)
                .into_iter()
                .map(|t| match t {
                    Turn::Say { role, content } => json!({ "role": role, "content": content }),
                    Turn::Call { id, name, arguments } => json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": id, "type": "function", "function": { "name": name, "arguments": arguments.to_string() } }] }),
                    Turn::Result { id, content } => json!({ "role": "tool", "tool_call_id": id, "content": content }),
                })
                .collect();
            body.insert("messages".into(), json!(messages));
            if let Some(tools) = job.tools.as_ref().filter(|t| t.choice != ToolChoice::None) {
                body.insert("tools".into(), json!(tools.offered()));
                let choice = match &tools.choice {
                    ToolChoice::Named(name) => json!({ "type": "function", "function": { "name": name } }),
                    ToolChoice::Required => json!("required"),
                    _ => json!("auto"),
                };
                body.insert("tool_choice".into(), choice);
            }
            "/v1/chat/completions"
        }
    };
    match &job.format {
        Some(OutputFormat::Json) => {
            body.insert("response_format".into(), json!({ "type": "json_object" }));
        }
        Some(OutputFormat::Schema(schema)) => {
            body.insert("response_format".into(), json!({ "type": "json_schema", "json_schema": { "name": "output", "schema": schema, "strict": true } }));
        }
        None => {}
    }
    Ok((path, Value::Object(body), Box::new(Chunks::default())))
}

/// The sampling options a request set, in OpenAI's names.
fn sampling(o: &OptionPatch) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("temperature", o.temperature.map(|v| json!(v)));
    put("top_p", o.top_p.map(|v| json!(v)));
    put("max_tokens", o.num_predict.filter(|n| *n > 0).map(|v| json!(v)));
    put("stop", o.stop.as_ref().filter(|s| !s.is_empty()).map(|v| json!(v)));
    put("seed", o.seed.filter(|s| *s >= 0).map(|v| json!(v)));
    put("presence_penalty", o.presence_penalty.map(|v| json!(v)));
    put("frequency_penalty", o.frequency_penalty.map(|v| json!(v)));
    put("top_k", o.top_k.map(|v| json!(v)));
    put("min_p", o.min_p.map(|v| json!(v)));
    put("repeat_penalty", o.repeat_penalty.map(|v| json!(v)));
    m
}

/// OpenAI's SSE chunks: `data: {...}` lines ending with `data: [DONE]`; text in
/// `choices[0].delta.content` (or `.text` for completions), tool calls in pieces in
/// `delta.tool_calls`, the usage in a last chunk without choices.
#[derive(Default)]
struct Chunks {
    call: Option<(String, String)>,
    length: bool,
    usage: (u64, u64),
}

impl Decoder for Chunks {
    fn line(&mut self, line: &str) -> Vec<Event> {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Vec::new();
        };
        if data == "[DONE]" {
            return self.end_ok();
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return vec![failed(format!("not an OpenAI stream chunk: {}", data.chars().take(100).collect::<String>()))];
        };
        if let Some(e) = v.get("error") {
            return vec![failed(e["message"].as_str().map_or_else(|| e.to_string(), str::to_string))];
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = (u["prompt_tokens"].as_u64().unwrap_or(0), u["completion_tokens"].as_u64().unwrap_or(0));
        }
        let mut events = Vec::new();
        let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
            return events;
        };
        let delta = &choice["delta"];
        let text = delta["content"].as_str().or_else(|| choice["text"].as_str()).unwrap_or("");
        if !text.is_empty() {
            events.push(Event::Text(text.to_string()));
        }
        // hearth answers with one call: the first one's pieces.
        if let Some(c) = delta["tool_calls"].as_array().and_then(|c| c.first()).filter(|c| c["index"].as_u64().unwrap_or(0) == 0) {
            let f = &c["function"];
            let call = self.call.get_or_insert_with(Default::default);
            if let Some(n) = f["name"].as_str() {
                call.0.push_str(n);
            }
            if let Some(a) = f["arguments"].as_str() {
                call.1.push_str(a);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.length = reason == "length";
        }
        events
    }

    fn end(&mut self) -> Vec<Event> {
        // Some servers close the stream without `[DONE]`: what arrived is the answer.
        self.end_ok()
    }
}

impl Chunks {
    fn end_ok(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some((name, arguments)) = self.call.take() {
            let arguments = serde_json::from_str(&arguments).unwrap_or(Value::String(arguments));
            events.push(Event::Text(call_text(&name, &arguments)));
        }
        events.push(done(self.length, self.usage.0, self.usage.1));
        events
    }
}

pub(super) fn embed_request(model: &str, job: &EmbedJob) -> (&'static str, Value) {
    let inputs: Vec<Value> = job
        .inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => json!(t),
            EmbedInput::Tokens(t) => json!(t),
        })
        .collect();
    ("/v1/embeddings", json!({ "model": model, "input": inputs, "encoding_format": "float" }))
}

pub(super) fn read_embeddings(v: &Value) -> Option<Embedded> {
    let mut data: Vec<&Value> = v["data"].as_array()?.iter().collect();
    data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
    let vectors = data.iter().map(|d| d["embedding"].as_array().map(|x| x.iter().filter_map(|f| f.as_f64().map(|f| f as f32)).collect())).collect::<Option<Vec<Vec<f32>>>>()?;
    Some(Embedded { vectors, prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize })
}
