//! One file per subcommand. Commands may use `anyhow` and print; the library below them may not.

pub mod list;
pub mod ps;
pub mod run;
pub mod serve;
pub mod show;
pub mod stdio;

use std::sync::Arc;

use anyhow::Context;

use crate::cli::{EngineArgs, StoreArgs};
use crate::config;
use crate::engine::LoadSettings;
use crate::resources::{KeepAlive, ModelManager};
use crate::store::{default_models_dir, ModelStore};

pub fn open_store(args: &StoreArgs) -> ModelStore {
    ModelStore::new(args.models.clone().unwrap_or_else(default_models_dir))
}

pub fn load_settings(args: &EngineArgs) -> LoadSettings {
    let threads = args.threads.unwrap_or_else(config::default_threads);
    LoadSettings {
        num_ctx: args.context_length,
        parallel: args.parallel,
        threads,
        threads_batch: threads,
        batch_size: args.batch_size,
    }
}

pub fn manager(store: ModelStore, args: &EngineArgs) -> anyhow::Result<ModelManager> {
    let keep_alive = KeepAlive::parse(&args.keep_alive)
        .map_err(anyhow::Error::msg)
        .context("--keep-alive")?;
    Ok(ModelManager::new(Arc::new(store), load_settings(args), keep_alive))
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
