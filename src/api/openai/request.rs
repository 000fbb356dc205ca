//! The request shapes of the /v1 routes and their validation into a plan and `ValidRequest`s.

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
pub(super) struct Sampling {
    pub(super) model: Option<String>,
    pub(super) max_tokens: Option<i64>,
    pub(super) max_completion_tokens: Option<i64>,
    pub(super) temperature: Option<f64>,
    pub(super) top_p: Option<f64>,
    pub(super) seed: Option<i64>,
    pub(super) stop: Option<Value>,
    pub(super) frequency_penalty: Option<f64>,
    pub(super) presence_penalty: Option<f64>,
    pub(super) n: Option<i64>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: Option<StreamOptions>,
    pub(super) logit_bias: Option<Value>,
    /// Keeps one user on one variant of a split route.
    pub(super) user: Option<String>,
    // Extras: what Ollama and llama-server users send.
    pub(super) num_ctx: Option<i64>,
    pub(super) keep_alive: Option<Value>,
    pub(super) top_k: Option<i64>,
    pub(super) min_p: Option<f64>,
    pub(super) repeat_penalty: Option<f64>,
    /// hearth's own: a prompt template's name, with `variables`.
    pub(super) template: Option<String>,
    #[serde(flatten)]
    pub(super) service: crate::api::ollama::ServiceFields,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatCompletionRequest {
    #[serde(flatten)]
    pub(super) sampling: Sampling,
    pub(super) messages: Option<Vec<OaiMessage>>,
    pub(super) response_format: Option<Value>,
    pub(super) tools: Option<Vec<Value>>,
    pub(super) tool_choice: Option<Value>,
    pub(super) logprobs: Option<bool>,
    pub(super) top_logprobs: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OaiMessage {
    pub(super) role: String,
    #[serde(default)]
    pub(super) content: Value,
    pub(super) tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
    #[serde(flatten)]
    pub(super) sampling: Sampling,
    pub(super) prompt: Option<Value>,
    pub(super) suffix: Option<String>,
    pub(super) echo: Option<bool>,
    pub(super) logprobs: Option<i64>,
}

/// Most choices one request may ask for.
pub(super) const MAX_N: i64 = 16;

/// What every choice of a request shares.
pub(super) struct Plan {
    pub(super) model: String,
    pub(super) options: OptionPatch,
    pub(super) grammar: Option<String>,
    pub(super) logprobs: Option<u8>,
    pub(super) keep_alive: Option<KeepAlive>,
    pub(super) n: usize,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) service: crate::service::ServiceOptions,
}

impl Sampling {
    pub(super) fn plan(&self) -> OaiResult<Plan> {
        let mut service = self.service.clone().validate(self.template.clone()).map_err(|e| OpenAiError { error: e, param: None })?;
        // OpenAI's `user` keeps a user on one variant of a split route.
        service.sticky = self.user.clone().filter(|u| !u.trim().is_empty());
        let model = self
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| service.persona.clone())
            .ok_or_else(|| invalid("model", "model is required"))?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(invalid("n", format!("n must be between 1 and {MAX_N}, not {n}")));
        }
        if n > 1 && service.conversation_id.is_some() {
            return Err(invalid("n", "a conversation continues with one answer: n must be 1 with conversation_id"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| b.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(invalid("logit_bias", "logit_bias is not supported"));
        }
        let mut o = Map::new();
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max_tokens {
            let most = crate::spec::options::MAX_NUM_CTX;
            if !(1..=most).contains(&m) {
                return Err(invalid("max_tokens", format!("max_tokens must be from 1 to {most} (and is capped at the context), not {m}")));
            }
            o.insert("num_predict".into(), json!(m));
        }
        let mut range = |name: &'static str, key: &str, v: Option<f64>, lo: f64, hi: f64| -> OaiResult<()> {
            if let Some(v) = v {
                if !(lo..=hi).contains(&v) {
                    return Err(invalid(name, format!("{name} must be between {lo} and {hi}, not {v}")));
                }
                o.insert(key.into(), json!(v));
            }
            Ok(())
        };
        range("temperature", "temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", "top_p", self.top_p, 0.0, 1.0)?;
        range("frequency_penalty", "frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("presence_penalty", "presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("min_p", "min_p", self.min_p, 0.0, 1.0)?;
        range("repeat_penalty", "repeat_penalty", self.repeat_penalty, 0.0, 10.0)?;
        if let Some(s) = self.seed {
            o.insert("seed".into(), json!(s));
        }
        if let Some(k) = self.top_k {
            o.insert("top_k".into(), json!(k));
        }
        if let Some(c) = self.num_ctx {
            o.insert("num_ctx".into(), json!(c));
        }
        match &self.stop {
            None | Some(Value::Null) => {}
            Some(s @ (Value::String(_) | Value::Array(_))) => {
                o.insert("stop".into(), s.clone());
            }
            Some(_) => return Err(invalid("stop", "stop must be a string or a list of strings")),
        }
        let options = OptionPatch::from_map(&o).map_err(|e| invalid("options", e.to_string()))?;
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        Ok(Plan {
            model,
            options,
            grammar: None,
            logprobs: None,
            keep_alive,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().is_some_and(|s| s.include_usage),
            service,
        })
    }
}

/// A message's text: a string, or the text parts of a list.
pub(super) fn message_text(content: &Value, i: usize) -> OaiResult<String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(kind) => return Err(invalid("messages", format!("messages[{i}]: content parts of type {kind:?} are not supported (only text)"))),
                    None => return Err(invalid("messages", format!("messages[{i}]: a content part needs a type"))),
                }
            }
            Ok(text)
        }
        _ => Err(invalid("messages", format!("messages[{i}]: content must be a string or a list of parts"))),
    }
}

impl ChatCompletionRequest {
    pub(super) fn validate(self) -> OaiResult<(Plan, ValidRequest)> {
        let mut plan = self.sampling.plan()?;
        let messages = self.messages.ok_or_else(|| invalid("messages", "messages is required"))?;
        if messages.is_empty() {
            return Err(invalid("messages", "messages must not be empty"));
        }
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                "system" | "user" | "assistant" | "tool" => m.role.clone(),
                other => return Err(invalid("messages", format!("messages[{i}]: invalid role {other:?}: use system, developer, user, assistant or tool"))),
            };
            let mut content = message_text(&m.content, i)?;
            if content.is_empty() {
                // An earlier call is shown to the model as the JSON it wrote.
                if let Some(f) = m.tool_calls.as_ref().and_then(|c| c.first()).and_then(|c| c.get("function")) {
                    let args = f.get("arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or(json!({}));
                    content = json!({ "name": f.get("name"), "arguments": args }).to_string();
                }
            }
            out.push(TemplateMessage { role, content });
        }
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(rf) => match rf.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(json!("json")),
                Some("json_schema") => {
                    let schema = rf
                        .get("json_schema")
                        .and_then(|s| s.get("schema"))
                        .ok_or_else(|| invalid("response_format", "response_format.json_schema.schema is required"))?;
                    Some(schema.clone())
                }
                _ => return Err(invalid("response_format", "response_format.type must be text, json_object or json_schema")),
            },
        };
        plan.grammar = format_grammar(format.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("response_format") })?;
        plan.logprobs = logprob_request(self.logprobs, self.top_logprobs).map_err(|e| OpenAiError { error: e, param: Some("top_logprobs") })?;
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(invalid("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        let choice = tool_choice(self.tool_choice.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("tool_choice") })?;
        let tools = match self.tools.filter(|t| !t.is_empty()) {
            None if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) => {
                return Err(invalid("tool_choice", "tool_choice needs tools"));
            }
            None => None,
            Some(_) if plan.grammar.is_some() => {
                return Err(invalid("response_format", "response_format and tools can't be combined: a tool call is already JSON"));
            }
            Some(t) => {
                let tools = ToolRequest { tools: parse_tools(&t).map_err(|e| OpenAiError { error: e, param: Some("tools") })?, choice };
                plan.grammar = tools.grammar().map_err(|e| OpenAiError { error: e.into(), param: Some("tool_choice") })?;
                Some(tools)
            }
        };
        let req = ValidRequest {
            model: plan.model.clone(),
            prompt: PromptSpec::Chat { messages: out, tools: tools.as_ref().map(ToolRequest::offered).unwrap_or_default() },
            tools,
            options: plan.options.clone(),
            grammar: plan.grammar.clone(),
            format: super::super::tools::output_format(format.as_ref()),
            logprobs: plan.logprobs,
            keep_alive: plan.keep_alive,
            stream: plan.stream,
            service: plan.service.clone(),
        };
        Ok((plan, req))
    }
}
