//! Renders prompts: the model's own Jinja chat template, or the fallback, or an Ollama-style
//! `template` from a request.
//!
//! A template comes from an untrusted file or request, so rendering runs under minijinja's fuel
//! limit (bounded work, so no hang) and an output cap (bounded memory). Nothing here touches
//! llama.cpp; the engine hands in the special-token strings.

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// Used when a model has no `tokenizer.chat_template` and no family template below: ChatML,
/// the most common convention and the one llama.cpp falls back to.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma's turn format, for Gemma GGUFs published without a template. Gemma has no system
/// role: system text opens the first user turn, as Google's own template does.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.system = ns.system + m.content + '\n\n' %}{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n{% if m.role != 'assistant' and ns.system %}{{ ns.system }}{% set ns.system = '' %}{% endif %}{{ m.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// The template for a model without one: by `general.architecture`, else ChatML.
pub fn fallback_template(architecture: &str) -> &'static str {
    if architecture.starts_with("gemma") {
        GEMMA_TEMPLATE
    } else {
        CHATML_TEMPLATE
    }
}

/// Work allowed for one render, in minijinja instructions: far above any real chat template
/// over a long conversation, far below a hang.
const FUEL: u64 = 5_000_000;
/// Largest template source accepted.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Largest rendered prompt.
const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template is too large ({0} bytes, at most {MAX_TEMPLATE_BYTES})")]
    TooLarge(usize),
    #[error("template error: {0}")]
    Render(String),
    #[error("unsupported template: {0}")]
    Unsupported(String),
}

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        let msg = match e.kind() {
            ErrorKind::OutOfFuel => "template took too long to render".to_string(),
            _ => e.to_string(),
        };
        TemplateError::Render(msg)
    }
}

/// One chat message as templates see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the model's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template renders a `tools` list itself.
    knows_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        chrono::Local::now().format(&fmt).to_string()
    });
    env
}

fn check_size(source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge(source.len()));
    }
    Ok(())
}

fn check_output(out: String) -> Result<String, TemplateError> {
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(TemplateError::Render(format!(
            "rendered prompt is larger than {MAX_OUTPUT_BYTES} bytes"
        )));
    }
    Ok(out)
}

impl ChatTemplate {
    /// Compiles `source` (the model's `tokenizer.chat_template`, or its fallback).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        check_size(source)?;
        let mut env = environment();
        // Hugging Face renders chat templates with these, and templates are written for them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            knows_tools: source.contains("tools"),
        })
    }

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[TemplateMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Whether the template renders tool definitions itself.
    pub fn knows_tools(&self) -> bool {
        self.knows_tools
    }

    /// Renders a conversation with tool definitions (OpenAI's `{"type": "function", ...}`
    /// objects) in the template's `tools` variable.
    pub fn render_with_tools(&self, messages: &[TemplateMessage], tools: &[serde_json::Value], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat")?;
        let tools = (!tools.is_empty()).then_some(tools);
        let out = tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })?;
        check_output(out)
    }
}

/// Renders an Ollama request `template` (Go text/template syntax, subset: `.System`,
/// `.Prompt`, `.Response`, `.Suffix`, `if`/`else`/`else if`/`end`) or, when the text uses
/// `{%`, a Jinja template with the same variables.
pub fn render_request_template(source: &str, system: &str, prompt: &str) -> Result<String, TemplateError> {
    check_size(source)?;
    let jinja = if source.contains("{%") { source.to_string() } else { go_to_jinja(source)? };
    let mut env = environment();
    // Go templates keep every character, the final newline included (often the one that opens
    // the model's turn).
    env.set_keep_trailing_newline(true);
    let out = env.render_str(
        &jinja,
        context! { System => system, Prompt => prompt, Response => "", Suffix => "" },
    )?;
    check_output(out)
}

/// The system text that offers tools to a model whose template can't: the tool definitions as
/// JSON and the one reply format hearth parses (and the grammar enforces).
pub fn tool_prompt(tools: &[serde_json::Value]) -> String {
    let list = tools.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("\n");
    format!(
        "You can call functions. The available functions, in JSON:\n{list}\n\nTo call a function, reply with only a JSON object of the form {{\"name\": \"<function name>\", \"arguments\": {{<the arguments>}}}} and nothing else. If no function is needed, reply normally."
    )
}

/// Whether `source` is Jinja or within the Go template subset hearth translates.
pub fn go_template_supported(source: &str) -> bool {
    source.contains("{%") || go_to_jinja(source).is_ok()
}

/// Checks a template given by a Modelfile or a create request before it is stored.
pub fn check_template(source: &str) -> Result<(), TemplateError> {
    check_size(source)?;
    if source.contains("{%") {
        let mut env = environment();
        env.add_template_owned("check", source.to_string())?;
        Ok(())
    } else {
        go_to_jinja(source).map(|_| ())
    }
}

/// Renders a conversation with a model's template override (a Modelfile `TEMPLATE`).
///
/// A Jinja template is used as the chat template. A Go template (`.System`, `.Prompt`,
/// `.Response`) is rendered as Ollama renders such templates: once per exchange, with the
/// system text seen since the last one, the user's prompt and the assistant's reply; the last
/// rendering stops where `.Response` would begin, so the model writes it.
pub fn render_override(source: &str, messages: &[TemplateMessage], bos_token: &str, eos_token: &str) -> Result<String, TemplateError> {
    if source.contains("{%") {
        return ChatTemplate::new(source, bos_token, eos_token)?.render(messages, true);
    }
    check_size(source)?;
    let jinja = go_to_jinja(source)?;
    let mut env = environment();
    env.set_keep_trailing_newline(true);
    env.add_template_owned("turn", jinja)?;
    let tmpl = env.get_template("turn")?;
    // Marks where the reply begins in the last rendering; no real text contains it.
    const REPLY: &str = "\u{1}hearth-reply\u{1}";
    let mut out = String::new();
    let (mut system, mut prompt) = (String::new(), String::new());
    let mut render = |system: &str, prompt: &str, response: &str| -> Result<(), TemplateError> {
        out.push_str(&tmpl.render(context! { System => system, Prompt => prompt, Response => response, Suffix => "" })?);
        Ok(())
    };
    for m in messages {
        match m.role.as_str() {
            "system" => {
                if !system.is_empty() {
                    system.push('\n');
                }
                system.push_str(&m.content);
            }
            "assistant" => {
                render(&system, &prompt, &m.content)?;
                system.clear();
                prompt.clear();
            }
            _ => {
                if !prompt.is_empty() {
                    render(&system, &prompt, "")?;
                    system.clear();
                }
                prompt = m.content.clone();
            }
        }
    }
    render(&system, &prompt, REPLY)?;
    if let Some(cut) = out.rfind(REPLY) {
        out.truncate(cut);
    }
    check_output(out)
}

/// Translates the Go template subset above into Jinja.
fn go_to_jinja(source: &str) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut open_ifs = 0usize;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unsupported("unclosed {{".to_string()))?;
        let raw = &after[..end];
        let (lt, inner) = raw.strip_prefix('-').map_or(("", raw), |r| ("-", r));
        let (inner, rt) = inner.strip_suffix('-').map_or((inner, ""), |r| (r, "-"));
        let action = inner.trim();
        let var = |v: &str| -> Result<String, TemplateError> {
            match v.strip_prefix('.') {
                Some(name @ ("System" | "Prompt" | "Response" | "Suffix")) => Ok(name.to_string()),
                _ => Err(TemplateError::Unsupported(format!("{{{{ {action} }}}}"))),
            }
        };
        let translated = if let Some(cond) = action.strip_prefix("if ") {
            open_ifs += 1;
            format!("{{%{lt} if {} {rt}%}}", var(cond.trim())?)
        } else if let Some(cond) = action.strip_prefix("else if ") {
            format!("{{%{lt} elif {} {rt}%}}", var(cond.trim())?)
        } else if action == "else" {
            format!("{{%{lt} else {rt}%}}")
        } else if action == "end" {
            if open_ifs == 0 {
                return Err(TemplateError::Unsupported("{{ end }} without {{ if }}".to_string()));
            }
            open_ifs -= 1;
            format!("{{%{lt} endif {rt}%}}")
        } else {
            format!("{{{{{lt} {} {rt}}}}}", var(action)?)
        };
        out.push_str(&translated);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn go_override_renders_each_exchange_and_stops_at_the_reply() {
        let src = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}</s>\n";
        let out = render_override(src, &[msg("system", "be kind"), msg("user", "hi"), msg("assistant", "hello"), msg("user", "bye")], "", "")
            .expect("renders");
        assert_eq!(out, "S:be kind\nU:hi\nA:hello</s>\nU:bye\nA:");
        assert!(go_template_supported(src));
        assert!(!go_template_supported("{{ range .Messages }}{{ end }}"));
        assert!(check_template("{{ .Nope }}").is_err());
    }

    #[test]
    fn tool_aware_templates_get_the_tools() {
        let src = "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("compiles");
        assert!(t.knows_tools());
        let tools = vec![serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        assert_eq!(t.render_with_tools(&[msg("user", "hi")], &tools, true).expect("renders"), "TOOLS:get_weather;hi", "trim_blocks eats the newline, as in HF");
        assert_eq!(t.render(&[msg("user", "hi")], true).expect("renders"), "hi");
        assert!(!ChatTemplate::new(CHATML_TEMPLATE, "", "").expect("compiles").knows_tools());
        assert!(tool_prompt(&tools).contains("\"name\""));
    }

    #[test]
    fn fallback_is_chatml() {
        let t = ChatTemplate::new(fallback_template("llama"), "<s>", "</s>").expect("compiles");
        let out = t.render(&[msg("user", "hi")], true).expect("renders");
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn gemma_fallback_folds_system_into_first_user_turn() {
        let t = ChatTemplate::new(fallback_template("gemma3"), "<bos>", "<eos>").expect("compiles");
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "hi"), msg("assistant", "hello"), msg("user", "bye")], true)
            .expect("renders");
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn python_methods_and_special_tokens_work() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }}|{% endfor %}";
        let t = ChatTemplate::new(src, "<bos>", "<eos>").expect("compiles");
        assert_eq!(t.render(&[msg("user", "  x ")], false).expect("renders"), "<bos>USER:x|");
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").expect("compiles");
        let err = t.render(&[], false).expect_err("must fail");
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn endless_template_runs_out_of_fuel() {
        let src = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("compiles");
        let err = t.render(&[], false).expect_err("must stop");
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn oversized_template_is_refused() {
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(ChatTemplate::new(&big, "", ""), Err(TemplateError::TooLarge(_))));
    }

    #[test]
    fn go_template_subset_renders() {
        let src = "{{ if .System }}<sys>{{ .System }}</sys>{{ end }}<u>{{ .Prompt }}</u>{{- .Response -}}";
        assert_eq!(render_request_template(src, "be brief", "hi").expect("ok"), "<sys>be brief</sys><u>hi</u>");
        assert_eq!(render_request_template(src, "", "hi").expect("ok"), "<u>hi</u>");
        assert_eq!(render_request_template("{{ .Prompt }}\n", "", "x").expect("ok"), "x\n");
    }

    #[test]
    fn unsupported_go_action_is_named() {
        let err = render_request_template("{{ range .Messages }}x{{ end }}", "", "").expect_err("must fail");
        assert!(err.to_string().contains("range"), "{err}");
    }
}
