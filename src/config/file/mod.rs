//! The YAML config file (`hearth.yaml`) and the seed-compatible environment variables that
//! overlay it, parsed into validated types once.
//!
//! Precedence is flags > env > file > defaults. clap owns the flags and their `HEARTH_*`
//! variables; this module owns the file and the variables that have no flag of their own:
//! those the earlier service read (`REDIS_URL`, `LLM_RESPONSE_CACHE_TTL`, ...), `HEARTH_HOST`
//! and `HEARTH_DATA`, listed in [`ENV_VARS`]. Server and engine settings stay `Option` so the caller can put flags on top; cache and pricing, which have no
//! flags, come out with their defaults filled in. Every error names the file, the line and the
//! key path (`personas.pirate.options.temperature`), or the environment variable.
//!
//! Scalars (durations, sizes, model names, addresses) are checked while serde reads them, so
//! serde_yaml reports their exact line and path; checks that need a whole section (persona
//! options, templates, map keys) run afterwards and find the key's line in the text by its
//! indentation. The variables above are read only through the `Env` passed in (tests hand a
//! map); nothing here starts a server or opens a connection.

pub mod auth;
mod locate;
mod personas;
mod routing;
pub(crate) mod scalar;
#[cfg(test)]
mod tests;

use locate::{invalid_at, yaml_error};
use personas::{persona, template_error, RawPersona, RawTemplate};

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::service::catalog::Persona;
use crate::spec::options::OptionPatch;
use crate::cache::CacheSettings;
use crate::metrics::Pricing;
use crate::prompts::{self, PromptTemplate};
use crate::resources::keep_alive::KeepAlive;

/// The environment variables without a flag of their own, read over the file, and what each
/// sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("HEARTH_HOST", "server.host: address to listen on (the client commands' server too), e.g. 127.0.0.1:11434"),
    ("HEARTH_DATA", "server.data: directory for hearth's own data (conversations, profiles)"),
    ("HEARTH_ORIGINS", "server.origins: browser origins allowed besides loopback ones, comma-separated"),
    ("MAX_CONCURRENT_REQUESTS", "server.max_concurrent_requests: requests served at once (0 = unlimited)"),
    ("REQUEST_TIMEOUT", "server.request_timeout: per-request time limit, e.g. 10m or 600 (default 30m; 0 = none)"),
    ("LLM_RESPONSE_CACHE_TTL", "cache.ttl: how long a cached response lives, e.g. 1h or 3600"),
    ("REDIS_URL", "cache.redis_url: share the response cache through Redis, e.g. redis://127.0.0.1:6379"),
    ("DATABASE_URL", "database.url: keep conversations and stored responses in PostgreSQL, e.g. postgres://hearth@127.0.0.1:5432/hearth"),
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
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
    /// A combination hearth will not run with (serving beyond loopback without keys).
    #[error("refusing to start: {0}")]
    Unsafe(String),
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
    /// How long answers may go on streaming after SIGTERM before they are ended. Default 10s.
    #[serde(default, deserialize_with = "scalar::duration")]
    pub drain: Option<Duration>,
    /// Connections served at once; one more gets 503. Default 512.
    #[serde(default, deserialize_with = "scalar::count")]
    pub max_connections: Option<usize>,
    /// Browser origins allowed besides the loopback and app ones (`https://app.example`,
    /// `https://*.corp.example`, `http://host:*`, or `*` for all). Each has a scheme.
    pub origins: Option<Vec<String>>,
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
    /// `lookup` (the default) or `off`.
    #[serde(default, deserialize_with = "scalar::speculative")]
    pub speculative: Option<bool>,
    /// `auto` (the default), `exact` or `fast`.
    #[serde(default, deserialize_with = "scalar::prefix_reuse")]
    pub prefix_reuse: Option<crate::engine::exact::Reuse>,
    /// Disk for unloaded models' saved prefixes (`serve`); 0 turns it off.
    #[serde(default, deserialize_with = "scalar::size")]
    pub disk_prefixes: Option<u64>,
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

/// The validated config file, with the environment overlays applied.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub server: ServerFile,
    pub engine: EngineFile,
    /// Defaults filled in; the TTL is never zero (`enabled: false` turns the cache off), the
    /// Redis URL is one the client accepts (nothing is connected here).
    pub cache: CacheSettings,
    /// Prices per 1000 tokens for the usage metrics, by normalized model name (`name:tag`).
    pub pricing: Pricing,
    /// Keyed by normalized persona name.
    pub personas: BTreeMap<String, Persona>,
    /// The builtin templates with the file's added or replacing them.
    pub templates: BTreeMap<String, PromptTemplate>,
    /// What `/api/pull` may reach (public addresses and `pull.allow`) and download.
    pub pull: crate::store::pull::PullLimits,
    /// API keys (`auth.keys` and `auth.keys_file`); empty means nothing asks for a key.
    pub keys: Vec<crate::service::accounts::KeySpec>,
    /// Providers, routes, breakers and the price of local CPU time.
    pub routing: crate::routing::RoutingConfig,
    /// PostgreSQL for conversations and stored responses (`database.url`, `DATABASE_URL`);
    /// `None` keeps them in the data directory's SQLite database.
    pub database_url: Option<String>,
    /// The file read, if any.
    pub source: Option<PathBuf>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            server: ServerFile::default(),
            engine: EngineFile::default(),
            cache: CacheSettings::default(),
            pricing: Pricing::default(),
            personas: BTreeMap::new(),
            templates: prompts::builtin(),
            pull: default_pull_limits(),
            keys: Vec::new(),
            routing: Default::default(),
            database_url: None,
            source: None,
        }
    }
}

#[cfg(test)]
impl FileConfig {
    /// The persona a request's model name refers to, if any.
    pub fn persona(&self, model: &str) -> Option<&Persona> {
        let name = crate::store::normalize_name(model).ok()?;
        self.personas.get(&name)
    }

    /// A prompt template by exact name.
    pub fn template(&self, name: &str) -> Result<&PromptTemplate, prompts::PromptError> {
        self.templates
            .get(name)
            .ok_or_else(|| prompts::PromptError::NotFound(name.to_string()))
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

#[cfg(test)]
/// Parses config text; `origin` names it in errors (the tests' entry point). Touches no files: relative paths stay
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
    auth: Option<auth::RawAuth>,
    pull: Option<RawPull>,
    providers: Option<BTreeMap<String, routing::RawProvider>>,
    routes: Option<BTreeMap<String, routing::RawRoute>>,
    routing: Option<routing::RawRouting>,
    database: Option<RawDatabase>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default, deserialize_with = "scalar::database_url")]
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPull {
    allow: Option<Vec<String>>,
    #[serde(default, deserialize_with = "scalar::size")]
    max_bytes: Option<u64>,
}

/// The largest file `/api/pull` downloads unless `pull.max_bytes` says otherwise.
pub const DEFAULT_PULL_MAX_BYTES: u64 = 256 << 30;

/// Public addresses only, at most [`DEFAULT_PULL_MAX_BYTES`].
pub fn default_pull_limits() -> crate::store::pull::PullLimits {
    crate::store::pull::PullLimits { reach: crate::store::reach::Reach::public_and(Vec::new()), max_bytes: Some(DEFAULT_PULL_MAX_BYTES) }
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
    if let Some(origins) = &server.origins {
        check_origins(origins).map_err(|e| at(&["server", "origins"], e))?;
    }
    server.models = server.models.map(|p| resolve(base, p));
    server.data = server.data.map(|p| resolve(base, p));
    let engine = raw.engine.unwrap_or_default();

    let raw_cache = raw.cache.unwrap_or_default();
    let defaults = CacheSettings::default();
    let mut cache = CacheSettings {
        enabled: raw_cache.enabled.unwrap_or(defaults.enabled),
        ttl: raw_cache.ttl.unwrap_or(defaults.ttl),
        max_bytes: raw_cache.max_bytes.unwrap_or(defaults.max_bytes),
        redis_url: raw_cache.redis_url,
    };

    let raw_pricing = raw.pricing.unwrap_or_default();
    let mut pricing = Pricing {
        default_per_1k_tokens: raw_pricing.default_per_1k_tokens.unwrap_or(0.0),
        per_model: Default::default(),
    };
    for (key, Price(price)) in raw_pricing.models.unwrap_or_default() {
        let name = crate::store::normalize_name(&key).map_err(|e| at(&["pricing", "models", &key], e.to_string()))?;
        if pricing.per_model.insert(name.clone(), price).is_some() {
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

    let keys = auth::keys(raw.auth, text, origin, base)?;
    let raw_pull = raw.pull.unwrap_or_default();
    let allow = raw_pull
        .allow
        .unwrap_or_default()
        .iter()
        .map(|r| r.parse::<crate::store::reach::IpRange>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&["pull", "allow"], e))?;
    let pull = crate::store::pull::PullLimits {
        reach: crate::store::reach::Reach::public_and(allow),
        max_bytes: Some(raw_pull.max_bytes.unwrap_or(DEFAULT_PULL_MAX_BYTES)),
    };

    let mut routing = routing::routing(raw.providers, raw.routes, raw.routing, &personas, base, &at)?;
    // Fronts sharing the cache's Redis share their fleets' prefix owners there too.
    for fleet in routing.providers.iter_mut().filter_map(|p| p.fleet.as_mut()) {
        fleet.owners_redis = cache.redis_url.clone();
    }
    let database_url = match env("DATABASE_URL").filter(|v| !v.trim().is_empty()) {
        Some(v) => Some(scalar::parse_database_url(&v).map_err(|message| ConfigError::Env { var: "DATABASE_URL".into(), message })?),
        None => raw.database.and_then(|d| d.url),
    };

    Ok(FileConfig {
        server,
        engine,
        cache,
        pricing,
        personas,
        templates,
        pull,
        keys,
        routing,
        database_url,
        source: None,
    })
}

fn overlay_env(server: &mut ServerFile, cache: &mut CacheSettings, env: Env<'_>) -> Result<(), ConfigError> {
    // An empty variable counts as unset, as shells make `VAR=` easy to leave behind.
    let get = |var: &str| env(var).filter(|v| !v.trim().is_empty());
    fn parsed<T>(var: &str, value: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        parse(value).map_err(|message| ConfigError::Env {
            var: var.to_string(),
            message,
        })
    }
    if let Some(host) = crate::config::env_host(env)? {
        server.host = Some(host);
    }
    if let Some(dir) = crate::config::env_data_dir(env) {
        server.data = Some(resolve(None, dir));
    }
    if let Some(v) = get("HEARTH_ORIGINS") {
        let origins: Vec<String> = v.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect();
        check_origins(&origins).map_err(|message| ConfigError::Env { var: "HEARTH_ORIGINS".into(), message })?;
        server.origins = Some(origins);
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

/// Ollama's `options` object at `path`, as a patch; an error names its option.
fn option_patch(options: &serde_json::Map<String, Value>, path: &[&str], at: &dyn Fn(&[&str], String) -> ConfigError) -> Result<OptionPatch, ConfigError> {
    let at_option = |option: &str, message: String| at(&[path, &[option]].concat(), message);
    // One option at a time first, so a type error names its option.
    for (option, value) in options {
        if let Err(e) = OptionPatch::from_map(&serde_json::Map::from_iter([(option.clone(), value.clone())])) {
            let message = if e.reason.starts_with("unknown field") {
                format!("unknown Ollama option `{option}`")
            } else {
                e.reason
            };
            return Err(at_option(option, message));
        }
    }
    OptionPatch::from_map(options).map_err(|e| at_option(&e.field, e.reason))
}

/// Each origin pattern is `*` or has a scheme (`https://app.example`, `app://*`).
fn check_origins(origins: &[String]) -> Result<(), String> {
    match origins.iter().find(|o| o.trim() != "*" && !o.contains("://")) {
        Some(o) => Err(format!("origin {o:?} has no scheme: write it as a browser sends it, e.g. https://app.example or http://host:*")),
        None => Ok(()),
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
