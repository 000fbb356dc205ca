//! `hearth serve`: binds the address and runs the HTTP API until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState};
use crate::cli::ServeArgs;
use crate::config;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let env_addr = match std::env::var("HEARTH_HOST") {
        Ok(h) if !h.is_empty() => config::parse_host(&h).map_err(anyhow::Error::msg).context("HEARTH_HOST")?,
        _ => config::parse_host("").map_err(anyhow::Error::msg)?,
    };
    let ip = match &args.host {
        Some(h) => config::parse_host(h).map_err(anyhow::Error::msg).context("--host")?.ip(),
        None => env_addr.ip(),
    };
    let port = args.port.unwrap_or(env_addr.port());
    let addr = std::net::SocketAddr::new(ip, port);

    let store = super::open_store(&args.store);
    let models_dir = store.dir().to_path_buf();
    let manager = super::manager(store, &args.engine)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port when --port 0 was given.
    eprintln!("hearth {} listening on {local} (models: {})", crate::VERSION, models_dir.display());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(manager.clone().run_reaper(Duration::from_secs(1), reaper_stop));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut rx = stop_rx.clone();
    let shutdown = async move {
        let _ = rx.wait_for(|s| *s).await;
        tracing::info!("shutting down: no new connections; open responses get {DRAIN:?} to finish");
    };
    let server = api::serve(listener, AppState { manager }, shutdown);
    let mut rx = stop_rx;
    let deadline = async move {
        let _ = rx.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!("streams still open after {DRAIN:?}; closing them"),
    }
    Ok(())
}

/// How long open responses may run after a shutdown signal.
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
