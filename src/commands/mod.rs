//! One file per subcommand. Commands may use `anyhow` and print; the library below them may not.

pub mod cp;
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
use crate::engine::LoadSettings;
use crate::resources::{budget, KeepAlive, Limits, ModelManager};
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

/// The RAM budget the flags give (bytes), and the machine's memory.
pub fn ram_budget(args: &EngineArgs) -> anyhow::Result<(u64, u64)> {
    let memory = budget::machine_memory();
    let ram_budget = match &args.ram_budget {
        Some(spec) => budget::parse_budget(spec, memory).map_err(anyhow::Error::msg)?,
        None => budget::default_budget(memory),
    };
    Ok((ram_budget, memory))
}

pub fn manager(store: ModelStore, args: &EngineArgs) -> anyhow::Result<ModelManager> {
    let keep_alive = KeepAlive::parse(&args.keep_alive)
        .map_err(anyhow::Error::msg)
        .context("--keep-alive")?;
    let (ram_budget, memory) = ram_budget(args)?;
    let limits = Limits {
        ram_budget,
        max_loaded: (args.max_loaded_models > 0).then_some(args.max_loaded_models),
        max_queue: args.max_queue,
    };
    tracing::info!("RAM budget {} MiB of {} MiB", ram_budget >> 20, memory >> 20);
    Ok(ModelManager::new(Arc::new(store), load_settings(args), keep_alive, limits))
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
