//! Tool calls and structured output shared by the Ollama and OpenAI wire formats: tool
//! definitions as clients send them, the choice of grammar (`format`, `response_format`,
//! `tool_choice`), and reading a finished answer back as a tool call.
//!
//! hearth offers one call per answer: the model replies either with text or with a JSON object
//! `{"name": ..., "arguments": {...}}` that a grammar holds to the tools' schemas, so the call
//! always parses and its arguments always fit the tool's parameters.

use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::grammar::{self, GrammarError, ToolChoice, ToolSpec};

impl From<GrammarError> for ApiError {
    fn from(e: GrammarError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// Parses OpenAI's `tool_choice`: `"auto"`, `"none"`, `"required"`, or
/// `{"type": "function", "function": {"name": ...}}`.
pub fn tool_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::bad_request(format!("invalid tool_choice {other:?}: use auto, none, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"))),
        },
        Some(Value::Object(o)) => match (o.get("type").and_then(Value::as_str), o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str)) {
            (Some("function"), Some(name)) => Ok(ToolChoice::Named(name.to_string())),
            _ => Err(ApiError::bad_request("invalid tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}")),
        },
        Some(_) => Err(ApiError::bad_request("invalid tool_choice: expected a string or an object")),
    }
}

/// Most tools one request may offer.
const MAX_TOOLS: usize = 128;

/// Parses tool definitions: `{"type": "function", "function": {"name", "description", "parameters"}}`.
pub fn parse_tools(tools: &[Value]) -> Result<Vec<ToolSpec>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(format!("at most {MAX_TOOLS} tools per request")));
    }
    let mut out: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            return Err(ApiError::bad_request(format!("tools[{i}]: type {kind:?} is not supported (only \"function\")")));
        }
        let f = t.get("function").ok_or_else(|| ApiError::bad_request(format!("tools[{i}]: function is required")))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .ok_or_else(|| ApiError::bad_request(format!("tools[{i}]: function.name must be 1-64 letters, digits, '_', '-' or '.'")))?;
        if out.iter().any(|o| o.name == name) {
            return Err(ApiError::bad_request(format!("tools[{i}]: the name {name:?} is used twice")));
        }
        out.push(ToolSpec {
            name: name.to_string(),
            description: f.get("description").and_then(Value::as_str).unwrap_or("").to_string(),
            parameters: grammar::tool_parameters(name, f.get("parameters"))?,
        });
    }
    Ok(out)
}

/// Turns a `format`/`response_format` into a grammar: `"json"` (any object) or a schema.
pub fn format_grammar(format: Option<&Value>) -> Result<Option<String>, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(grammar::json_object()?)),
        Some(Value::String(s)) => Err(ApiError::bad_request(format!("invalid format {s:?}: use \"json\" or a JSON schema object"))),
        Some(schema @ Value::Object(_)) => Ok(Some(grammar::schema_grammar(schema)?)),
        Some(_) => Err(ApiError::bad_request("invalid format: use \"json\" or a JSON schema object")),
    }
}

/// Ollama's `message.tool_calls` entry.
/// The output format as asked (after `format_grammar` accepted it), for a provider's model.
pub fn output_format(format: Option<&Value>) -> Option<crate::backend::OutputFormat> {
    match format {
        Some(Value::String(s)) if s == "json" => Some(crate::backend::OutputFormat::Json),
        Some(schema @ Value::Object(_)) => Some(crate::backend::OutputFormat::Schema(schema.clone())),
        _ => None,
    }
}

pub fn ollama_call(name: &str, args: &Value) -> Value {
    json!({ "function": { "name": name, "arguments": args } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::grammar::ToolRequest;

    fn weather() -> Vec<Value> {
        vec![json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})]
    }

    #[test]
    fn tool_choice_parses_and_refuses_unknown_values() {
        assert_eq!(tool_choice(Some(&json!("required"))).expect("ok"), ToolChoice::Required);
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(tool_choice(Some(&named)).expect("ok"), ToolChoice::Named("f".into()));
        assert!(tool_choice(Some(&json!("sometimes"))).is_err());
        assert!(tool_choice(Some(&json!(3))).is_err());
    }

    #[test]
    fn calls_are_read_back_only_for_known_tools() {
        let req = ToolRequest { tools: parse_tools(&weather()).expect("tools"), choice: ToolChoice::Auto };
        let (name, args) = req.parse_call(r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#).expect("call");
        assert_eq!(name, "get_weather");
        assert_eq!(args["city"], "Paris");
        assert!(req.parse_call(r#"{"name": "nope", "arguments": {}}"#).is_none());
        assert!(req.parse_call("It is sunny.").is_none());
        assert!(req.grammar().expect("grammar").is_some());
        let named = ToolRequest { choice: ToolChoice::Named("other".into()), ..req };
        assert!(named.grammar().is_err());
    }

    #[test]
    fn bad_tools_are_refused() {
        assert!(parse_tools(&[json!({"type": "function", "function": {"name": "a b"}})]).is_err());
        assert!(parse_tools(&[json!({"type": "retrieval"})]).is_err());
        let bad_schema = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "objet"}}});
        let err = parse_tools(&[bad_schema]).expect_err("bad schema");
        assert!(err.message.contains("tools.f.parameters.type"), "{}", err.message);
    }
}
