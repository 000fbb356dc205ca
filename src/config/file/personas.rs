//! The config file's `personas` and `templates` sections: their raw shapes, and the checks
//! that turn a persona into a validated `Persona` (its name a model name, a model, options
//! Ollama knows, stop words, an adapter file) and a template's error into the key it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{option_patch, resolve, scalar, ConfigError};
use crate::prompts::PromptError;
use crate::service::catalog::{with_stop, Persona};
use crate::spec::options::OptionPatch;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPersona {
    #[serde(default, deserialize_with = "scalar::model_name")]
    model: Option<String>,
    system: Option<String>,
    options: Option<serde_json::Map<String, Value>>,
    stop: Option<Vec<String>>,
    examples: Option<Vec<RawExample>>,
    adapter: Option<PathBuf>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    role: Role,
    content: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    pub(super) template: String,
    pub(super) families: Option<BTreeMap<String, String>>,
    pub(super) description: Option<String>,
}

pub(super) fn persona(
    key: &str,
    raw: RawPersona,
    default_model: Option<&str>,
    base: Option<&Path>,
    at: &dyn Fn(&[&str], String) -> ConfigError,
) -> Result<Persona, ConfigError> {
    let name = crate::store::normalize_name(key)
        .map_err(|e| at(&["personas", key], format!("a persona name must be a valid model name: {e}")))?;
    let model = raw.model.or_else(|| default_model.map(str::to_string)).ok_or_else(|| {
        at(
            &["personas", key],
            "no model: set `model` here or `server.default_model`".to_string(),
        )
    })?;
    if raw.system.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Err(at(
            &["personas", key, "system"],
            "is empty; leave it out for no system prompt".to_string(),
        ));
    }
    let options = option_patch(&raw.options.unwrap_or_default(), &["personas", key, "options"], at)?;
    let stop = raw.stop.unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(at(&["personas", key, "stop"], "a stop sequence may not be empty".to_string()));
    }
    let stop_check = serde_json::Map::from_iter([("stop".to_string(), Value::from(stop.clone()))]);
    if let Err(e) = OptionPatch::from_map(&stop_check) {
        return Err(at(&["personas", key, "stop"], e.reason));
    }
    let adapter = raw.adapter.map(|p| resolve(base, p));
    // Only a file on disk has a directory to check against; `parse` touches no files.
    if let (Some(adapter), Some(_)) = (&adapter, base) {
        if !adapter.is_file() {
            return Err(at(&["personas", key, "adapter"], format!("{} is not a file", adapter.display())));
        }
    }
    Ok(Persona {
        name,
        model,
        system: raw.system,
        options: with_stop(options, stop),
        examples: raw
            .examples
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.role.as_str().to_string(), e.content))
            .collect(),
        adapter,
        description: raw.description,
    })
}

pub(super) fn template_error(key: &str, e: PromptError, at: &dyn Fn(&[&str], String) -> ConfigError) -> ConfigError {
    let message = e.to_string();
    match &e {
        PromptError::Syntax { family: Some(f), .. } | PromptError::FamilyVariables { family: f, .. } => {
            at(&["templates", key, "families", f], message)
        }
        PromptError::Syntax { family: None, .. } => at(&["templates", key, "template"], message),
        _ => at(&["templates", key], message),
    }
}
