//! Structured output: JSON Schemas (and plain JSON mode) turned into GBNF grammars that the
//! sampler enforces token by token, with llama.cpp's own JSON-schema-to-grammar converter.
//!
//! A schema is checked here first, keyword by keyword, so that a schema hearth can't enforce is
//! refused with a message naming its part (`schema.properties.age.type: ...`) instead of a
//! converter error or, worse, an unenforced output. Unknown annotation keywords (`title`,
//! `description`, `examples`, ...) are allowed, as JSON Schema allows them.

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GrammarError {
    #[error("invalid JSON schema at {path}: {reason}")]
    Schema { path: String, reason: String },
    #[error("the JSON schema could not be turned into a grammar ({0})")]
    Convert(String),
    #[error("tool_choice names {0:?}, which is not among the tools")]
    UnknownTool(String),
}

const TYPES: &[&str] = &["string", "number", "integer", "boolean", "object", "array", "null"];
/// Deepest schema nesting accepted.
const MAX_DEPTH: usize = 32;

fn bad(path: &str, reason: impl Into<String>) -> GrammarError {
    GrammarError::Schema { path: path.to_string(), reason: reason.into() }
}

/// A grammar for any JSON object (`format: "json"`, `response_format: json_object`).
pub fn json_object() -> Result<String, GrammarError> {
    schema_grammar(&json!({ "type": "object" }))
}

/// Checks `schema` and converts it to a grammar.
pub fn schema_grammar(schema: &Value) -> Result<String, GrammarError> {
    check(schema, "schema", 0)?;
    let text = serde_json::to_string(schema).map_err(|e| GrammarError::Convert(e.to_string()))?;
    llama_cpp_2::json_schema_to_grammar(&text).map_err(|e| GrammarError::Convert(e.to_string()))
}

/// Checks the keywords hearth enforces (and that llama.cpp's converter understands).
pub fn check(schema: &Value, path: &str, depth: usize) -> Result<(), GrammarError> {
    if depth > MAX_DEPTH {
        return Err(bad(path, "nested too deeply"));
    }
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(bad(path, "a schema must be an object or a boolean")),
    };
    let at = |k: &str| format!("{path}.{k}");
    let sub = |v: &Value, p: String| check(v, &p, depth + 1);
    let count = |k: &str| -> Result<(), GrammarError> {
        match obj.get(k) {
            None => Ok(()),
            Some(v) if v.as_u64().is_some() => Ok(()),
            Some(_) => Err(bad(&at(k), "must be a non-negative integer")),
        }
    };
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                Value::String(t) if TYPES.contains(&t.as_str()) => {}
                Value::String(t) => return Err(bad(&at(k), format!("{t:?} is not a JSON Schema type ({})", TYPES.join(", ")))),
                Value::Array(ts) if !ts.is_empty() && ts.iter().all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
                _ => return Err(bad(&at(k), "must be a type name or a list of type names")),
            },
            "properties" | "$defs" | "definitions" | "patternProperties" => {
                let props = v.as_object().ok_or_else(|| bad(&at(k), "must be an object of schemas"))?;
                for (name, p) in props {
                    sub(p, format!("{}.{name}", at(k)))?;
                }
            }
            "required" => {
                let ok = v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
                if !ok {
                    return Err(bad(&at(k), "must be a list of property names"));
                }
            }
            "items" | "additionalProperties" | "not" | "contains" | "additionalItems" | "propertyNames" | "unevaluatedProperties" => match v {
                Value::Array(items) if k == "items" => {
                    for (i, p) in items.iter().enumerate() {
                        sub(p, format!("{}[{i}]", at(k)))?;
                    }
                }
                _ => sub(v, at(k))?,
            },
            "prefixItems" | "anyOf" | "oneOf" | "allOf" => {
                let list = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| bad(&at(k), "must be a non-empty list of schemas"))?;
                for (i, p) in list.iter().enumerate() {
                    sub(p, format!("{}[{i}]", at(k)))?;
                }
            }
            "enum"
                if v.as_array().is_none_or(|a| a.is_empty()) => {
                    return Err(bad(&at(k), "must be a non-empty list"));
                }
            "minItems" | "maxItems" | "minLength" | "maxLength" | "minProperties" | "maxProperties" => count(k)?,
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf"
                if !v.is_number() => {
                    return Err(bad(&at(k), "must be a number"));
                }
            "pattern" | "format"
                if !v.is_string() => {
                    return Err(bad(&at(k), "must be a string"));
                }
            "$ref" => {
                let r = v.as_str().ok_or_else(|| bad(&at(k), "must be a string"))?;
                if !r.starts_with("#/") && r != "#" {
                    return Err(bad(&at(k), format!("only local references (#/...) are supported, not {r:?}")));
                }
            }
            "if" | "then" | "else" | "dependentSchemas" | "dependentRequired" | "unevaluatedItems" => {
                return Err(bad(&at(k), "is not supported for structured output"));
            }
            _ => {}
        }
    }
    if let (Some(min), Some(max)) = (obj.get("minItems").and_then(Value::as_u64), obj.get("maxItems").and_then(Value::as_u64)) {
        if min > max {
            return Err(bad(path, "minItems is larger than maxItems"));
        }
    }
    Ok(())
}

/// One function a model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// What the client allows the model to do with its tools (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Answer in text or call a tool, as the model decides.
    Auto,
    /// Never call: the tools are not offered.
    None,
    /// Call one of the tools.
    Required,
    /// Call this tool.
    Named(String),
}

/// The tools of a request and what the model may do with them.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    pub tools: Vec<ToolSpec>,
    pub choice: ToolChoice,
}

impl ToolRequest {
    /// The tools offered to the model (none for `tool_choice: none`).
    pub fn offered(&self) -> Vec<Value> {
        match self.choice {
            ToolChoice::None => Vec::new(),
            _ => tools_json(&self.tools),
        }
    }

    /// The grammar that holds the answer to the choice.
    pub fn grammar(&self) -> Result<Option<String>, GrammarError> {
        Ok(match &self.choice {
            ToolChoice::None => None,
            ToolChoice::Auto => Some(call_or_text(&self.tools)?),
            ToolChoice::Required => Some(schema_grammar(&tool_call_schema(&self.tools))?),
            ToolChoice::Named(name) => {
                let tool = self
                    .tools
                    .iter()
                    .find(|t| t.name == *name)
                    .ok_or_else(|| GrammarError::UnknownTool(name.clone()))?;
                Some(schema_grammar(&tool_call_schema(std::slice::from_ref(tool)))?)
            }
        })
    }

    /// Whether an answer starting with `text` may be a tool call (to hold streaming back).
    /// (Nothing but whitespace yet may still become one.)
    pub fn may_call(&self, text: &str) -> bool {
        let start = text.trim_start();
        self.choice != ToolChoice::None && (start.is_empty() || start.starts_with('{'))
    }

    /// Reads a finished answer as a tool call: `(name, arguments)`.
    pub fn parse_call(&self, text: &str) -> Option<(String, Value)> {
        if self.choice == ToolChoice::None {
            return None;
        }
        let v: Value = serde_json::from_str(text.trim()).ok()?;
        let name = v.get("name")?.as_str()?;
        let args = v.get("arguments")?;
        (self.tools.iter().any(|t| t.name == name) && args.is_object()).then(|| (name.to_string(), args.clone()))
    }
}

/// A call as the model writes one (and as an earlier call is shown to it again):
/// `{"name": ..., "arguments": {...}}`.
pub fn call_text(name: &str, arguments: &Value) -> String {
    json!({ "name": name, "arguments": arguments }).to_string()
}

/// The JSON a tool call must be: `{"name": <one of the tools>, "arguments": <its parameters>}`.
pub fn tool_call_schema(tools: &[ToolSpec]) -> Value {
    let one = |t: &ToolSpec| {
        json!({
            "type": "object",
            "properties": { "name": { "const": t.name }, "arguments": t.parameters },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    match tools {
        [t] => one(t),
        _ => json!({ "anyOf": tools.iter().map(one).collect::<Vec<_>>() }),
    }
}

/// Checks a tool's parameter schema (an object schema; a missing one means no arguments).
pub fn tool_parameters(name: &str, parameters: Option<&Value>) -> Result<Value, GrammarError> {
    let p = match parameters {
        None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
        Some(p) => p.clone(),
    };
    check(&p, &format!("tools.{name}.parameters"), 0)?;
    Ok(p)
}

/// A grammar for either a tool call or free text that doesn't start like one, so the model
/// decides (`tool_choice: auto`) but a call it starts is always well-formed.
pub fn call_or_text(tools: &[ToolSpec]) -> Result<String, GrammarError> {
    let call = schema_grammar(&tool_call_schema(tools))?;
    // The converter names its start symbol `root`; rename it so a new root can offer both.
    let renamed = call.replacen("root ::=", "call ::=", 1);
    if renamed == call {
        return Err(GrammarError::Convert("no root rule in the converted grammar".into()));
    }
    Ok(format!("{CALL_OR_TEXT}text ::= [^{{ \\t\\n] [^\\x00]*\n{renamed}"))
}

/// How a call-or-text grammar starts.
const CALL_OR_TEXT: &str = "root ::= call | text\n";

/// Whether a grammar lets the answer be free text (a tool call or text, as the model decides).
pub fn may_be_text(grammar: &str) -> bool {
    grammar.starts_with(CALL_OR_TEXT)
}

/// A JSON object of the tool descriptions, for templates and the fallback prompt.
pub fn tools_json(tools: &[ToolSpec]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut f = Map::new();
            f.insert("name".into(), json!(t.name));
            f.insert("description".into(), json!(t.description));
            f.insert("parameters".into(), t.parameters.clone());
            json!({ "type": "function", "function": f })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_schemas_convert() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                "pet": {"$ref": "#/$defs/pet"}
            },
            "required": ["name"],
            "$defs": {"pet": {"type": "object", "properties": {"kind": {"const": "cat"}}}}
        });
        let g = schema_grammar(&schema).expect("converts");
        assert!(g.contains("root ::="), "{g}");
        assert!(json_object().expect("json").contains("root"));
    }

    #[test]
    fn bad_schemas_name_the_part() {
        let err = check(&json!({"type": "object", "properties": {"age": {"type": "integr"}}}), "schema", 0).expect_err("bad type");
        assert!(err.to_string().contains("schema.properties.age.type"), "{err}");
        assert!(check(&json!({"required": "name"}), "schema", 0).is_err());
        assert!(check(&json!({"anyOf": []}), "schema", 0).is_err());
        assert!(check(&json!({"$ref": "https://example.com/s.json"}), "schema", 0).is_err());
        assert!(check(&json!(5), "schema", 0).is_err());
        assert!(check(&json!({"minItems": 3, "maxItems": 1}), "schema", 0).is_err());
        assert!(check(&json!({"if": {}}), "schema", 0).is_err());
    }

    #[test]
    fn tool_grammars_convert() {
        let tools = vec![
            ToolSpec { name: "get_weather".into(), description: "Weather".into(), parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}) },
            ToolSpec { name: "add".into(), description: "Add".into(), parameters: json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}) },
        ];
        assert!(schema_grammar(&tool_call_schema(&tools)).is_ok());
        let g = call_or_text(&tools).expect("grammar");
        assert!(g.starts_with("root ::= call | text"), "{g}");
        assert!(may_be_text(&g));
        assert!(!may_be_text(&schema_grammar(&tool_call_schema(&tools)).expect("grammar")));
    }
}
