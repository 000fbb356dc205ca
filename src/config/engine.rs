//! The engine's settings resolved once: each flag (or its `HEARTH_*` variable) over the config
//! file's `engine` section over its one default, into what the resource manager and the engine
//! take. Every command that runs models (`serve`, `run`, `stdio`, `bench`) and those that
//! estimate (`show`, `pull`) start here; `serve` alone passes a file's section.

use std::time::Duration;

use super::file::{ConfigError, EngineFile};
use crate::cli::EngineArgs;
use crate::engine::LoadSettings;
use crate::resources::{budget, KeepAlive, Limits, DEFAULT_LOAD_WAIT};

/// Ollama's context default on a CPU-only machine.
pub const DEFAULT_NUM_CTX: u32 = 4096;
pub const DEFAULT_PARALLEL: u32 = 4;
pub const DEFAULT_BATCH: u32 = 512;
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(5 * 60));
pub const DEFAULT_MAX_QUEUE: usize = 64;

/// How models are loaded, how long they stay and how much of the machine they may take.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub load: LoadSettings,
    pub keep_alive: KeepAlive,
    pub limits: Limits,
    /// The machine's (or the cgroup's) memory, which a percentage budget is of.
    pub memory: u64,
    /// Bytes of disk for saved prefixes of unloaded models (`serve`; 0: none).
    pub disk_prefixes: u64,
}

impl EngineConfig {
    /// The flags over `file` over the defaults. A bad `--keep-alive` or `--ram-budget` names
    /// its flag (the file's values were checked when it was read).
    pub fn resolve(flags: &EngineArgs, file: &EngineFile) -> Result<EngineConfig, ConfigError> {
        let flag_error = |flag: &str, message: String| ConfigError::Flag { flag: flag.to_string(), message };
        let keep_alive = match &flags.keep_alive {
            Some(k) => KeepAlive::parse(k).map_err(|e| flag_error("--keep-alive", e))?,
            None => file.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE),
        };
        let memory = budget::machine_memory();
        let ram_budget = match (&flags.ram_budget, &file.ram_budget) {
            (Some(spec), _) => budget::parse_budget(spec, memory).map_err(|e| flag_error("--ram-budget", e))?,
            (None, Some(spec)) => budget::parse_budget(spec, memory).map_err(|e| flag_error("engine.ram_budget", e))?,
            (None, None) => budget::default_budget(memory),
        };
        let threads = flags.threads.or(file.threads).unwrap_or_else(super::default_threads);
        let load = LoadSettings {
            num_ctx: flags.context_length.or(file.context_length).unwrap_or(DEFAULT_NUM_CTX),
            parallel: flags.parallel.or(file.parallel).unwrap_or(DEFAULT_PARALLEL),
            threads,
            threads_batch: threads,
            batch_size: flags.batch_size.or(file.batch_size).unwrap_or(DEFAULT_BATCH),
            weights: flags.convert_weights.or(file.convert_weights).unwrap_or_default(),
            speculative: flags.speculative.or(file.speculative).unwrap_or(true),
            prefix_reuse: flags.prefix_reuse.or(file.prefix_reuse).unwrap_or_default(),
            prefix_store_limit: ram_budget / crate::engine::prefix::PREFIX_STORE_BUDGET_SHARE,
        };
        let limits = Limits {
            ram_budget,
            max_loaded: flags.max_loaded_models.or(file.max_loaded_models).filter(|&n| n > 0),
            max_queue: flags.max_queue.or(file.max_queue).unwrap_or(DEFAULT_MAX_QUEUE),
            load_wait: DEFAULT_LOAD_WAIT,
        };
        let disk_prefixes = flags.disk_prefixes.or(file.disk_prefixes).unwrap_or(crate::engine::disk_prefixes::DEFAULT_DISK_PREFIX_BYTES);
        Ok(EngineConfig { load, keep_alive, limits, memory, disk_prefixes })
    }

    /// [`resolve`](Self::resolve) without a config file.
    pub fn from_flags(flags: &EngineArgs) -> Result<EngineConfig, ConfigError> {
        Self::resolve(flags, &EngineFile::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file = EngineFile { parallel: Some(2), context_length: Some(1024), keep_alive: Some(KeepAlive::Forever), max_queue: Some(3), ..EngineFile::default() };
        let flags = EngineArgs { parallel: Some(8), ram_budget: Some("1GiB".into()), ..EngineArgs::default() };
        let c = EngineConfig::resolve(&flags, &file).expect("valid");
        assert_eq!((c.load.parallel, c.load.num_ctx, c.load.batch_size), (8, 1024, DEFAULT_BATCH));
        assert_eq!((c.keep_alive, c.limits.max_queue, c.limits.ram_budget), (KeepAlive::Forever, 3, 1 << 30));
        let none = EngineConfig::from_flags(&EngineArgs::default()).expect("valid");
        assert_eq!((none.load.num_ctx, none.load.parallel, none.keep_alive), (DEFAULT_NUM_CTX, DEFAULT_PARALLEL, DEFAULT_KEEP_ALIVE));
        assert_eq!(none.limits.max_loaded, None);
    }

    #[test]
    fn a_bad_flag_is_named() {
        let flags = EngineArgs { keep_alive: Some("soon".into()), ..EngineArgs::default() };
        let err = EngineConfig::from_flags(&flags).expect_err("bad keep-alive");
        assert!(err.to_string().starts_with("--keep-alive: "), "{err}");
    }
}
