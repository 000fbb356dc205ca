//! The YAML config file (`hearth.yaml`) and the seed-compatible environment variables that
//! overlay it, parsed into validated types once.
//!
//! Precedence is flags > env > file > defaults. clap owns the flags and their `HEARTH_*`
//! variables; this module owns the file and the few un-prefixed variables the earlier service
//! read (`REDIS_URL`, `LLM_RESPONSE_CACHE_TTL`, ...), listed in [`ENV_VARS`]. Server and engine
//! settings stay `Option` so the caller can put flags on top; cache and pricing, which have no
//! flags, come out with their defaults filled in. Every error names the file, the line and the
//! key path (`personas.pirate.options.temperature`), or the environment variable.
//!
//! Scalars (durations, sizes, model names, addresses) are checked while serde reads them, so
//! serde_yaml reports their exact line and path; checks that need a whole section (persona
//! options, templates, map keys) run afterwards and find the key's line in the text by its
//! indentation. The variables above are read only through the `Env` passed in (tests hand a
//! map); nothing here starts a server or opens a connection.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::engine::options::RawOptions;
use crate::prompts::{self, PromptError, PromptTemplate};
use crate::resources::keep_alive::KeepAlive;

/// The un-prefixed environment variables read on top of the file, and what each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("HEARTH_DATA", "server.data: directory for hearth's own data (conversations, cache)"),
    ("MAX_CONCURRENT_REQUESTS", "server.max_concurrent_requests: requests served at once (0 = unlimited)"),
    ("REQUEST_TIMEOUT", "server.request_timeout: per-request time limit, e.g. 10m or 600 (0 = none)"),
    ("LLM_RESPONSE_CACHE_TTL", "cache.ttl: how long a cached response lives, e.g. 1h or 3600"),
    ("REDIS_URL", "cache.redis_url: share the response cache through Redis, e.g. redis://127.0.0.1:6379"),
];

/// How environment variables are looked up: [`process_env`] in the binary, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment; pass it to [`load`] outside tests.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Where the config file is looked for when none is named: `~/.config/hearth/hearth.yaml`
/// (the platform's config directory).
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("hearth").join("hearth.yaml"))
}

pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A config file or environment variable hearth cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// A bad key or value in the file. `line`/`column` are 1-based; `key` is the dotted path
    /// when known.
    #[error("{}{}", location(origin, *line, *column), keyed(key, message))]
    Invalid {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        key: Option<String>,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn location(origin: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{origin}:{l}:{c}: "),
        (Some(l), None) => format!("{origin}:{l}: "),
        _ => format!("{origin}: "),
    }
}

fn keyed(key: &Option<String>, message: &str) -> String {
    match key {
        Some(k) => format!("{k}: {message}"),
        None => message.to_string(),
    }
}

/// `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `server:`. Every field is `None` when the file leaves it out; flags go on top.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default, deserialize_with = "scalar::host")]
    pub host: Option<SocketAddr>,
    /// Relative paths are resolved against the config file's directory.
    pub models: Option<PathBuf>,
    pub data: Option<PathBuf>,
    /// Normalized (`name:tag`).
    #[serde(default, deserialize_with = "scalar::model_name")]
    pub default_model: Option<String>,
    /// 0 means unlimited.
    #[serde(default, deserialize_with = "scalar::count")]
    pub max_concurrent_requests: Option<usize>,
    /// `Duration::ZERO` means no time limit.
    #[serde(default, deserialize_with = "scalar::duration")]
    pub request_timeout: Option<Duration>,
    pub log_format: Option<LogFormat>,
    pub log_prompts: Option<bool>,
}

/// `engine:`, with the same ranges as the matching flags. Every field is `None` when unset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    #[serde(default, deserialize_with = "scalar::parallel")]
    pub parallel: Option<u32>,
    #[serde(default, deserialize_with = "scalar::threads")]
    pub threads: Option<i32>,
    #[serde(default, deserialize_with = "scalar::context_length")]
    pub context_length: Option<u32>,
    #[serde(default, deserialize_with = "scalar::batch_size")]
    pub batch_size: Option<u32>,
    #[serde(default, deserialize_with = "scalar::convert_weights")]
    pub convert_weights: Option<crate::engine::convert::Weights>,
    #[serde(default, deserialize_with = "scalar::keep_alive")]
    pub keep_alive: Option<KeepAlive>,
    /// Checked for syntax; `resources::budget::parse_budget` turns it into bytes.
    #[serde(default, deserialize_with = "scalar::ram_budget")]
    pub ram_budget: Option<String>,
    #[serde(default, deserialize_with = "scalar::count")]
    pub max_loaded_models: Option<usize>,
    #[serde(default, deserialize_with = "scalar::count")]
    pub max_queue: Option<usize>,
}

/// `cache:`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheFile {
    pub enabled: bool,
    /// Never zero (`enabled: false` turns the cache off).
    pub ttl: Duration,
    pub max_bytes: u64,
    /// Checked to be a URL the redis client accepts; nothing is connected here.
    pub redis_url: Option<String>,
}

impl Default for CacheFile {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: DEFAULT_CACHE_TTL,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            redis_url: None,
        }
    }
}

/// `pricing:`: cost per 1000 tokens, for the usage metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PricingFile {
    pub default_per_1k_tokens: f64,
    /// Keyed by normalized model name (`name:tag`).
    pub models: BTreeMap<String, f64>,
}

impl PricingFile {
    /// The price per 1000 tokens for `model` (any spelling `normalize_name` accepts).
    pub fn per_1k_tokens(&self, model: &str) -> f64 {
        crate::store::normalize_name(model)
            .ok()
            .and_then(|name| self.models.get(&name).copied())
            .unwrap_or(self.default_per_1k_tokens)
    }
}

/// A named preset over a model: system prompt, options, stop words, few-shot examples.
/// Usable wherever a model name is, under its own name.
#[derive(Debug, Clone, PartialEq)]
pub struct Persona {
    /// Normalized (`pirate:latest`), as a request's model name would be.
    pub name: String,
    /// Normalized; the persona's own `model`, else `server.default_model`.
    pub model: String,
    /// Never empty when set.
    pub system: Option<String>,
    /// Ollama options, checked by `RawOptions::validate`; a request's options go on top.
    pub options: serde_json::Map<String, Value>,
    pub stop: Vec<String>,
    /// `(role, content)`, role one of `system`, `user`, `assistant`.
    pub examples: Vec<(String, String)>,
    pub adapter: Option<PathBuf>,
    pub description: Option<String>,
}

/// The validated config file, with the environment overlays applied.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub server: ServerFile,
    pub engine: EngineFile,
    pub cache: CacheFile,
    pub pricing: PricingFile,
    /// Keyed by normalized persona name.
    pub personas: BTreeMap<String, Persona>,
    /// The builtin templates with the file's added or replacing them.
    pub templates: BTreeMap<String, PromptTemplate>,
    /// The file read, if any.
    pub source: Option<PathBuf>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            server: ServerFile::default(),
            engine: EngineFile::default(),
            cache: CacheFile::default(),
            pricing: PricingFile::default(),
            personas: BTreeMap::new(),
            templates: prompts::builtin(),
            source: None,
        }
    }
}

impl FileConfig {
    /// The persona a request's model name refers to, if any.
    pub fn persona(&self, model: &str) -> Option<&Persona> {
        let name = crate::store::normalize_name(model).ok()?;
        self.personas.get(&name)
    }

    /// A prompt template by exact name.
    pub fn template(&self, name: &str) -> Result<&PromptTemplate, PromptError> {
        self.templates
            .get(name)
            .ok_or_else(|| PromptError::NotFound(name.to_string()))
    }
}

/// Reads `path`, or [`default_path`] when `None` and that file exists, or nothing (defaults
/// plus environment). Relative paths in the file are resolved against its directory, and a
/// persona's `adapter` must exist.
pub fn load(path: Option<&Path>, env: Env<'_>) -> Result<FileConfig, ConfigError> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => default_path().filter(|p| p.is_file()),
    };
    let Some(path) = path else {
        return parse_with_base("", "(no config file)", None, env);
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    let base = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    let mut config = parse_with_base(&text, &origin, base, env)?;
    config.source = Some(path);
    Ok(config)
}

/// Parses config text; `origin` names it in errors. Touches no files: relative paths stay
/// relative to the working directory.
pub fn parse(text: &str, origin: &str, env: Env<'_>) -> Result<FileConfig, ConfigError> {
    parse_with_base(text, origin, None, env)
}

// ---- raw shapes of the sections that need more than per-value checks ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<ServerFile>,
    engine: Option<EngineFile>,
    cache: Option<RawCache>,
    pricing: Option<RawPricing>,
    personas: Option<BTreeMap<String, RawPersona>>,
    templates: Option<BTreeMap<String, RawTemplate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "scalar::ttl")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "scalar::size")]
    max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "scalar::redis_url")]
    redis_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    #[serde(default, deserialize_with = "scalar::price")]
    default_per_1k_tokens: Option<f64>,
    models: Option<BTreeMap<String, Price>>,
}

#[derive(Debug)]
struct Price(f64);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar::price(d)?
            .map(Price)
            .ok_or_else(|| de::Error::custom("a price may not be null"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersona {
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
struct RawTemplate {
    template: String,
    families: Option<BTreeMap<String, String>>,
    description: Option<String>,
}

// ---- parsing ----

fn parse_with_base(text: &str, origin: &str, base: Option<&Path>, env: Env<'_>) -> Result<FileConfig, ConfigError> {
    let only_comments = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    let raw: RawFile = if only_comments {
        RawFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_error(origin, &e))?
    };
    let at = |path: &[&str], message: String| invalid_at(text, origin, path, message);

    let mut server = raw.server.unwrap_or_default();
    server.models = server.models.map(|p| resolve(base, p));
    server.data = server.data.map(|p| resolve(base, p));
    let engine = raw.engine.unwrap_or_default();

    let raw_cache = raw.cache.unwrap_or_default();
    let defaults = CacheFile::default();
    let mut cache = CacheFile {
        enabled: raw_cache.enabled.unwrap_or(defaults.enabled),
        ttl: raw_cache.ttl.unwrap_or(defaults.ttl),
        max_bytes: raw_cache.max_bytes.unwrap_or(defaults.max_bytes),
        redis_url: raw_cache.redis_url,
    };

    let raw_pricing = raw.pricing.unwrap_or_default();
    let mut pricing = PricingFile {
        default_per_1k_tokens: raw_pricing.default_per_1k_tokens.unwrap_or(0.0),
        models: BTreeMap::new(),
    };
    for (key, Price(price)) in raw_pricing.models.unwrap_or_default() {
        let name = crate::store::normalize_name(&key).map_err(|e| at(&["pricing", "models", &key], e.to_string()))?;
        if pricing.models.insert(name.clone(), price).is_some() {
            return Err(at(&["pricing", "models", &key], format!("{name} is priced twice")));
        }
    }

    overlay_env(&mut server, &mut cache, env)?;

    let mut personas = BTreeMap::new();
    for (key, raw) in raw.personas.unwrap_or_default() {
        let persona = persona(&key, raw, server.default_model.as_deref(), base, &at)?;
        if personas.contains_key(&persona.name) {
            return Err(at(&["personas", &key], format!("persona {} is defined twice", persona.name)));
        }
        personas.insert(persona.name.clone(), persona);
    }

    let mut templates = prompts::builtin();
    for (key, raw) in raw.templates.unwrap_or_default() {
        let families = raw.families.unwrap_or_default();
        let template = PromptTemplate::new(key.clone(), raw.template, families, raw.description)
            .map_err(|e| template_error(&key, e, &at))?;
        templates.insert(key, template);
    }

    Ok(FileConfig {
        server,
        engine,
        cache,
        pricing,
        personas,
        templates,
        source: None,
    })
}

fn overlay_env(server: &mut ServerFile, cache: &mut CacheFile, env: Env<'_>) -> Result<(), ConfigError> {
    // An empty variable counts as unset, as shells make `VAR=` easy to leave behind.
    let get = |var: &str| env(var).filter(|v| !v.trim().is_empty());
    fn parsed<T>(var: &str, value: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        parse(value).map_err(|message| ConfigError::Env {
            var: var.to_string(),
            message,
        })
    }
    if let Some(v) = get("HEARTH_DATA") {
        server.data = Some(resolve(None, PathBuf::from(v)));
    }
    if let Some(v) = get("MAX_CONCURRENT_REQUESTS") {
        server.max_concurrent_requests = Some(parsed("MAX_CONCURRENT_REQUESTS", &v, scalar::parse_count)?);
    }
    if let Some(v) = get("REQUEST_TIMEOUT") {
        server.request_timeout = Some(parsed("REQUEST_TIMEOUT", &v, scalar::parse_duration)?);
    }
    if let Some(v) = get("LLM_RESPONSE_CACHE_TTL") {
        cache.ttl = parsed("LLM_RESPONSE_CACHE_TTL", &v, scalar::parse_ttl)?;
    }
    if let Some(v) = get("REDIS_URL") {
        cache.redis_url = Some(parsed("REDIS_URL", &v, scalar::parse_redis_url)?);
    }
    Ok(())
}

fn persona(
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
    let options = raw.options.unwrap_or_default();
    // One option at a time first, so a type error names its option.
    for (option, value) in &options {
        let single = Value::Object(serde_json::Map::from_iter([(option.clone(), value.clone())]));
        if let Err(e) = RawOptions::from_json(&single) {
            let message = if e.reason.starts_with("unknown field") {
                format!("unknown Ollama option `{option}`")
            } else {
                e.reason
            };
            return Err(at(&["personas", key, "options", option], message));
        }
    }
    let checked = RawOptions::from_json(&Value::Object(options.clone()))
        .and_then(|o| o.validate(super::DEFAULT_NUM_CTX));
    if let Err(e) = checked {
        return Err(at(&["personas", key, "options", &e.field], e.reason));
    }
    let stop = raw.stop.unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(at(&["personas", key, "stop"], "a stop sequence may not be empty".to_string()));
    }
    let stop_check = Value::Object(serde_json::Map::from_iter([("stop".to_string(), Value::from(stop.clone()))]));
    if let Err(e) = RawOptions::from_json(&stop_check).and_then(|o| o.validate(super::DEFAULT_NUM_CTX)) {
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
        options,
        stop,
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

fn template_error(key: &str, e: PromptError, at: &dyn Fn(&[&str], String) -> ConfigError) -> ConfigError {
    let message = e.to_string();
    match &e {
        PromptError::Syntax { family: Some(f), .. } | PromptError::FamilyVariables { family: f, .. } => {
            at(&["templates", key, "families", f], message)
        }
        PromptError::Syntax { family: None, .. } => at(&["templates", key, "template"], message),
        _ => at(&["templates", key], message),
    }
}

/// `~/x` -> home/x; a relative path -> under `base` (the config file's directory) when given.
fn resolve(base: Option<&Path>, path: PathBuf) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    }
}

/// Turns a serde_yaml error (whose message is `path: problem at line L column C`) into ours.
fn yaml_error(origin: &str, e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(loc) => {
            message = message.replacen(&format!(" at line {} column {}", loc.line(), loc.column()), "", 1);
            (Some(loc.line()), Some(loc.column()))
        }
        None => (None, None),
    };
    // serde_yaml prefixes the dotted path of the value unless it is the root.
    let key = message.split_once(": ").and_then(|(head, _)| {
        let looks_like_path = !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`');
        looks_like_path.then(|| head.to_string())
    });
    if let Some(k) = &key {
        message = message[k.len() + 2..].to_string();
    }
    ConfigError::Invalid {
        origin: origin.to_string(),
        line,
        column,
        key,
        message,
    }
}

fn invalid_at(text: &str, origin: &str, path: &[&str], message: String) -> ConfigError {
    let position = find_key(text, path);
    ConfigError::Invalid {
        origin: origin.to_string(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        key: Some(path.join(".")),
        message,
    }
}

/// The 1-based (line, column) of the deepest key of `path` found in block-style YAML, by
/// indentation: each key must sit at the first indentation seen inside its parent. A key
/// inside a flow mapping (`{ a: 1 }`) is reported at its parent's line.
fn find_key(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut found = None;
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            break;
        }
        if indent != *child_indent.get_or_insert(indent) {
            continue;
        }
        let Some(segment) = path.get(depth) else { break };
        if is_key(trimmed, segment) {
            found = Some((n + 1, indent + 1));
            depth += 1;
            if depth == path.len() {
                break;
            }
            parent_indent = Some(indent);
            child_indent = None;
        }
    }
    found
}

fn is_key(line: &str, key: &str) -> bool {
    [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
        .iter()
        .any(|k| line.strip_prefix(k.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t'])))
}

/// Scalars checked while serde reads them, so serde_yaml's error carries their line and path.
/// Each parser takes the value as text (numbers arrive as their decimal form) and is shared
/// with the environment overlays.
mod scalar {
    use super::*;

    struct ScalarVisitor<T, F> {
        expecting: &'static str,
        parse: F,
        _out: PhantomData<T>,
    }

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for ScalarVisitor<T, F> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            (self.parse)(v).map(Some).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    fn read<'de, D: Deserializer<'de>, T>(
        d: D,
        expecting: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting,
            parse,
            _out: PhantomData,
        })
    }

    pub fn parse_duration(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let err = |detail: String| format!("invalid duration {s:?}: {detail}; use seconds (600) or a duration like 10m, 1h30m");
        if let Ok(secs) = s.parse::<f64>() {
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(err("it must be 0 or more".to_string()));
            }
            return Ok(Duration::from_secs_f64(secs.min(1e12)));
        }
        humantime::parse_duration(s).map_err(|e| err(e.to_string()))
    }

    pub fn parse_ttl(s: &str) -> Result<Duration, String> {
        match parse_duration(s)? {
            Duration::ZERO => Err("a cache TTL of 0 keeps nothing; set cache.enabled: false to turn the cache off".to_string()),
            d => Ok(d),
        }
    }

    pub fn parse_count(s: &str) -> Result<usize, String> {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("invalid count {s:?}: expected a whole number, 0 or more"))
    }

    fn parse_in_range<T: TryFrom<i64>>(s: &str, min: i64, max: i64) -> Result<T, String> {
        s.trim()
            .parse::<i64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| format!("invalid value {s:?}: expected a whole number from {min} to {max}"))
    }

    pub fn parse_size(s: &str) -> Result<u64, String> {
        let err = || format!("invalid size {s:?}: use bytes with a unit (256MiB, 1GB) or plain bytes");
        if s.trim().ends_with('%') {
            return Err(err());
        }
        // The memory argument only scales percentages, refused above.
        crate::resources::budget::parse_budget(s, 0).map_err(|_| err())
    }

    pub fn parse_redis_url(s: &str) -> Result<String, String> {
        use redis::IntoConnectionInfo;
        let s = s.trim();
        // The URL may carry a password: the message never repeats it.
        s.into_connection_info()
            .map(|_| s.to_string())
            .map_err(|e| format!("invalid Redis URL ({e}); expected redis://[user:password@]host[:port][/db]"))
    }

    fn parse_price(s: &str) -> Result<f64, String> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| format!("invalid price {s:?}: expected a number, 0 or more"))
    }

    fn parse_model_name(s: &str) -> Result<String, String> {
        crate::store::normalize_name(s.trim()).map_err(|e| e.to_string())
    }

    pub fn host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        read(d, "an address like 127.0.0.1:11434", |s| {
            crate::config::parse_host(s).map_err(|e| format!("invalid address {s:?}: {e}"))
        })
    }
    pub fn model_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        read(d, "a model name like smollm2:135m", parse_model_name)
    }
    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        read(d, "a whole number", parse_count)
    }
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        read(d, "a duration", parse_duration)
    }
    pub fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        read(d, "a duration", parse_ttl)
    }
    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        read(d, "a size like 256MiB", parse_size)
    }
    pub fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        read(d, "a redis:// URL", parse_redis_url)
    }
    pub fn price<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        read(d, "a price per 1000 tokens", parse_price)
    }
    pub fn parallel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        read(d, "a whole number", |s| parse_in_range(s, 1, 64))
    }
    pub fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        read(d, "a whole number", |s| parse_in_range(s, 1, 1024))
    }
    pub fn context_length<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        read(d, "a whole number", |s| parse_in_range(s, 16, 1_048_576))
    }
    pub fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        read(d, "a whole number", |s| parse_in_range(s, 16, 8192))
    }
    pub fn convert_weights<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::engine::convert::Weights>, D::Error> {
        read(d, "none or q8_0", crate::engine::convert::Weights::parse)
    }
    pub fn keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KeepAlive>, D::Error> {
        read(d, "a duration, 0, or -1", KeepAlive::parse)
    }
    pub fn ram_budget<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        read(d, "a size like 6GiB or a percentage like 80%", |s| {
            // Any memory size checks the syntax; the real one is applied at startup.
            crate::resources::budget::parse_budget(s, 1 << 40).map(|_| s.trim().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SHIPPED: &str = include_str!("../../config/hearth.yaml");

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> FileConfig {
        parse(text, "test.yaml", &no_env).expect("parses")
    }

    fn parse_err(text: &str) -> String {
        parse(text, "test.yaml", &no_env).expect_err("refused").to_string()
    }

    #[test]
    fn shipped_config_parses() {
        let c = parse(SHIPPED, "config/hearth.yaml", &no_env).expect("shipped config parses");
        assert_eq!(c.server.host, Some("127.0.0.1:11434".parse().expect("addr")));
        assert_eq!(c.server.default_model.as_deref(), Some("smollm2:135m"));
        assert_eq!(c.engine.parallel, Some(4));
        assert_eq!(c.engine.keep_alive, Some(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(c.cache, CacheFile::default());
        let pirate = c.persona("pirate").expect("example persona");
        assert_eq!(pirate.model, "smollm2:135m");
        assert!(pirate.system.as_deref().is_some_and(|s| s.contains("pirate")));
        assert!(pirate.options.contains_key("temperature"));
        assert!(!pirate.examples.is_empty());
        assert!(c.templates.contains_key("rag_query") && c.templates.contains_key("summarization"));
        assert_eq!(c.template("rag_query").expect("template").variables(None), vec!["context", "question"]);
        // The file shows the builtins as they are; this keeps the two from drifting apart.
        assert_eq!(c.templates, prompts::builtin());
    }

    /// The field names serde expects in a section, read back from its unknown-field message.
    fn fields_of(section_yaml: &str) -> Vec<String> {
        let msg = parse_err(section_yaml);
        // serde writes "expected one of `a`, `b`, `c`", or "expected `a` or `b`" for two.
        let list = msg.split("expected ").nth(1).expect("a field list");
        let list = list.strip_prefix("one of ").unwrap_or(list);
        list.split(", ").flat_map(|f| f.split(" or ")).map(|f| f.trim_matches('`').to_string()).collect()
    }

    #[test]
    fn shipped_config_shows_every_key() {
        let shipped: serde_yaml::Value = serde_yaml::from_str(SHIPPED).expect("yaml");
        let sections = [
            (vec![], "zz_probe: 1\n"),
            (vec!["server"], "server:\n  zz_probe: 1\n"),
            (vec!["engine"], "engine:\n  zz_probe: 1\n"),
            (vec!["cache"], "cache:\n  zz_probe: 1\n"),
            (vec!["pricing"], "pricing:\n  zz_probe: 1\n"),
            (vec!["personas", "pirate"], "personas:\n  p:\n    zz_probe: 1\n"),
        ];
        for (path, probe) in sections {
            let section = path.iter().fold(&shipped, |v, k| &v[*k]);
            for field in fields_of(probe) {
                assert!(section.get(field.as_str()).is_some(), "config/hearth.yaml lacks {path:?}.{field}");
            }
        }
    }

    #[test]
    fn empty_file_gives_defaults_and_builtins() {
        let c = parse_ok("# nothing here\n");
        assert_eq!(c, FileConfig::default());
        assert_eq!(c.templates.len(), 2);
        let c = parse_ok("server:\npersonas:\ntemplates:\n");
        assert!(c.personas.is_empty());
    }

    #[test]
    fn misspelt_key_names_line_and_path() {
        let text = "server:\n  host: 127.0.0.1:11434\npersonas:\n  pirate:\n    model: smollm2:135m\n    sytem: Arr\n";
        let err = parse(text, "config/hearth.yaml", &no_env).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.starts_with("config/hearth.yaml:6:5: personas.pirate: unknown field `sytem`, expected one of `model`, `system`"), "{msg}");
        assert!(matches!(err, ConfigError::Invalid { line: Some(6), key: Some(ref k), .. } if k == "personas.pirate"));
        let msg = parse_err("sever:\n  host: x\n");
        assert!(msg.starts_with("test.yaml:1:1: unknown field `sever`"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = parse_err("cache:\n  enabled: true\n  ttl: banana\n");
        assert!(msg.starts_with("test.yaml:3:8: cache.ttl: invalid duration \"banana\""), "{msg}");
        let msg = parse_err("engine:\n  parallel: 0\n");
        assert!(msg.starts_with("test.yaml:2:13: engine.parallel: invalid value \"0\": expected a whole number from 1 to 64"), "{msg}");
        let msg = parse_err("engine:\n  parallel: four\n");
        assert!(msg.contains("engine.parallel"), "{msg}");
        let msg = parse_err("server:\n  log_prompts: maybe\n");
        assert!(msg.starts_with("test.yaml:2:16: server.log_prompts: invalid type"), "{msg}");
        let msg = parse_err("pricing:\n  models:\n    \"smollm2:135m\": -1\n");
        assert!(msg.contains("pricing.models.smollm2:135m: invalid price \"-1\""), "{msg}");
        let msg = parse_err("cache:\n  max_bytes: 50%\n");
        assert!(msg.contains("cache.max_bytes: invalid size"), "{msg}");
        let msg = parse_err("server:\n  default_model: ../etc\n");
        assert!(msg.contains("server.default_model: invalid model name"), "{msg}");
        let msg = parse_err("cache:\n  redis_url: http://user:secret@host\n");
        assert!(msg.contains("cache.redis_url: invalid Redis URL") && !msg.contains("secret"), "{msg}");
    }

    #[test]
    fn values_parse() {
        let c = parse_ok(
            "server:\n  request_timeout: 90\n  max_concurrent_requests: 8\n  log_format: json\n  models: ~/m\n\
             engine:\n  keep_alive: -1\n  ram_budget: 60%\n\
             cache:\n  ttl: 1h30m\n  max_bytes: 1GB\n  redis_url: redis://127.0.0.1:6379/0\n\
             pricing:\n  default_per_1k_tokens: 0.001\n  models:\n    smollm2: 0.5\n",
        );
        assert_eq!(c.server.request_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.server.max_concurrent_requests, Some(8));
        assert_eq!(c.server.log_format, Some(LogFormat::Json));
        if let Some(home) = dirs::home_dir() {
            assert_eq!(c.server.models, Some(home.join("m")));
        }
        assert_eq!(c.engine.keep_alive, Some(KeepAlive::Forever));
        assert_eq!(c.engine.ram_budget.as_deref(), Some("60%"));
        assert_eq!(c.cache.ttl, Duration::from_secs(5400));
        assert_eq!(c.cache.max_bytes, 1_000_000_000);
        assert_eq!(c.pricing.per_1k_tokens("smollm2"), 0.5);
        assert_eq!(c.pricing.per_1k_tokens("smollm2:latest"), 0.5);
        assert_eq!(c.pricing.per_1k_tokens("other"), 0.001);
    }

    #[test]
    fn env_overlays_win_over_the_file() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("REDIS_URL", "redis://cache.local:6380"),
            ("LLM_RESPONSE_CACHE_TTL", "120"),
            ("MAX_CONCURRENT_REQUESTS", "3"),
            ("REQUEST_TIMEOUT", "2m"),
            ("HEARTH_DATA", "/srv/hearth"),
        ]);
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let text = "server:\n  data: /var/lib/x\n  max_concurrent_requests: 10\n  request_timeout: 10m\ncache:\n  ttl: 1h\n  redis_url: redis://127.0.0.1\n";
        let c = parse(text, "t.yaml", &lookup).expect("parses");
        assert_eq!(c.cache.redis_url.as_deref(), Some("redis://cache.local:6380"));
        assert_eq!(c.cache.ttl, Duration::from_secs(120));
        assert_eq!(c.server.max_concurrent_requests, Some(3));
        assert_eq!(c.server.request_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.server.data, Some(PathBuf::from("/srv/hearth")));
        // An empty variable is unset: the file's value stays.
        let empty = |k: &str| (k == "LLM_RESPONSE_CACHE_TTL").then(String::new);
        assert_eq!(parse(text, "t.yaml", &empty).expect("parses").cache.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = |k: &str| (k == "LLM_RESPONSE_CACHE_TTL").then(|| "soon".to_string());
        let err = parse("", "t.yaml", &env).expect_err("refused");
        assert!(matches!(&err, ConfigError::Env { var, .. } if var == "LLM_RESPONSE_CACHE_TTL"));
        assert!(err.to_string().starts_with("environment variable LLM_RESPONSE_CACHE_TTL: invalid duration \"soon\""), "{err}");
        let env = |k: &str| (k == "MAX_CONCURRENT_REQUESTS").then(|| "-2".to_string());
        let err = parse("", "t.yaml", &env).expect_err("refused");
        assert!(err.to_string().contains("MAX_CONCURRENT_REQUESTS"), "{err}");
    }

    #[test]
    fn persona_with_unknown_option_is_refused() {
        let text = "personas:\n  pirate:\n    model: smollm2:135m\n    system: Arr\n    options:\n      temperature: 0.7\n      temprature: 0.2\n";
        let msg = parse_err(text);
        assert_eq!(msg, "test.yaml:7:7: personas.pirate.options.temprature: unknown Ollama option `temprature`");
        let text = "personas:\n  pirate:\n    model: smollm2:135m\n    options: { top_p: 3 }\n";
        let msg = parse_err(text);
        assert_eq!(msg, "test.yaml:4:5: personas.pirate.options.top_p: must be between 0 and 1");
        let text = "personas:\n  pirate:\n    model: smollm2:135m\n    options:\n      temperature: hot\n";
        assert!(parse_err(text).starts_with("test.yaml:5:7: personas.pirate.options.temperature: invalid type"));
    }

    #[test]
    fn persona_rules() {
        let c = parse_ok(
            "server:\n  default_model: smollm2:135m\npersonas:\n  Pirate-2:\n    system: Arr\n    stop: [\"\\nUser:\"]\n    examples:\n      - { role: user, content: hi }\n      - { role: assistant, content: arr }\n",
        );
        let p = c.persona("Pirate-2:latest").expect("persona");
        assert_eq!((p.name.as_str(), p.model.as_str()), ("Pirate-2:latest", "smollm2:135m"));
        assert_eq!(p.stop, vec!["\nUser:"]);
        assert_eq!(p.examples[1], ("assistant".to_string(), "arr".to_string()));

        let msg = parse_err("personas:\n  pirate:\n    system: Arr\n");
        assert_eq!(msg, "test.yaml:2:3: personas.pirate: no model: set `model` here or `server.default_model`");
        let msg = parse_err("personas:\n  pirate:\n    model: m\n    system: \"  \"\n");
        assert!(msg.starts_with("test.yaml:4:5: personas.pirate.system: is empty"), "{msg}");
        let msg = parse_err("personas:\n  bad/name:\n    model: m\n");
        assert!(msg.starts_with("test.yaml:2:3: personas.bad/name: a persona name must be a valid model name"), "{msg}");
        let msg = parse_err("personas:\n  p:\n    model: m\n    examples:\n      - role: bot\n        content: x\n");
        assert!(msg.starts_with("test.yaml:5:15: personas.p.examples[0].role: unknown variant `bot`"), "{msg}");
        let msg = parse_err("personas:\n  p:\n    model: m\n  p:latest:\n    model: m\n");
        assert!(msg.contains("defined twice"), "{msg}");
    }

    #[test]
    fn template_with_bad_placeholder_is_refused() {
        let text = "templates:\n  ask:\n    template: \"Q: {question\"\n";
        let msg = parse_err(text);
        assert!(msg.starts_with("test.yaml:3:5: templates.ask.template: template 'ask': '{' is never closed"), "{msg}");
        let text = "templates:\n  ask:\n    template: \"{q}\"\n    families:\n      llama: \"{1q}\"\n";
        let msg = parse_err(text);
        assert!(msg.starts_with("test.yaml:5:7: templates.ask.families.llama: "), "{msg}");
    }

    #[test]
    fn file_templates_add_to_and_replace_builtins() {
        let c = parse_ok("templates:\n  summarization:\n    template: \"TL;DR {text}\"\n  ask:\n    template: \"{q}\"\n    description: d\n");
        assert_eq!(c.templates.len(), 3);
        let vars = BTreeMap::from([("text".to_string(), "x".to_string())]);
        assert_eq!(c.template("summarization").expect("t").render(None, &vars).expect("r"), "TL;DR x");
        assert!(c.template("nope").is_err());
    }

    #[test]
    fn find_key_walks_indentation() {
        let text = "a:\n  b:\n    c: 1\n  c:\n    d: 2\n# c:\ne:\n  f: { g: 1 }\n";
        assert_eq!(find_key(text, &["a", "c"]), Some((4, 3)));
        assert_eq!(find_key(text, &["a", "b", "c"]), Some((3, 5)));
        assert_eq!(find_key(text, &["a", "c", "d"]), Some((5, 5)));
        assert_eq!(find_key(text, &["e", "f", "g"]), Some((8, 3)));
        assert_eq!(find_key(text, &["x"]), None);
    }

    #[test]
    fn load_resolves_paths_against_the_file_and_checks_adapters() {
        let dir = std::env::temp_dir().join(format!("hearth-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("hearth.yaml");
        std::fs::write(&path, "server:\n  models: models\npersonas:\n  p:\n    model: m\n    adapter: lora.gguf\n").expect("write");
        let err = load(Some(&path), &no_env).expect_err("adapter missing");
        assert!(err.to_string().contains(":6:5: personas.p.adapter: "), "{err}");
        std::fs::write(dir.join("lora.gguf"), b"x").expect("write");
        let c = load(Some(&path), &no_env).expect("loads");
        assert_eq!(c.server.models, Some(dir.join("models")));
        assert_eq!(c.persona("p").and_then(|p| p.adapter.clone()), Some(dir.join("lora.gguf")));
        assert_eq!(c.source, Some(path.clone()));
        assert!(matches!(load(Some(&dir.join("missing.yaml")), &no_env), Err(ConfigError::Read { .. })));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
