//! What the service layer knows by name: personas (from the config file), profiles (stored at
//! run time through `/llm/configure`), and prompt templates (built in, plus the config file's).
//!
//! A `Catalog` is immutable; a reload or a new profile builds a new one and swaps it in, so a
//! request keeps the catalog it started with. Profiles live in `profiles.json` in the data
//! directory, or as rows of the shared database (`profile_json`) when it is PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{PromptSpec, ServiceError, TemplateUse};
use crate::spec::options::OptionPatch;
use crate::spec::template::TemplateMessage;
use crate::prompts::PromptTemplate;
use crate::store::{ModelEntry, ModelStore};

/// The model the quick start and the seed routes use when a request names none.
pub const DEFAULT_MODEL: &str = "smollm2:135m";

/// A named preset over a model: system prompt, options, few-shot examples. Usable wherever a
/// model name is, under its own name. Made from the config file's `personas` or a stored
/// profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Persona {
    /// Normalized (`pirate:latest`), as a request's model name would be.
    pub name: String,
    /// Normalized; the persona's own `model`, else `server.default_model`.
    pub model: String,
    /// Never empty when set.
    pub system: Option<String>,
    /// Laid over the model's parameters; a request's options go on top. The persona's stop
    /// words are in it (an explicit `options.stop` wins over them).
    pub options: OptionPatch,
    /// `(role, content)`, role one of `system`, `user`, `assistant`.
    pub examples: Vec<(String, String)>,
    pub adapter: Option<PathBuf>,
    pub description: Option<String>,
}

/// Personas, profiles and templates as one snapshot.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub personas: BTreeMap<String, Persona>,
    /// Set through `/llm/configure`; kept in the data directory, so they survive restarts and
    /// reloads. A config persona of the same name wins.
    pub profiles: BTreeMap<String, Persona>,
    pub templates: BTreeMap<String, PromptTemplate>,
    /// The model of requests that name none (seed routes).
    pub default_model: String,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            personas: BTreeMap::new(),
            profiles: BTreeMap::new(),
            templates: crate::prompts::builtin(),
            default_model: DEFAULT_MODEL.to_string(),
        }
    }
}

impl Catalog {
    /// A persona or profile by name; `name` and `name:latest` are the same.
    pub fn persona(&self, name: &str) -> Option<&Persona> {
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        let tagged = format!("{bare}:latest");
        [bare, tagged.as_str()]
            .iter()
            .find_map(|n| self.personas.get(*n).or_else(|| self.profiles.get(*n)))
    }
}

/// A persona's options with its separate stop words folded in; `options.stop` wins.
pub fn with_stop(mut options: OptionPatch, stop: Vec<String>) -> OptionPatch {
    if options.stop.is_none() && !stop.is_empty() {
        options.stop = Some(stop);
    }
    options
}

/// Renders a named prompt template into the prompt: the generate prompt, or a new last user
/// message of a chat. The variant for the model's architecture is used when the template has
/// one.
/// `entry` is `None` for a provider's model: its family is unknown, so the base template.
pub fn apply_template(catalog: &Catalog, store: &ModelStore, entry: Option<&ModelEntry>, t: &TemplateUse, prompt: PromptSpec) -> Result<PromptSpec, ServiceError> {
    let template = catalog.templates.get(&t.name).ok_or_else(|| ServiceError::UnknownTemplate(t.name.clone()))?;
    let family = match entry {
        Some(e) if !template.families.is_empty() => architecture(store, &e.path),
        _ => None,
    };
    let text = template.render(family.as_deref(), &t.variables)?;
    Ok(match prompt {
        PromptSpec::Generate { prompt, system, template: None, raw: false, context } if prompt.is_empty() => {
            PromptSpec::Generate { prompt: text, system, template: None, raw: false, context }
        }
        PromptSpec::Generate { .. } => {
            return Err(ServiceError::Invalid(
                "a prompt template replaces the prompt: send variables without prompt, raw or a request template".into(),
            ))
        }
        PromptSpec::Chat { mut messages, tools } => {
            messages.push(TemplateMessage { role: "user".into(), content: text });
            PromptSpec::Chat { messages, tools }
        }
    })
}

/// The model file's `general.architecture`, e.g. `llama` or `gemma3` (its header read once per
/// version of the file).
pub fn architecture(store: &ModelStore, path: &Path) -> Option<String> {
    store.header(path).ok().map(|info| info.architecture().to_string())
}

/// Profiles kept as JSON in the data directory.
pub fn profiles_path(data_dir: &Path) -> PathBuf {
    data_dir.join("profiles.json")
}

/// A patch as the JSON object it was written as.
pub fn options_map(options: &OptionPatch) -> serde_json::Map<String, Value> {
    match serde_json::to_value(options) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// A profile as `profiles.json` keeps it (`stop` is read from files written before the stop
/// words moved into `options`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredProfile {
    name: String,
    model: String,
    system: Option<String>,
    #[serde(default)]
    options: serde_json::Map<String, Value>,
    #[serde(default)]
    stop: Vec<String>,
    description: Option<String>,
}

/// Reads the stored profiles; a missing file is none, a damaged one is an error naming it.
pub fn load_profiles(path: &Path) -> Result<BTreeMap<String, Persona>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let stored: Vec<StoredProfile> = serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    stored
        .into_iter()
        .map(|p| from_stored(p).map(|p| (p.name.clone(), p)).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

fn from_stored(p: StoredProfile) -> Result<Persona, String> {
    let options = OptionPatch::from_map(&p.options).map_err(|e| format!("profile {}: {e}", p.name))?;
    Ok(Persona {
        name: p.name,
        model: p.model,
        system: p.system,
        options: with_stop(options, p.stop),
        examples: Vec::new(),
        adapter: None,
        description: p.description,
    })
}

fn to_stored(p: &Persona) -> StoredProfile {
    StoredProfile {
        name: p.name.clone(),
        model: p.model.clone(),
        system: p.system.clone(),
        options: options_map(&p.options),
        stop: Vec::new(),
        description: p.description.clone(),
    }
}

/// A profile as one JSON object, the shape a database row keeps (the file's list items).
pub fn profile_json(p: &Persona) -> String {
    serde_json::to_string(&to_stored(p)).unwrap_or_default()
}

/// A profile back from [`profile_json`]'s text.
pub fn profile_from_json(text: &str) -> Result<Persona, String> {
    from_stored(serde_json::from_str(text).map_err(|e| format!("a stored profile is damaged: {e}"))?)
}

/// Writes the profiles atomically (a temporary file renamed over the old one).
pub fn save_profiles(path: &Path, profiles: &BTreeMap<String, Persona>) -> Result<(), String> {
    let stored: Vec<StoredProfile> = profiles.values().map(to_stored).collect();
    let text = serde_json::to_string_pretty(&stored).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
