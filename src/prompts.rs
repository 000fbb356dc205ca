//! Named prompt templates: text with `{variable}` placeholders, optionally with a variant per
//! model architecture, rendered from a map of values.
//!
//! The syntax is the brace subset of Python's `str.format`: `{name}` with `name` an identifier,
//! `{{` and `}}` for literal braces, and nothing else inside braces. A template is checked once,
//! when it is built; rendering refuses missing and unknown variables so that a typo in a
//! request fails loudly instead of producing a prompt with a hole in it. Values are inserted
//! verbatim and never expanded again. This module knows nothing of YAML, HTTP or models: the
//! config file builds templates here, and callers pick the family from a model's GGUF
//! `general.architecture`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Why a template could not be built or rendered; every message names the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("template '{template}'{}: {reason} at line {line}, column {column}", family_suffix(.family))]
    Syntax {
        template: String,
        /// The family variant the error is in; `None` for the default text.
        family: Option<String>,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("template '{template}' needs variable '{name}'")]
    MissingVariable { template: String, name: String },
    #[error("template '{template}' has no variable '{name}' (it takes: {expected})")]
    UnknownVariable {
        template: String,
        name: String,
        expected: String,
    },
    #[error("template '{template}': the '{family}' variant takes variables ({found}) but the default text takes ({expected}); every variant must take the same ones")]
    FamilyVariables {
        template: String,
        family: String,
        found: String,
        expected: String,
    },
    #[error("invalid template name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no prompt template named '{0}'")]
    NotFound(String),
}

fn family_suffix(family: &Option<String>) -> String {
    family
        .as_ref()
        .map(|f| format!(" (variant '{f}')"))
        .unwrap_or_default()
}

/// A validated prompt template. Build it with [`PromptTemplate::new`], which checks the
/// syntax of the text and of every family variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptTemplate {
    pub name: String,
    /// The text used when no family variant matches.
    pub text: String,
    /// Variants keyed by GGUF `general.architecture` (`llama`, `gemma3`, `qwen2`, ...).
    pub families: BTreeMap<String, String>,
    pub description: Option<String>,
}

/// One parsed stretch of template text.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    /// A literal `{` or `}` from `{{` / `}}`.
    Brace(char),
    Variable(&'a str),
}

const MAX_NAME_LEN: usize = 64;

impl PromptTemplate {
    /// Checks the name, the syntax of `text` and of every variant, and that every variant
    /// takes the same variables as `text` (a caller passes one set of values whatever the model).
    pub fn new(
        name: impl Into<String>,
        text: impl Into<String>,
        families: BTreeMap<String, String>,
        description: Option<String>,
    ) -> Result<Self, PromptError> {
        let template = Self {
            name: name.into(),
            text: text.into(),
            families,
            description,
        };
        check_name(&template.name)?;
        let expected = template.parse(None)?;
        let mut expected_vars = unique_variables(&expected);
        expected_vars.sort();
        for (family, text) in &template.families {
            if family.is_empty() || !family.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                return Err(PromptError::Syntax {
                    template: template.name.clone(),
                    family: Some(family.clone()),
                    line: 1,
                    column: 1,
                    reason: "a family is a GGUF architecture name such as 'llama' or 'gemma3'".to_string(),
                });
            }
            let mut found = unique_variables(&parse(&template.name, Some(family), text)?);
            found.sort();
            if found != expected_vars {
                return Err(PromptError::FamilyVariables {
                    template: template.name.clone(),
                    family: family.clone(),
                    found: found.join(", "),
                    expected: expected_vars.join(", "),
                });
            }
        }
        Ok(template)
    }

    /// The variables the variant for `family` takes, in order of first use, each once.
    pub fn variables(&self, family: Option<&str>) -> Vec<String> {
        let (variant, text) = self.variant(family);
        // `new` checked the syntax; a template mutated since then yields what still parses.
        parse(&self.name, variant, text)
            .map(|pieces| unique_variables(&pieces))
            .unwrap_or_default()
    }

    /// Renders the variant for `family` (an exact GGUF architecture, e.g. `gemma3`), or the
    /// default text when there is none. Every variable must be given, and nothing else.
    pub fn render(&self, family: Option<&str>, vars: &BTreeMap<String, String>) -> Result<String, PromptError> {
        let pieces = self.parse(family)?;
        let wanted = unique_variables(&pieces);
        if let Some(unknown) = vars.keys().find(|k| !wanted.contains(k)) {
            return Err(PromptError::UnknownVariable {
                template: self.name.clone(),
                name: unknown.clone(),
                expected: if wanted.is_empty() { "nothing".to_string() } else { wanted.join(", ") },
            });
        }
        let mut out = String::with_capacity(self.text.len() + vars.values().map(String::len).sum::<usize>());
        for piece in pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Brace(c) => out.push(c),
                Piece::Variable(name) => match vars.get(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(PromptError::MissingVariable {
                            template: self.name.clone(),
                            name: name.to_string(),
                        })
                    }
                },
            }
        }
        Ok(out)
    }

    fn variant<'s>(&'s self, family: Option<&'s str>) -> (Option<&'s str>, &'s str) {
        match family.and_then(|f| self.families.get_key_value(f)) {
            Some((f, text)) => (Some(f.as_str()), text.as_str()),
            None => (None, self.text.as_str()),
        }
    }

    fn parse<'s>(&'s self, family: Option<&'s str>) -> Result<Vec<Piece<'s>>, PromptError> {
        let (variant, text) = self.variant(family);
        parse(&self.name, variant, text)
    }
}

/// The templates available with no config file; the file's `templates` add to or replace them.
pub fn builtin() -> BTreeMap<String, PromptTemplate> {
    let defs = [
        (
            "rag_query",
            "Use the context below to answer the question. If the context does not contain the \
             answer, say that you do not know.\n\nContext:\n{context}\n\nQuestion: {question}\n\nAnswer:",
            "Answer a question from retrieved context: {context}, {question}.",
        ),
        (
            "summarization",
            "Summarize the following text in a few sentences. Keep names, numbers and \
             conclusions; leave out anything the text does not say.\n\nText:\n{text}\n\nSummary:",
            "Summarize a text: {text}.",
        ),
    ];
    defs.into_iter()
        .filter_map(|(name, text, description)| {
            // The texts above are constants checked by the tests; a failure here is a bug in them.
            PromptTemplate::new(name, text, BTreeMap::new(), Some(description.to_string()))
                .ok()
                .map(|t| (name.to_string(), t))
        })
        .collect()
}

fn check_name(name: &str) -> Result<(), PromptError> {
    let invalid = |reason| PromptError::InvalidName {
        name: name.chars().take(MAX_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 64 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(invalid("use letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

fn unique_variables(pieces: &[Piece<'_>]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for piece in pieces {
        if let Piece::Variable(name) = piece {
            if !seen.iter().any(|s| s == name) {
                seen.push((*name).to_string());
            }
        }
    }
    seen
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse<'a>(template: &str, family: Option<&str>, text: &'a str) -> Result<Vec<Piece<'a>>, PromptError> {
    let error = |at: usize, reason: String| {
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PromptError::Syntax {
            template: template.to_string(),
            family: family.map(str::to_string),
            line,
            column,
            reason,
        }
    };
    let mut pieces = Vec::new();
    let mut literal_start = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                if literal_start < i {
                    pieces.push(Piece::Literal(&text[literal_start..i]));
                }
                pieces.push(Piece::Brace(char::from(bytes[i])));
                i += 2;
                literal_start = i;
            }
            b'}' => return Err(error(i, "single '}' (write '}}' for a literal brace)".to_string())),
            b'{' => {
                let Some(len) = text[i + 1..].find(['}', '{', '\n']) else {
                    return Err(error(i, "'{' is never closed (write '{{' for a literal brace)".to_string()));
                };
                let close = i + 1 + len;
                if bytes[close] != b'}' {
                    return Err(error(i, "'{' is never closed (write '{{' for a literal brace)".to_string()));
                }
                let name = &text[i + 1..close];
                if !is_identifier(name) {
                    return Err(error(
                        i,
                        format!("'{{{name}}}' is not a placeholder: a name is a letter or '_' followed by letters, digits or '_'"),
                    ));
                }
                if literal_start < i {
                    pieces.push(Piece::Literal(&text[literal_start..i]));
                }
                pieces.push(Piece::Variable(name));
                i = close + 1;
                literal_start = i;
            }
            _ => i += 1,
        }
    }
    if literal_start < text.len() {
        pieces.push(Piece::Literal(&text[literal_start..]));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn template(text: &str) -> Result<PromptTemplate, PromptError> {
        PromptTemplate::new("t", text, BTreeMap::new(), None)
    }

    #[test]
    fn renders_variables() {
        let t = template("Hello {name}, you are {age}. Bye {name}.").expect("valid");
        assert_eq!(t.variables(None), vec!["name", "age"]);
        let out = t.render(None, &vars(&[("name", "Ann"), ("age", "30")])).expect("renders");
        assert_eq!(out, "Hello Ann, you are 30. Bye Ann.");
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = template("{{\"a\": {x}}} and }}{{").expect("valid");
        assert_eq!(t.variables(None), vec!["x"]);
        assert_eq!(t.render(None, &vars(&[("x", "1")])).expect("renders"), "{\"a\": 1} and }{");
        let plain = template("{{not_a_var}}").expect("valid");
        assert!(plain.variables(None).is_empty());
        assert_eq!(plain.render(None, &BTreeMap::new()).expect("renders"), "{not_a_var}");
    }

    #[test]
    fn values_are_not_expanded_again() {
        let t = template("Q: {q}").expect("valid");
        let out = t.render(None, &vars(&[("q", "{q} {{x}} }")])).expect("renders");
        assert_eq!(out, "Q: {q} {{x}} }");
    }

    #[test]
    fn missing_variable_is_named() {
        let t = PromptTemplate::new("rag_query", "{context}\n{question}", BTreeMap::new(), None).expect("valid");
        let err = t.render(None, &vars(&[("context", "c")])).expect_err("missing");
        assert_eq!(
            err,
            PromptError::MissingVariable {
                template: "rag_query".into(),
                name: "question".into()
            }
        );
        assert_eq!(err.to_string(), "template 'rag_query' needs variable 'question'");
    }

    #[test]
    fn unknown_variable_is_refused() {
        let t = PromptTemplate::new("summarization", "Sum: {text}", BTreeMap::new(), None).expect("valid");
        let err = t.render(None, &vars(&[("text", "a"), ("txet", "b")])).expect_err("unknown");
        assert!(matches!(&err, PromptError::UnknownVariable { name, .. } if name == "txet"));
        assert_eq!(err.to_string(), "template 'summarization' has no variable 'txet' (it takes: text)");
    }

    #[test]
    fn family_variant_is_chosen_by_exact_architecture() {
        let families = BTreeMap::from([("gemma3".to_string(), "<g>{q}</g>".to_string())]);
        let t = PromptTemplate::new("t", "plain {q}", families, None).expect("valid");
        let v = vars(&[("q", "hi")]);
        assert_eq!(t.render(Some("gemma3"), &v).expect("renders"), "<g>hi</g>");
        assert_eq!(t.render(Some("llama"), &v).expect("renders"), "plain hi");
        assert_eq!(t.render(Some("gemma"), &v).expect("renders"), "plain hi");
        assert_eq!(t.render(None, &v).expect("renders"), "plain hi");
    }

    #[test]
    fn family_variants_must_take_the_same_variables() {
        let families = BTreeMap::from([("llama".to_string(), "{q} {extra}".to_string())]);
        let err = PromptTemplate::new("t", "{q}", families, None).expect_err("mismatch");
        assert!(err.to_string().contains("'llama' variant takes variables (extra, q)"), "{err}");
    }

    #[test]
    fn bad_syntax_names_the_position() {
        for (text, line, column, needle) in [
            ("abc {", 1, 5, "never closed"),
            ("x\n  {1x} y", 2, 3, "'{1x}' is not a placeholder"),
            ("{a", 1, 1, "never closed"),
            ("{a\n}", 1, 1, "never closed"),
            ("{a{b}}", 1, 1, "never closed"),
            ("{}", 1, 1, "'{}' is not a placeholder"),
            ("{a.b}", 1, 1, "not a placeholder"),
            ("oops }", 1, 6, "single '}'"),
        ] {
            match template(text) {
                Err(PromptError::Syntax { line: l, column: c, reason, family: None, .. }) => {
                    assert_eq!((l, c), (line, column), "{text:?}: {reason}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        let families = BTreeMap::from([("llama".to_string(), "{q".to_string())]);
        let err = PromptTemplate::new("t", "{q}", families, None).expect_err("bad variant");
        assert!(err.to_string().starts_with("template 't' (variant 'llama'): "), "{err}");
    }

    #[test]
    fn names_are_checked() {
        assert!(PromptTemplate::new("", "x", BTreeMap::new(), None).is_err());
        assert!(PromptTemplate::new("a b", "x", BTreeMap::new(), None).is_err());
        assert!(PromptTemplate::new("rag-query.v2", "x", BTreeMap::new(), None).is_ok());
    }

    #[test]
    fn builtins_render() {
        let all = builtin();
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["rag_query", "summarization"]);
        let rag = &all["rag_query"];
        assert_eq!(rag.variables(None), vec!["context", "question"]);
        let out = rag
            .render(None, &vars(&[("context", "The sky is green."), ("question", "What colour is the sky?")]))
            .expect("renders");
        assert!(out.contains("Context:\nThe sky is green.") && out.ends_with("Question: What colour is the sky?\n\nAnswer:"));
        assert_eq!(all["summarization"].variables(None), vec!["text"]);
    }
}
