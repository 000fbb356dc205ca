//! Command-line structure (clap). Only argument types live here; `commands/` does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};


#[derive(Debug, Parser)]
#[command(name = "hearth", version = crate::LONG_VERSION, about = "A CPU-first local LLM runtime with an Ollama-compatible API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Ollama-compatible HTTP API.
    Serve(ServeArgs),
    /// Run a model on a prompt (argument or piped stdin), or chat interactively on a terminal.
    Run(RunArgs),
    /// Serve JSON lines on stdin/stdout: each line an Ollama generate or chat request.
    Stdio(StdioArgs),
    /// List the models in the models directory.
    #[command(alias = "ls")]
    List(StoreArgs),
    /// List the models a running server has loaded.
    Ps(ClientArgs),
    /// Show a model's details, template, metadata and RAM estimate.
    Show(ShowArgs),
    /// Unload a model from a running server.
    Stop(StopArgs),
    /// Download a model: an http(s) URL, hf://owner/repo/file.gguf, or a catalog name.
    Pull(PullArgs),
    /// Create a model from a Modelfile (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE).
    Create(CreateArgs),
    /// Copy a model to a new name (the weights are shared, not copied).
    #[command(alias = "copy")]
    Cp(CpArgs),
    /// Remove models from the store.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Work with the YAML config file.
    Config(ConfigArgs),
    /// Make an API key for `auth.keys` (printed once; the config keeps only its SHA-256).
    Key(KeyArgs),
    /// Measure a model's speed: prefill, decode, latency percentiles, throughput by concurrency.
    Bench(BenchArgs),
}

/// `hearth bench` (see src/bench/ for what each number means).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model name, or a path to a .gguf file (with --url: the name the server knows).
    pub model: String,
    /// Measure a running server (http://host:port) instead of loading the model here.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the API key to send (Authorization: Bearer).
    #[arg(long = "api-key", env = "HEARTH_API_KEY", hide_env_values = true, requires = "url")]
    pub api_key: Option<String>,
    /// With --url: the API to drive, Ollama's /api/generate or OpenAI's /v1/completions
    /// (which llama.cpp's llama-server also serves).
    #[arg(long, default_value = "ollama", value_parser = ["ollama", "openai"], requires = "url")]
    pub api: String,
    /// With --url: the server's process id, to report its peak RSS.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Concurrency levels of the sweep, comma-separated [default: 1,2,4,8,16; --quick: 1,2].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: Option<Vec<u32>>,
    /// Requests per concurrency level, at least the level [default: 8; --quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: Option<u32>,
    /// Tokens each sweep request generates [default: 64; --quick: 16].
    #[arg(long = "num-predict", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub num_predict: Option<u32>,
    /// Tokens the single-stream decode phase generates [default: 128; --quick: 32].
    #[arg(long = "decode-tokens", value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub decode_tokens: Option<u32>,
    /// Repetitions of the prefill and decode phases; rates are their medians [default: 3;
    /// --quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: Option<u32>,
    /// A few seconds' smoke run with small defaults (numbers are rough).
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a chart (throughput and latency by concurrency) to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Loading settings for the in-process run (ignored with --url); --parallel defaults to
    /// the highest concurrency level and --context-length to 2048.
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What to pull: https://host/file.gguf, hf://owner/repo/file.gguf, or a catalog name
    /// such as qwen2.5:0.5b.
    pub source: String,
    /// Name for the model [default: the file's name, or the catalog name].
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new model.
    pub name: String,
    /// The Modelfile.
    #[arg(short = 'f', long = "file", default_value = "Modelfile")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    pub source: String,
    pub destination: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Models to remove.
    #[arg(required = true, value_name = "MODEL")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Model to unload.
    pub model: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where models live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Models directory: hearth's manifests and blobs, and every NAME.gguf in it as the model
    /// NAME.
    #[arg(long = "models", env = "HEARTH_MODELS", value_name = "DIR")]
    pub models: Option<PathBuf>,
}

/// How models are loaded and run. Each is a flag, its `HEARTH_*` variable, the config file's
/// `engine` section, or the default, in that order.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineArgs {
    /// Sequences decoded together per model (parallel slots) [default: 4].
    #[arg(long, env = "HEARTH_NUM_PARALLEL", value_parser = clap::value_parser!(u32).range(crate::config::PARALLEL_RANGE))]
    pub parallel: Option<u32>,
    /// CPU threads for llama.cpp [default: physical cores].
    #[arg(long, env = "HEARTH_NUM_THREADS", value_parser = clap::value_parser!(i32).range(crate::config::THREADS_RANGE))]
    pub threads: Option<i32>,
    /// Default context length per request, in tokens, and the KV pool all of a model's slots
    /// share [default: 4096].
    #[arg(long = "context-length", env = "HEARTH_CONTEXT_LENGTH", value_parser = clap::value_parser!(u32).range(crate::config::CONTEXT_LENGTH_RANGE))]
    pub context_length: Option<u32>,
    /// Most tokens per decode step (prompt chunk size) [default: 512].
    #[arg(long = "batch-size", env = "HEARTH_BATCH_SIZE", value_parser = clap::value_parser!(u32).range(crate::config::BATCH_SIZE_RANGE))]
    pub batch_size: Option<u32>,
    /// How long an idle model stays loaded (e.g. 5m, 1h, 0, -1 for forever) [default: 5m].
    #[arg(long = "keep-alive", env = "HEARTH_KEEP_ALIVE", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,
    /// RAM all loaded models may use: bytes with a unit (6GiB, 512MB) or a percentage of the
    /// machine's (or cgroup's) memory [default: 80%].
    #[arg(long = "ram-budget", env = "HEARTH_RAM_BUDGET")]
    pub ram_budget: Option<String>,
    /// At most this many models loaded at once (0: the RAM budget alone decides) [default: 0].
    #[arg(long = "max-loaded-models", env = "HEARTH_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,
    /// Requests per model that may wait for a slot; more get 503 with Retry-After [default: 64].
    #[arg(long = "max-queue", env = "HEARTH_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Convert low-bit weights at load: none, or q8_0 (faster prefill and many-client decode on
    /// CPUs without a batched kernel for the file's type; slower one-stream decode, ~1.5x the
    /// weights' RAM) [default: none].
    #[arg(long = "convert-weights", env = "HEARTH_CONVERT_WEIGHTS", value_parser = crate::engine::convert::Weights::parse)]
    pub convert_weights: Option<crate::engine::convert::Weights>,
    /// Speculative decoding for one or two streams: lookup (guess the next tokens from the
    /// prompt and answer so far, keep those the model agrees with; answers are unchanged) or
    /// off [default: lookup].
    #[arg(long = "speculative", env = "HEARTH_SPECULATIVE", value_parser = crate::engine::lookup::parse_mode)]
    pub speculative: Option<bool>,
    /// Prefix reuse: exact (keep only what a fresh read of the prompt computes the same way, so a
    /// greedy answer does not depend on the cache; an answer's tokens are read again), fast
    /// (keep every cached token a prompt shares), or auto: exact unless the model has a sliding
    /// window [default: auto].
    #[arg(long = "prefix-reuse", env = "HEARTH_PREFIX_REUSE", value_parser = crate::engine::exact::Reuse::parse)]
    pub prefix_reuse: Option<crate::engine::exact::Reuse>,
    /// Disk that `serve` may fill with the KV caches of unloaded models' conversations, in the
    /// data directory, so they are warm when the model comes back or the server restarts
    /// (bytes with a unit; 0 turns it off) [default: 1GiB].
    #[arg(long = "disk-prefixes", env = "HEARTH_DISK_PREFIXES", value_name = "SIZE", value_parser = crate::config::file::scalar::parse_size)]
    pub disk_prefixes: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1, or the host part of HEARTH_HOST].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one) [default: 11434, or HEARTH_HOST's].
    #[arg(long)]
    pub port: Option<u16>,
    /// The YAML config file (see config/hearth.yaml); flags and environment override it.
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where conversations and profiles are kept [default: the per-user data dir; HEARTH_DATA].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Log format on stderr: text (readable) or json (one object per line) [default: text].
    #[arg(long = "log-format", env = "HEARTH_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Also log prompts and answers (off by default: they may be private).
    #[arg(long = "log-prompts", env = "HEARTH_LOG_PROMPTS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub log_prompts: bool,
    /// Listen beyond loopback with no API keys: anyone who can reach the address may generate,
    /// read conversations, and pull or delete models. Without keys, hearth refuses such a bind.
    #[arg(long = "insecure-no-auth", env = "HEARTH_INSECURE_NO_AUTH", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random key and the `auth.keys` entry that holds its SHA-256.
    New {
        /// The key's name (metrics and /api/usage show it).
        name: String,
        /// Comma-separated: generate, embed, models:read, models:write, metrics, admin.
        #[arg(long, value_delimiter = ',', default_value = "generate,embed,models:read")]
        scopes: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config file (with the environment's overrides) and print what it sets.
    Check {
        /// The YAML file.
        file: PathBuf,
    },
}

/// Ollama generation options as flags.
#[derive(Debug, Clone, Args)]
pub struct GenerationArgs {
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Most tokens to generate (-1: until done or the context is full).
    #[arg(long = "num-predict", allow_negative_numbers = true)]
    pub num_predict: Option<i64>,
    /// Context length for this run, in tokens.
    #[arg(long = "num-ctx", allow_negative_numbers = true)]
    pub num_ctx: Option<i64>,
    /// Any other Ollama option, e.g. --option top_k=20 --option stop=END (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub option: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model name, or a path to a .gguf file.
    pub model: String,
    /// The prompt; piped stdin is prepended to it.
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Print timings and token counts to stderr afterwards.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct StdioArgs {
    /// Model used by requests that name none (name or .gguf path).
    pub model: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address, as OLLAMA_HOST takes it [default: HEARTH_HOST, else 127.0.0.1:11434].
    #[arg(long)]
    pub host: Option<String>,
    /// The API key to send, for a server with keys (Authorization: Bearer).
    #[arg(long = "api-key", env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Model name, or a path to a .gguf file.
    pub model: String,
    /// Print the chat template only.
    #[arg(long)]
    pub template: bool,
    /// Print the full /api/show object as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Loading settings the RAM estimate is for.
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
