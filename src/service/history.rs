//! Putting a prompt together from its parts: the request's messages, the persona's system prompt
//! and examples, and a conversation's stored history, in that order of precedence for the system
//! prompt and in the order system, examples, history, new messages for the rest.
//!
//! Pure functions: no model, no store. Trimming the history to fit the context needs the
//! tokenizer and happens behind the backend seam (`backend::GenerateJob::droppable`), over the `droppable` range given here.

use std::ops::Range;

use super::catalog::Persona;
use super::PromptSpec;
use crate::spec::template::TemplateMessage;

/// A prompt ready to render, and what of it may be left out or must be stored.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub prompt: PromptSpec,
    /// The stored history's place in the chat messages: the oldest go first when the context
    /// is short.
    pub droppable: Range<usize>,
    /// The request's own messages (role, content) a conversation appends before the answer.
    pub new_messages: Vec<(String, String)>,
}

/// Lays the persona and the conversation's `history` around the request's prompt. A generate
/// request becomes a chat when it needs one (a conversation, or a persona's examples); raw
/// mode, a request template and `context` tokens can't be combined with a conversation.
pub fn assemble(prompt: PromptSpec, persona: Option<&Persona>, history: Vec<TemplateMessage>, conversation: bool) -> Result<Assembled, String> {
    let has_examples = persona.is_some_and(|p| !p.examples.is_empty());
    let messages = match prompt {
        PromptSpec::Generate { prompt, system, template, raw, context } => {
            let plain = !raw && template.is_none() && context.is_empty();
            if conversation && !plain {
                return Err("conversation_id can't be combined with raw, template or context".into());
            }
            if !plain || !(conversation || has_examples) {
                // Stays a generate prompt: only the persona's system prompt applies.
                let system = match (system, persona) {
                    (None, Some(p)) if !raw && template.is_none() => p.system.clone(),
                    (s, _) => s,
                };
                let new_messages = vec![("user".to_string(), prompt.clone())];
                return Ok(Assembled { prompt: PromptSpec::Generate { prompt, system, template, raw, context }, droppable: 0..0, new_messages });
            }
            let mut m = Vec::new();
            if let Some(s) = system {
                m.push(TemplateMessage { role: "system".into(), content: s });
            }
            m.push(TemplateMessage { role: "user".into(), content: prompt });
            (m, Vec::new())
        }
        PromptSpec::Chat { messages, tools } => (messages, tools),
    };
    let (messages, tools) = messages;
    let (system, rest): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| m.role == "system");
    let mut out = system;
    if out.is_empty() {
        if let Some(s) = persona.and_then(|p| p.system.clone()) {
            out.push(TemplateMessage { role: "system".into(), content: s });
        }
    }
    if let Some(p) = persona {
        out.extend(p.examples.iter().map(|(role, content)| TemplateMessage { role: role.clone(), content: content.clone() }));
    }
    let start = out.len();
    out.extend(history);
    let droppable = start..out.len();
    let new_messages = rest.iter().map(|m| (m.role.clone(), m.content.clone())).collect();
    out.extend(rest);
    Ok(Assembled { prompt: PromptSpec::Chat { messages: out, tools }, droppable, new_messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage { role: role.into(), content: content.into() }
    }

    fn persona() -> Persona {
        Persona {
            name: "pirate".into(),
            model: "smollm2:135m".into(),
            system: Some("Arr.".into()),
            options: Default::default(),
            examples: vec![("user".into(), "hi".into()), ("assistant".into(), "Ahoy!".into())],
            adapter: None,
            description: None,
        }
    }

    fn chat(a: &Assembled) -> Vec<(String, String)> {
        match &a.prompt {
            PromptSpec::Chat { messages, .. } => messages.iter().map(|m| (m.role.clone(), m.content.clone())).collect(),
            PromptSpec::Generate { .. } => panic!("expected a chat"),
        }
    }

    #[test]
    fn persona_examples_and_history_come_in_order() {
        let history = vec![msg("user", "q1"), msg("assistant", "a1")];
        let req = PromptSpec::Chat { messages: vec![msg("user", "q2")], tools: Vec::new() };
        let a = assemble(req, Some(&persona()), history, true).expect("ok");
        let roles: Vec<_> = chat(&a).into_iter().map(|(r, c)| format!("{r}:{c}")).collect();
        assert_eq!(roles, ["system:Arr.", "user:hi", "assistant:Ahoy!", "user:q1", "assistant:a1", "user:q2"]);
        assert_eq!(a.droppable, 3..5);
        assert_eq!(a.new_messages, vec![("user".to_string(), "q2".to_string())]);
    }

    #[test]
    fn the_request_system_prompt_wins_over_the_persona() {
        let req = PromptSpec::Chat { messages: vec![msg("system", "Be brief."), msg("user", "q")], tools: Vec::new() };
        let a = assemble(req, Some(&persona()), Vec::new(), false).expect("ok");
        assert_eq!(chat(&a)[0], ("system".to_string(), "Be brief.".to_string()));
        assert!(!chat(&a).iter().any(|(_, c)| c == "Arr."));
    }

    #[test]
    fn a_generate_request_becomes_a_chat_only_when_needed() {
        let gen = |raw: bool| PromptSpec::Generate { prompt: "q".into(), system: None, template: None, raw, context: Vec::new() };
        let mut plain = persona();
        plain.examples.clear();
        match assemble(gen(false), Some(&plain), Vec::new(), false).expect("ok").prompt {
            PromptSpec::Generate { system, .. } => assert_eq!(system.as_deref(), Some("Arr.")),
            PromptSpec::Chat { .. } => panic!("no need for a chat"),
        }
        let a = assemble(gen(false), None, vec![msg("user", "q0"), msg("assistant", "a0")], true).expect("ok");
        assert_eq!(chat(&a).len(), 3);
        assert!(assemble(gen(true), None, Vec::new(), true).is_err());
    }
}
