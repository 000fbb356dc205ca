//! Anthropic's Messages API as a provider's: `/v1/messages`, streamed as named SSE events.
//! The system prompt goes apart from the messages, `max_tokens` is required (the request's
//! `num_predict`, else the provider's `max_tokens`), tool calls and results are content
//! blocks linked by id, and structured output is a forced call of one tool whose input schema
//! is the format: its input comes back as the answer's text.

use serde_json::{json, Value};

use super::{call_text, done, failed, refuse_local_only, turns, Decoder, ProviderKind, Turn};
use crate::backend::{EngineError, Event, GenerateJob, OutputFormat, PromptSpec};
use crate::engine::grammar::ToolChoice;

/// The tool that carries a structured answer.
const FORMAT_TOOL: &str = "json_output";

pub(super) fn request(model: &str, job: &GenerateJob, max_tokens: u32) -> Result<(&'static str, Value, Box<dyn Decoder>), EngineError> {
    refuse_local_only(job, ProviderKind::Anthropic)?;
    let o = &job.asked;
    let mut body = json!({
        "model": model,
        "stream": true,
        "max_tokens": o.num_predict.filter(|n| *n > 0).unwrap_or(i64::from(max_tokens)),
    });
    if let Some(t) = o.temperature {
        body["temperature"] = json!(t.min(1.0));
    }
    if let Some(p) = o.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(k) = o.top_k {
        body["top_k"] = json!(k);
    }
    if let Some(stop) = o.stop.as_ref().filter(|s| !s.is_empty()) {
        body["stop_sequences"] = json!(stop);
    }
    let (system, messages) = match &job.prompt {
        PromptSpec::Generate { template: Some(_), .. } | PromptSpec::Generate { raw: true, .. } => {
            return Err(EngineError::Unsupported("raw prompts and request templates can't be used with an Anthropic provider".into()))
        }
        PromptSpec::Generate { context, .. } if !context.is_empty() => return Err(EngineError::Unsupported("`context` tokens can't be sent to an Anthropic provider: use /api/chat".into())),
        PromptSpec::Generate { prompt, system, .. } => (system.clone(), vec![json!({ "role": "user", "content": prompt })]),
        PromptSpec::Chat { messages, .. } => blocks(turns(messages)),
    };
    if let Some(s) = system {
        body["system"] = json!(s);
    }
    body["messages"] = json!(messages);
    let mut format_tool = false;
    if let Some(format) = &job.format {
        let schema = match format {
            OutputFormat::Json => json!({ "type": "object" }),
            OutputFormat::Schema(s) => s.clone(),
        };
        body["tools"] = json!([{ "name": FORMAT_TOOL, "description": "Answer with this JSON.", "input_schema": schema }]);
        body["tool_choice"] = json!({ "type": "tool", "name": FORMAT_TOOL });
        format_tool = true;
    } else if let Some(tools) = &job.tools {
        let defs: Vec<Value> = tools.tools.iter().map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.parameters })).collect();
        body["tools"] = json!(defs);
        body["tool_choice"] = match &tools.choice {
            ToolChoice::None => json!({ "type": "none" }),
            ToolChoice::Auto => json!({ "type": "auto" }),
            ToolChoice::Required => json!({ "type": "any" }),
            ToolChoice::Named(n) => json!({ "type": "tool", "name": n }),
        };
    }
    Ok(("/v1/messages", body, Box::new(Events { format_tool, ..Default::default() })))
}

/// The system prompt, and the messages as content blocks; turns of one role in a row are one
/// message (the API wants user and assistant to alternate).
fn blocks(turns: Vec<Turn>) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<String> = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for t in turns {
        let (role, block) = match t {
            Turn::Say { role, content } if role == "system" => {
                system.push(content);
                continue;
            }
            Turn::Say { role, content } => (if role == "assistant" { "assistant" } else { "user" }, json!({ "type": "text", "text": content })),
            Turn::Call { id, name, arguments } => ("assistant", json!({ "type": "tool_use", "id": id, "name": name, "input": arguments })),
            Turn::Result { id, content } => ("user", json!({ "type": "tool_result", "tool_use_id": id, "content": content })),
        };
        match out.last_mut() {
            Some((r, blocks)) if r == role => blocks.push(block),
            _ => out.push((role.to_string(), vec![block])),
        }
    }
    let messages = out.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect();
    ((!system.is_empty()).then(|| system.join("\n\n")), messages)
}

/// Anthropic's events, read from their `data:` lines (each names its own `type`).
#[derive(Default)]
struct Events {
    format_tool: bool,
    /// The tool call being streamed: its name and its input's JSON so far.
    call: Option<(String, String)>,
    length: bool,
    /// The stop sequence that ended the answer, as the provider reported it.
    stop_sequence: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
}

impl Decoder for Events {
    fn line(&mut self, line: &str) -> Vec<Event> {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return vec![failed(format!("not an Anthropic stream event: {}", data.chars().take(100).collect::<String>()))];
        };
        match v["type"].as_str().unwrap_or("") {
            "message_start" => {
                self.input_tokens = v["message"]["usage"]["input_tokens"].as_u64().unwrap_or(0);
                Vec::new()
            }
            "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                if self.call.is_none() {
                    self.call = Some((v["content_block"]["name"].as_str().unwrap_or("").to_string(), String::new()));
                }
                Vec::new()
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => d["text"].as_str().filter(|t| !t.is_empty()).map(|t| vec![Event::Text(t.to_string())]).unwrap_or_default(),
                    Some("input_json_delta") => {
                        if let (Some((_, input)), Some(part)) = (self.call.as_mut(), d["partial_json"].as_str()) {
                            input.push_str(part);
                        }
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.length = v["delta"]["stop_reason"] == "max_tokens";
                self.stop_sequence = v["delta"]["stop_sequence"].as_str().map(str::to_string);
                self.output_tokens = v["usage"]["output_tokens"].as_u64().unwrap_or(self.output_tokens);
                Vec::new()
            }
            "message_stop" => self.finish(),
            "error" => vec![failed(v["error"]["message"].as_str().unwrap_or("the provider reported an error").to_string())],
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Event> {
        vec![failed("the answer ended without message_stop")]
    }
}

impl Events {
    fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some((name, input)) = self.call.take() {
            let input = if input.trim().is_empty() { "{}".to_string() } else { input };
            if self.format_tool {
                events.push(Event::Text(input));
            } else {
                let arguments = serde_json::from_str(&input).unwrap_or(Value::String(input));
                events.push(Event::Text(call_text(&name, &arguments)));
            }
        }
        let mut end = done(self.length, self.input_tokens, self.output_tokens);
        if let Event::Done(c) = &mut end {
            c.stop_sequence = self.stop_sequence.take();
        }
        events.push(end);
        events
    }
}
