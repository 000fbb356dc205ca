//! Ollama's API as a provider's (Ollama itself, another hearth): `/api/chat`, `/api/generate`
//! and `/api/embed`, streamed as NDJSON. Options go as Ollama's `options` object, as asked.
//! Tools go as Ollama's `tools`, with `tool_choice` in OpenAI's values beside them: hearth's
//! own extension, which another hearth follows and Ollama ignores.

use std::time::Duration;

use serde_json::{json, Value};

use super::{call_text, done, failed, refuse_local_only, turns, Decoder, ProviderKind, Turn};
use crate::backend::{EmbedInput, EmbedJob, Embedded, EngineError, Event, GenerateJob, OutputFormat, PromptSpec};
use crate::engine::grammar::ToolChoice;

pub(super) fn request(model: &str, job: &GenerateJob) -> Result<(&'static str, Value, Box<dyn Decoder>), EngineError> {
    refuse_local_only(job, ProviderKind::Ollama)?;
    let mut body = json!({ "model": model, "stream": true, "options": job.asked });
    let format = job.format.as_ref().map(|f| match f {
        OutputFormat::Json => json!("json"),
        OutputFormat::Schema(s) => s.clone(),
    });
    let path = match &job.prompt {
        PromptSpec::Generate { prompt, system, template, raw, context } => {
            body["prompt"] = json!(prompt);
            if let Some(s) = system {
                body["system"] = json!(s);
            }
            if let Some(t) = template {
                body["template"] = json!(t);
            }
            if *raw {
                body["raw"] = json!(true);
            }
            if !context.is_empty() {
                body["context"] = json!(context);
            }
            "/api/generate"
        }
        PromptSpec::Chat { messages, .. } => {
            let messages: Vec<Value> = turns(messages)
                .into_iter()
                .map(|t| match t {
                    Turn::Say { role, content } => json!({ "role": role, "content": content }),
                    Turn::Call { name, arguments, .. } => json!({ "role": "assistant", "content": "", "tool_calls": [{ "function": { "name": name, "arguments": arguments } }] }),
                    Turn::Result { content, .. } => json!({ "role": "tool", "content": content }),
                })
                .collect();
            body["messages"] = json!(messages);
            if let Some(tools) = job.tools.as_ref().filter(|t| t.choice != ToolChoice::None) {
                body["tools"] = json!(tools.offered());
                body["tool_choice"] = match &tools.choice {
                    ToolChoice::Named(name) => json!({ "type": "function", "function": { "name": name } }),
                    ToolChoice::Required => json!("required"),
                    _ => json!("auto"),
                };
            }
            "/api/chat"
        }
    };
    if let Some(f) = format {
        body["format"] = f;
    }
    Ok((path, body, Box::new(Lines::default())))
}

/// Ollama's NDJSON lines: text in `message.content` (chat) or `response` (generate), tool calls
/// in `message.tool_calls`, the accounting on the `done` line.
#[derive(Default)]
struct Lines {
    call: Option<(String, Value)>,
}

impl Decoder for Lines {
    fn line(&mut self, line: &str) -> Vec<Event> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return vec![failed(format!("not an Ollama stream line: {}", line.chars().take(100).collect::<String>()))];
        };
        if let Some(e) = v.get("error") {
            return vec![failed(e.as_str().map_or_else(|| e.to_string(), str::to_string))];
        }
        let mut events = Vec::new();
        let text = v["message"]["content"].as_str().or_else(|| v["response"].as_str()).unwrap_or("");
        if !text.is_empty() {
            events.push(Event::Text(text.to_string()));
        }
        if let Some(call) = v["message"]["tool_calls"].as_array().and_then(|c| c.first()) {
            let f = &call["function"];
            if let Some(name) = f["name"].as_str() {
                self.call.get_or_insert((name.to_string(), f["arguments"].clone()));
            }
        }
        if v["done"].as_bool() == Some(true) {
            if let Some((name, arguments)) = self.call.take() {
                events.push(Event::Text(call_text(&name, &arguments)));
            }
            let mut end = done(v["done_reason"].as_str() == Some("length"), v["prompt_eval_count"].as_u64().unwrap_or(0), v["eval_count"].as_u64().unwrap_or(0));
            if let Event::Done(c) = &mut end {
                c.prompt_eval = Duration::from_nanos(v["prompt_eval_duration"].as_u64().unwrap_or(0));
                c.eval = Duration::from_nanos(v["eval_duration"].as_u64().unwrap_or(0));
                c.context = v["context"].as_array().map(|a| a.iter().filter_map(|t| t.as_i64().map(|t| t as i32)).collect()).unwrap_or_default();
            }
            events.push(end);
        }
        events
    }

    fn end(&mut self) -> Vec<Event> {
        vec![failed("the answer ended without its done line")]
    }
}

pub(super) fn embed_request(model: &str, job: &EmbedJob) -> Result<(&'static str, Value), EngineError> {
    let inputs = job
        .inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => Ok(t.clone()),
            EmbedInput::Tokens(_) => Err(EngineError::Unsupported("token arrays can't be embedded by an Ollama provider: send text".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(("/api/embed", json!({ "model": model, "input": inputs, "truncate": job.truncate })))
}

pub(super) fn read_embeddings(v: &Value) -> Option<Embedded> {
    let vectors = v["embeddings"].as_array()?.iter().map(|e| e.as_array().map(|x| x.iter().filter_map(|f| f.as_f64().map(|f| f as f32)).collect())).collect::<Option<Vec<Vec<f32>>>>()?;
    Some(Embedded { vectors, prompt_tokens: v["prompt_eval_count"].as_u64().unwrap_or(0) as usize })
}
