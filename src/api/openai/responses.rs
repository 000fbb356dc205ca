//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: OpenAI's Responses API. Input
//! items (messages, `function_call`, `function_call_output`) become chat messages;
//! `instructions` the system prompt (not carried to the next turn, as OpenAI defines it);
//! `text.format` structured output; function tools as on chat completions.
//!
//! Unlike Ollama's stateless `/v1/responses`, hearth keeps state: a response is stored (unless
//! `store: false`) in the conversation database with its turn's messages, and
//! `previous_response_id` continues from it; the chain's turns are history, the first to go
//! when the context is short. A response is stored only once its answer has finished.

use super::responses_stream::stream_response;
use super::*;
use crate::conversations::TurnMessages;

#[derive(Debug, Deserialize)]
pub(super) struct ResponsesRequest {
    model: Option<String>,
    input: Option<Value>,
    instructions: Option<String>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    text: Option<Value>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stream: Option<bool>,
    store: Option<bool>,
    previous_response_id: Option<String>,
    metadata: Option<Value>,
    user: Option<String>,
    parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    service: crate::api::ollama::ServiceFields,
}

/// What the response object repeats of the request, and what the answer's turn stores.
pub(super) struct Turn {
    pub(super) id: String,
    pub(super) created_at: u64,
    pub(super) model: String,
    pub(super) request: Value,
    pub(super) previous: Option<String>,
    pub(super) store: bool,
    /// This turn's input as the model saw it (without the instructions).
    pub(super) input: TurnMessages,
}

/// The text of a message's content: a string, or its text parts.
fn content_text(content: &Value, at: &str) -> OaiResult<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => text.push(p.get("text").and_then(Value::as_str).unwrap_or("").to_string()),
                    Some("refusal") => text.push(p.get("refusal").and_then(Value::as_str).unwrap_or("").to_string()),
                    Some(kind) => return Err(invalid("input", format!("{at}.content[{j}]: parts of type {kind:?} are not supported (only text)"))),
                    None => return Err(invalid("input", format!("{at}.content[{j}]: a part needs a type"))),
                }
            }
            Ok(text.concat())
        }
        _ => Err(invalid("input", format!("{at}.content: expected a string or a list of parts"))),
    }
}

/// Input items as (role, content) messages.
fn input_messages(input: &Value) -> OaiResult<TurnMessages> {
    let items = match input {
        Value::String(s) => return Ok(vec![("user".into(), s.clone())]),
        Value::Array(items) => items,
        _ => return Err(invalid("input", "input must be a string or a list of items")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("developer" | "system") => "system",
                    Some(r @ ("user" | "assistant")) => r,
                    other => return Err(invalid("input", format!("{at}.role: {other:?} is not a role: use user, assistant, system or developer"))),
                };
                out.push((role.to_string(), content_text(item.get("content").unwrap_or(&Value::Null), &at)?));
            }
            "function_call" => {
                let name = item.get("name").and_then(Value::as_str).ok_or_else(|| invalid("input", format!("{at}.name is required")))?;
                let args = item.get("arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or(json!({}));
                out.push(("assistant".into(), crate::engine::grammar::call_text(name, &args)));
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => content_text(v, &at)?,
                    _ => return Err(invalid("input", format!("{at}.output is required"))),
                };
                out.push(("tool".into(), output));
            }
            "reasoning" => {}
            other => return Err(invalid("input", format!("{at}: items of type {other:?} are not supported"))),
        }
    }
    Ok(out)
}

/// Responses' flat function tools (`{type, name, description, parameters}`) as hearth's.
fn tool_request(tools: Option<&Vec<Value>>, choice: Option<&Value>) -> OaiResult<Option<ToolRequest>> {
    // `{"type": "function", "name": ...}` is chat completions' `{"type": "function", "function": {"name": ...}}`.
    let choice = match choice {
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") && o.contains_key("name") => {
            Some(json!({ "type": "function", "function": { "name": o.get("name") } }))
        }
        c => c.cloned(),
    };
    let choice = tool_choice(choice.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("tool_choice") })?;
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return match choice {
            ToolChoice::Required | ToolChoice::Named(_) => Err(invalid("tool_choice", "tool_choice needs tools")),
            _ => Ok(None),
        };
    };
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            Some("function") | None => {}
            Some(kind) => return Err(invalid("tools", format!("tools[{i}]: built-in tools ({kind:?}) are not available here: use function tools"))),
        }
        functions.push(json!({ "type": "function", "function": { "name": t.get("name"), "description": t.get("description"), "parameters": t.get("parameters") } }));
    }
    let tools = parse_tools(&functions).map_err(|e| OpenAiError { error: e, param: Some("tools") })?;
    Ok(Some(ToolRequest { tools, choice }))
}

impl ResponsesRequest {
    /// The request for the service, and what the response object needs. `prior` is the
    /// stored chain of `previous_response_id`.
    fn validate(self, prior: TurnMessages) -> OaiResult<(ValidRequest, Turn)> {
        let mut service = self.service.clone().validate(None).map_err(OpenAiError::from)?;
        if service.conversation_id.is_some() && self.previous_response_id.is_some() {
            return Err(invalid("previous_response_id", "previous_response_id and conversation_id can't be combined"));
        }
        service.sticky = self.user.clone().filter(|u| !u.trim().is_empty());
        service.prior = prior.into_iter().map(|(role, content)| TemplateMessage { role, content }).collect();
        let model = self.model.clone().filter(|m| !m.is_empty()).or_else(|| service.persona.clone()).ok_or_else(|| invalid("model", "model is required"))?;
        let mut o = Map::new();
        if let Some(m) = self.max_output_tokens {
            let most = crate::spec::options::MAX_NUM_CTX;
            if !(1..=most).contains(&m) {
                return Err(invalid("max_output_tokens", format!("max_output_tokens must be from 1 to {most}, not {m}")));
            }
            o.insert("num_predict".into(), json!(m));
        }
        for (name, v, hi) in [("temperature", self.temperature, 2.0), ("top_p", self.top_p, 1.0)] {
            if let Some(v) = v {
                if !(0.0..=hi).contains(&v) {
                    return Err(invalid(name, format!("{name} must be between 0 and {hi}, not {v}")));
                }
                o.insert(name.into(), json!(v));
            }
        }
        let options = OptionPatch::from_map(&o).map_err(|e| invalid("options", e.to_string()))?;
        let input = input_messages(self.input.as_ref().ok_or_else(|| invalid("input", "input is required"))?)?;
        if input.is_empty() {
            return Err(invalid("input", "input must not be empty"));
        }
        let format = match self.text.as_ref().and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
            None => None,
            Some(f) => match f.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(json!("json")),
                Some("json_schema") => Some(f.get("schema").cloned().ok_or_else(|| invalid("text", "text.format.schema is required"))?),
                _ => return Err(invalid("text", "text.format.type must be text, json_object or json_schema")),
            },
        };
        let tools = tool_request(self.tools.as_ref(), self.tool_choice.as_ref())?;
        let grammar = match (&tools, &format) {
            (Some(_), Some(_)) => return Err(invalid("text", "text.format and tools can't be combined: a tool call is already JSON")),
            (Some(t), None) => t.grammar().map_err(|e| OpenAiError { error: e.into(), param: Some("tool_choice") })?,
            (None, f) => format_grammar(f.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("text") })?,
        };
        let mut messages = Vec::with_capacity(input.len() + 1);
        if let Some(i) = self.instructions.as_ref().filter(|i| !i.is_empty()) {
            messages.push(TemplateMessage { role: "system".into(), content: i.clone() });
        }
        messages.extend(input.iter().map(|(role, content)| TemplateMessage { role: role.clone(), content: content.clone() }));
        let request = json!({
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata.clone().unwrap_or(json!({})),
            "parallel_tool_calls": self.parallel_tool_calls.unwrap_or(false),
            "previous_response_id": self.previous_response_id,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "text": { "format": self.text.as_ref().and_then(|t| t.get("format")).cloned().unwrap_or(json!({ "type": "text" })) },
            "tool_choice": self.tool_choice.clone().unwrap_or(json!("auto")),
            "tools": self.tools.clone().unwrap_or_default(),
            "user": self.user,
            "store": self.store.unwrap_or(true),
        });
        let turn = Turn { id: new_id("resp").replacen('-', "_", 1), created_at: unix_now(), model: model.clone(), request, previous: self.previous_response_id, store: self.store.unwrap_or(true), input };
        let req = ValidRequest {
            model,
            prompt: PromptSpec::Chat { messages, tools: tools.as_ref().map(ToolRequest::offered).unwrap_or_default() },
            tools,
            options,
            grammar,
            format: crate::api::tools::output_format(format.as_ref()),
            logprobs: None,
            keep_alive: None,
            stream: self.stream.unwrap_or(false),
            service,
        };
        Ok((req, turn))
    }
}

/// The output items of a finished answer: a message with its text, or a function call.
pub(super) fn output_items(text: &str, call: Option<&(String, Value)>) -> Vec<Value> {
    match call {
        Some((name, args)) => vec![function_call_item(name, &args.to_string(), "completed")],
        None => vec![message_item(text, "completed")],
    }
}

pub(super) fn message_item(text: &str, status: &str) -> Value {
    json!({ "type": "message", "id": new_id("msg").replacen('-', "_", 1), "status": status, "role": "assistant",
            "content": [{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }] })
}

pub(super) fn function_call_item(name: &str, arguments: &str, status: &str) -> Value {
    json!({ "type": "function_call", "id": new_id("fc").replacen('-', "_", 1), "call_id": new_id("call").replacen('-', "_", 1),
            "name": name, "arguments": arguments, "status": status })
}

/// The response object: the request's echo, the output and, once finished, status and usage.
pub(super) fn response_object(turn: &Turn, status: &str, output: Vec<Value>, done: Option<&crate::engine::Completion>) -> Value {
    let mut v = turn.request.clone();
    v["id"] = json!(turn.id);
    v["object"] = json!("response");
    v["created_at"] = json!(turn.created_at);
    v["model"] = json!(turn.model);
    v["status"] = json!(status);
    v["error"] = Value::Null;
    v["output"] = json!(output);
    v["incomplete_details"] = match done {
        Some(c) if c.reason == DoneReason::Length => json!({ "reason": "max_output_tokens" }),
        _ => Value::Null,
    };
    v["usage"] = match done {
        Some(c) => json!({
            "input_tokens": c.prompt_tokens,
            "input_tokens_details": { "cached_tokens": c.cached_tokens },
            "output_tokens": c.eval_tokens,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": c.prompt_tokens + c.eval_tokens,
        }),
        None => Value::Null,
    };
    v
}

/// The status of a finished answer.
pub(super) fn finished_status(c: &crate::engine::Completion) -> &'static str {
    if c.reason == DoneReason::Length { "incomplete" } else { "completed" }
}

/// Stores a finished turn (when asked and a store is there): its input and the answer as the
/// model wrote it.
pub(super) async fn store_turn(app: &AppState, turn: &Turn, answer: String, body: &Value) -> Result<(), ApiError> {
    let Some(store) = app.service.conversations.as_ref().filter(|_| turn.store) else { return Ok(()) };
    let mut messages = turn.input.clone();
    messages.push(("assistant".into(), answer));
    store.put_response(&turn.id, turn.previous.as_deref(), messages, body.to_string()).await?;
    Ok(())
}

/// The answer's text as the next turn shows it to the model: a call as the JSON hearth's
/// engine writes.
pub(super) fn answer_text(text: &str, call: Option<&(String, Value)>) -> String {
    match call {
        Some((name, args)) => crate::engine::grammar::call_text(name, args),
        None => text.to_string(),
    }
}

/// The stored chain a request continues.
async fn prior(app: &AppState, previous: Option<&str>) -> OaiResult<TurnMessages> {
    let Some(id) = previous else { return Ok(Vec::new()) };
    let store = app.service.conversations.as_ref().ok_or_else(|| invalid("previous_response_id", "stored responses are not available on this server"))?;
    if crate::conversations::validate_id(id).is_err() {
        return Err(OpenAiError { error: ApiError::not_found(format!("previous response {id:?} not found")), param: Some("previous_response_id") });
    }
    store
        .response_chain(id)
        .await
        .map_err(|e| OpenAiError::from(ApiError::from(e)))?
        .ok_or_else(|| OpenAiError { error: ApiError::not_found(format!("previous response {id:?} not found")), param: Some("previous_response_id") })
}

pub(super) async fn create(State(app): State<AppState>, Key(account, sticky): Key, OpenAiJson(req): OpenAiJson<ResponsesRequest>) -> OaiResult<Response> {
    let started = Instant::now();
    let prior = prior(&app, req.previous_response_id.as_deref()).await?;
    let (mut req, turn) = req.validate(prior)?;
    req.service.account = account;
    req.service.sticky = sticky.or(req.service.sticky);
    let (stream, tools, model) = (req.stream, req.tools.clone(), req.model.clone());
    let g = match app.service.start(req, Caller::Network, started).await.map_err(|e| service_error(e, None))? {
        Outcome::Generating(g) => g,
        Outcome::Loaded { .. } => return Err(invalid("input", "nothing to answer")),
    };
    let info = g.info.clone();
    let mut resp = if stream {
        stream_response(&app, g, tools, turn)
    } else {
        let answer = finish(g, tools).await?;
        let output = output_items(&answer.text, answer.tool_call.as_ref());
        let mut body = response_object(&turn, finished_status(&answer.completion), output, Some(&answer.completion));
        store_turn(&app, &turn, answer_text(&answer.text, answer.tool_call.as_ref()), &body).await?;
        crate::api::ollama::annotate(&mut body, &info);
        Json(body).into_response()
    };
    crate::api::mark(&mut resp, &model, Some(&info));
    Ok(resp)
}

fn not_stored(id: &str) -> OpenAiError {
    OpenAiError { error: ApiError::not_found(format!("response {id:?} not found")), param: None }
}

pub(super) async fn get_response(State(app): State<AppState>, PathParam(id): PathParam<String>) -> OaiResult<Json<Value>> {
    let store = app.service.conversations.as_ref().ok_or_else(|| not_stored(&id))?;
    if crate::conversations::validate_id(&id).is_err() {
        return Err(not_stored(&id));
    }
    let body = store.response(&id).await.map_err(|e| OpenAiError::from(ApiError::from(e)))?.ok_or_else(|| not_stored(&id))?;
    Ok(Json(serde_json::from_str(&body).map_err(|e| OpenAiError::from(ApiError::internal(format!("stored response {id} is unreadable: {e}"))))?))
}

pub(super) async fn delete_response(State(app): State<AppState>, PathParam(id): PathParam<String>) -> OaiResult<Json<Value>> {
    let store = app.service.conversations.as_ref().ok_or_else(|| not_stored(&id))?;
    if crate::conversations::validate_id(&id).is_err() || !store.delete_response(&id).await.map_err(|e| OpenAiError::from(ApiError::from(e)))? {
        return Err(not_stored(&id));
    }
    Ok(Json(json!({ "id": id, "object": "response", "deleted": true })))
}
