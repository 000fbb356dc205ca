//! One file per subcommand. Commands may use `anyhow` and print; the library below them may not.

pub mod bench;
pub mod config_check;
pub mod cp;
pub mod key;
pub mod create;
pub mod list;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod run;
pub mod serve;
pub mod show;
pub mod stdio;
pub mod stop;

use std::sync::Arc;

use anyhow::Context;

use crate::cli::{EngineArgs, StoreArgs};
use crate::config;
use crate::config::engine::EngineConfig;
use crate::resources::ModelManager;
use crate::store::{default_models_dir, ModelStore};

pub fn open_store(args: &StoreArgs) -> ModelStore {
    ModelStore::new(args.models.clone().unwrap_or_else(default_models_dir))
}

/// The resource manager over `store`, on llama.cpp, with the engine flags' settings (no config
/// file: `serve` uses `manager_with`).
pub fn manager(store: ModelStore, flags: &EngineArgs) -> anyhow::Result<ModelManager> {
    Ok(manager_with(store, &EngineConfig::from_flags(flags)?, None))
}

/// The resource manager over `store`, on llama.cpp, with resolved engine settings; unloaded
/// models' prefixes are kept under `data_dir` when one is given (and the engine allows disk).
pub fn manager_with(store: ModelStore, engine: &EngineConfig, data_dir: Option<&std::path::Path>) -> ModelManager {
    tracing::info!("RAM budget {} MiB of {} MiB", engine.limits.ram_budget >> 20, engine.memory >> 20);
    let disk_prefixes = data_dir.filter(|_| engine.disk_prefixes > 0).map(|d| crate::engine::disk_prefixes::DiskPrefixConfig {
        root: d.join("prefixes"),
        limit: engine.disk_prefixes,
    });
    let backend = crate::backend::llama::LlamaCpp { disk_prefixes };
    ModelManager::new(Arc::new(store), Arc::new(backend), engine.load.clone(), engine.keep_alive, engine.limits)
}

/// Providers and routes from the config file (`HEARTH_CONFIG`, else the default path when
/// it exists), so `run` and `stdio` reach the same models as the server does.
pub(crate) fn router() -> anyhow::Result<crate::routing::Router> {
    let path = std::env::var_os("HEARTH_CONFIG").filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let file = config::file::load(path.as_deref(), &config::file::process_env)?;
    let table = crate::routing::Table::build(&file.routing, 1.0, &config::file::process_env).map_err(anyhow::Error::msg)?;
    Ok(crate::routing::Router::new(table))
}

/// Where hearth keeps its own data (conversations, profiles) when no config file is read:
/// `HEARTH_DATA`, else the per-user data directory.
pub fn default_data_dir() -> std::path::PathBuf {
    config::env_data_dir(&config::file::process_env).unwrap_or_else(config::default_data_dir)
}

/// The server the client commands talk to: `--host`, else `HEARTH_HOST`, else Ollama's
/// default address.
pub fn server_addr(args: &crate::cli::ClientArgs) -> anyhow::Result<std::net::SocketAddr> {
    match &args.host {
        Some(h) => config::parse_host(h).map_err(anyhow::Error::msg).context("--host"),
        None => Ok(config::env_host(&config::file::process_env)?.unwrap_or_else(config::default_addr)),
    }
}

/// An HTTP client for the client commands, sending the API key when one is given.
pub fn http_client(api_key: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key.map(str::trim).filter(|k| !k.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).context("--api-key / HEARTH_API_KEY")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

/// Starts logging to stderr: readable text, or one JSON object per line.
pub fn init_logging(json: bool, default_filter: &str) {
    install_logging(json, default_filter, std::io::stderr, None);
}

/// The server's logging: like `init_logging`, but lines are written to stderr by a background
/// thread (a request never waits on a write; measured on cache hits, where the write was ~7% of
/// the request's CPU), and colours only on a terminal. Keep the guard until the server ends: it
/// flushes the lines still queued when dropped. A full queue blocks rather than drops lines.
pub fn init_server_logging(json: bool, default_filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    install_logging(json, default_filter, writer, Some(std::io::stderr().is_terminal()));
    guard
}

/// Installs the global subscriber: `HEARTH_LOG` (else `default_filter`), text or JSON lines;
/// `ansi` overrides tracing-subscriber's own choice of colour codes.
fn install_logging<W>(json: bool, default_filter: &str, writer: W, ansi: Option<bool>)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let mut builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if let Some(ansi) = ansi {
        builder = builder.with_ansi(ansi);
    }
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// Bytes as Ollama's CLI prints them (decimal units).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0} KB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
