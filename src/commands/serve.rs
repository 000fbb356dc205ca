//! `hearth serve`: reads the config (flags > environment > file > defaults), builds the service
//! layer (cache, conversations, metrics, personas, templates), binds the address and runs the
//! HTTP API until SIGINT/SIGTERM. SIGHUP and `POST /api/config/reload` reload the file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::auth::Keys;
use crate::api::guard::Guard;
use crate::api::{self, AppState, Lifecycle};
use crate::cache::ResponseCache;
use crate::cli::ServeArgs;
use crate::config::file::{self, FileConfig};
use crate::config::serve::ServeConfig;
use crate::conversations::ConversationStore;
use crate::metrics::Metrics;
use crate::routing::{Router, Table};
use crate::service::catalog::{profiles_path, Catalog};
use crate::service::{Service, ServiceSettings};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Read the config before logging starts: it may choose the log format. Its errors are
    // printed by main.
    let config = ServeConfig::load(&args, &file::process_env)?;
    let _log_guard = super::init_server_logging(config.json_logs, "warn,hearth=info");
    let ServeConfig { addr, models_dir, data_dir, log_prompts_flag: log_prompts, engine, origins, insecure_no_auth, file, .. } = config;
    if let Some(src) = &file.source {
        tracing::info!("config: {}", src.display());
    }
    let store = crate::store::ModelStore::new(models_dir.clone());
    let manager = super::manager_with(store, &engine, Some(&data_dir));

    let cache = ResponseCache::new(&file.cache).context("cache")?;
    let conversations = match &file.database_url {
        Some(url) => ConversationStore::connect(url).await.context("database.url")?,
        None => ConversationStore::open(&data_dir)?,
    };
    tracing::info!(database = conversations.kind(), "conversations and stored responses: {}", conversations.path().display());
    let metrics = Metrics::new(file.pricing.clone());
    let threads = f64::from(engine.load.threads.max(1));
    let router = Router::new(Table::build(&file.routing, threads, &file::process_env).map_err(anyhow::Error::msg)?).with_ledger(conversations.clone());
    if !file.routing.providers.is_empty() || !file.routing.routes.is_empty() {
        tracing::info!(providers = file.routing.providers.len(), routes = file.routing.routes.len(), "routing configured");
    }
    // PostgreSQL, shared with other servers: profiles and keys' usage are kept there too.
    let shared = conversations.is_shared().then(|| conversations.clone());
    let service = Service::new(
        manager.clone(),
        cache,
        Some(conversations),
        metrics,
        catalog(&file, Default::default()),
        settings(&file, log_prompts),
    )
    .with_router(router.clone());
    // Profiles live in the shared database when there is one, else beside the conversations.
    let service = match shared.clone() {
        Some(store) => service.with_shared_profiles(store).await.map_err(anyhow::Error::msg).context("profiles")?,
        None => service.with_profiles(profiles_path(&data_dir)).map_err(anyhow::Error::msg)?,
    };

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port when --port 0 was given.
    eprintln!("hearth {} listening on {local} (models: {})", crate::VERSION, models_dir.display());

    // With Redis configured, the keys' rate limits are counted there, shared with every
    // server using the same Redis.
    let shared_limits = match &file.cache.redis_url {
        Some(url) if !file.keys.is_empty() => Some(Arc::new(crate::service::shared_limits::SharedLimits::new(url).map_err(anyhow::Error::msg)?)),
        _ => None,
    };
    let keys = Arc::new(Keys::counted(&file.keys, shared_limits, shared.clone()));
    if keys.is_empty() && !local.ip().is_loopback() {
        tracing::warn!("--insecure-no-auth: {local} serves without API keys; anyone who can reach it may generate, read conversations, and pull or delete models");
    } else if !keys.is_empty() {
        tracing::info!(keys = file.keys.len(), "API keys required on every route but /health");
    }
    let reloader: Option<api::Reloader> = file.source.clone().map(|path| {
        let service = service.clone();
        let keys = Arc::clone(&keys);
        let current = std::sync::Mutex::new(file.clone());
        Box::new(move || {
            let mut current = current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let report = reload(&service, &keys, (local, insecure_no_auth), &path, &current, (log_prompts, threads))?;
            *current = report.0;
            Ok(report.1)
        }) as api::Reloader
    });
    let lifecycle = Arc::new(Lifecycle::new(reloader));
    let guard = Arc::new(Guard::new(&origins, local.ip().is_loopback()));
    if origins.iter().any(|o| o.trim() == "*") {
        tracing::warn!("server.origins allows every origin: any web page the user opens can use this server");
    }
    let state = AppState::from(api::Parts { manager: manager.clone(), service, lifecycle: Arc::clone(&lifecycle), guard, keys, pull: Arc::new(file.pull.clone()) });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(manager.clone().run_reaper(Duration::from_secs(1), reaper_stop));
    {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::routing::upkeep(router, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    if shared.is_some() {
        tokio::spawn(refresh_profiles(state.service.clone(), stop_rx.clone()));
    }
    {
        let lifecycle = Arc::clone(&lifecycle);
        tokio::spawn(async move {
            shutdown_signal().await;
            lifecycle.shutting_down.store(true, Ordering::Release);
            let _ = stop_tx.send(true);
        });
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(Arc::clone(&lifecycle)));
    let drain = file.server.drain.unwrap_or(DRAIN);
    let mut rx = stop_rx.clone();
    let shutdown = async move {
        let _ = rx.wait_for(|s| *s).await;
        tracing::info!("shutting down: no new connections; open responses get {drain:?} to finish");
    };
    let max_connections = file.server.max_connections.filter(|n| *n > 0).unwrap_or(api::listen::DEFAULT_MAX_CONNECTIONS);
    let server = api::serve(listener, state, max_connections, shutdown);
    // Streams still open near the drain limit end with an error line or event; connections
    // that still haven't finished a little later are dropped.
    let mut rx = stop_rx;
    let deadline = async move {
        let _ = rx.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
        tracing::warn!("answers still streaming after {drain:?}: ending them with an error");
        lifecycle.end_streams();
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!("connections still open after the drain; closing them"),
    }
    // Models are unloaded before the process ends, so their conversations' caches reach disk.
    manager.close(MODELS_CLOSE).await;
    Ok(())
}

/// How often profiles stored by other servers sharing the database are looked for.
const PROFILE_REFRESH: Duration = Duration::from_secs(2);

/// Picks up the profiles other servers store in the shared database, until shutdown.
async fn refresh_profiles(service: crate::service::Service, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PROFILE_REFRESH);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        match service.refresh_profiles().await {
            Ok(true) => tracing::info!("profiles changed in the shared database: reloaded"),
            Ok(false) => {}
            Err(e) => tracing::debug!("could not read the shared profiles: {e}"),
        }
    }
}

fn catalog(file: &FileConfig, profiles: std::collections::BTreeMap<String, crate::service::catalog::Persona>) -> Catalog {
    Catalog {
        personas: file.personas.clone(),
        profiles,
        templates: file.templates.clone(),
        default_model: file.server.default_model.clone().unwrap_or_else(|| crate::service::catalog::DEFAULT_MODEL.to_string()),
    }
}

/// `log_prompts` is the flag's: it logs prompts whatever the file says.
fn settings(file: &FileConfig, log_prompts: bool) -> ServiceSettings {
    ServiceSettings {
        max_concurrent_requests: file.server.max_concurrent_requests.unwrap_or(0),
        request_timeout: Some(file.server.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)).filter(|d| !d.is_zero()),
        log_prompts: log_prompts || file.server.log_prompts.unwrap_or(false),
    }
}

/// Re-reads the config file and applies what can change while serving: personas, prompt
/// templates, prices, limits, logging of prompts, providers and routes (swapped whole:
/// requests in flight finish where they started). What needs a restart (addresses, the
/// engine, the cache backend, directories) is listed, not applied. A file that doesn't pass
/// is refused and the running config stays, as is one that would leave a non-loopback server
/// without keys. API keys are replaced (usage kept for unchanged keys).
fn reload(service: &Service, keys: &Keys, (addr, insecure_no_auth): (std::net::SocketAddr, bool), path: &std::path::Path, old: &FileConfig, (log_prompts, threads): (bool, f64)) -> Result<(FileConfig, serde_json::Value), String> {
    let new = file::load(Some(path), &file::process_env).map_err(|e| e.to_string())?;
    if let Some(message) = crate::config::serve::exposure(addr, &new, insecure_no_auth) {
        return Err(message);
    }
    let table = Table::build(&new.routing, threads, &file::process_env)?;
    // Local models new to the routes are loaded before traffic moves to them, where the RAM
    // budget has room now (nothing is unloaded for them while busy).
    let preloaded = tokio::runtime::Handle::current().block_on(preload(service, &old.routing, &new.routing));
    service.router.set_table(table);
    keys.replace(&new.keys);
    let profiles = service.catalog().profiles.clone();
    service.set_catalog(catalog(&new, profiles));
    service.metrics.set_pricing(new.pricing.clone());
    service.set_settings(settings(&new, log_prompts));
    let mut restart = Vec::new();
    if old.server.host != new.server.host {
        restart.push("server.host");
    }
    if old.server.models != new.server.models {
        restart.push("server.models");
    }
    if old.server.data != new.server.data {
        restart.push("server.data");
    }
    if old.server.log_format != new.server.log_format {
        restart.push("server.log_format");
    }
    if old.engine != new.engine {
        restart.push("engine");
    }
    if old.cache != new.cache {
        restart.push("cache");
    }
    let report = serde_json::json!({
        "reloaded": path.display().to_string(),
        "personas": new.personas.keys().collect::<Vec<_>>(),
        "templates": new.templates.keys().collect::<Vec<_>>(),
        "keys": new.keys.len(),
        "providers": new.routing.providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        "routes": new.routing.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        "preloaded": preloaded,
        "restart_required": restart,
    });
    tracing::info!(personas = new.personas.len(), templates = new.templates.len(), "config reloaded from {}", path.display());
    if !restart.is_empty() {
        tracing::warn!("these settings changed but apply only after a restart: {}", restart.join(", "));
    }
    Ok((new, report))
}

/// Loads the local models that the new routes name and the old ones did not, each only if
/// it fits now; returns those loaded.
async fn preload(service: &Service, old: &crate::routing::RoutingConfig, new: &crate::routing::RoutingConfig) -> Vec<String> {
    let local = |c: &crate::routing::RoutingConfig| -> std::collections::BTreeSet<String> {
        let routes: std::collections::BTreeSet<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
        let providers: std::collections::BTreeSet<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        c.routes
            .iter()
            .flat_map(|r| r.targets.iter())
            .filter(|t| t.adapter.is_none() && !routes.contains(t.model.as_str()) && !t.model.split_once('/').is_some_and(|(p, _)| providers.contains(p)))
            .map(|t| t.model.clone())
            .collect()
    };
    let before = local(old);
    let mut loaded = Vec::new();
    for model in local(new).difference(&before) {
        let store = std::sync::Arc::clone(service.manager.store());
        let name = model.clone();
        let Ok(Ok(entry)) = tokio::task::spawn_blocking(move || store.resolve(&name)).await else {
            tracing::warn!(model = %model, "a route names a model that is not in the store");
            continue;
        };
        match service.manager.acquire_within(entry, None, None, Duration::ZERO).await {
            Ok(_lease) => loaded.push(model.clone()),
            Err(e) => tracing::warn!(model = %model, "not loaded ahead of its route's traffic: {e}"),
        }
    }
    loaded
}

#[cfg(unix)]
async fn reload_on_sighup(lifecycle: Arc<Lifecycle>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let lifecycle = Arc::clone(&lifecycle);
        let result = tokio::task::spawn_blocking(move || match &lifecycle.reload {
            Some(reload) => reload(),
            None => Err("started without a config file; nothing to reload".to_string()),
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("SIGHUP: config not reloaded: {e}"),
            Err(e) => tracing::error!("SIGHUP: reload failed: {e}"),
        }
    }
}

/// A request's time limit when the config sets none: long enough for a whole context of
/// output from a large model on a slow CPU, short enough that nothing runs for nobody forever.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long stopping waits for models to unload (and save their prefixes) after the drain.
const MODELS_CLOSE: Duration = Duration::from_secs(30);

/// How long open responses may run after a shutdown signal, unless `server.drain` says.
const DRAIN: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
