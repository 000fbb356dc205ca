//! hearth: a CPU-first local LLM runtime. GGUF models run through llama.cpp and are served over
//! Ollama's HTTP API, the command line and stdio.
//!
//! The code map, in the order a request travels:
//!
//! - `cli`        clap structures only; `commands/` holds one file per subcommand.
//! - `config`     flags, environment and the YAML file (`file`) -> validated settings once:
//!                `serve::ServeConfig` for the server, `engine::EngineConfig` (each engine
//!                setting's one default) for every command that runs models.
//! - `api`        wire formats and routes: `ollama` (requests -> `ValidRequest`, responses),
//!                `openai` (the /v1 routes, stored Responses, OpenAI's error shape),
//!                `anthropic` (/v1/messages and Anthropic's error shape), `tokens` (tokenize,
//!                detokenize, apply-template), `tools` (tool definitions,
//!                formats, reading calls back), `embed` (Ollama's embedding routes),
//!                `models` (tags/show/ps objects), `store` (pull/create/copy/delete/blobs),
//!                `layer` (health, metrics, cache, templates, conversations, reload),
//!                `routing` (routes' state, feedback), `seed` (the seeds' routes), `observe` (request ids, request logs and metrics),
//!                `guard` (browser origins, CORS, loopback host names), `auth` (API keys,
//!                scopes, rate limits), `ui` (the web page's files, built in),
//!                `listen` (the accept loop: header timeout, connection
//!                cap, graceful shutdown), `lifecycle` (reload, and ending streams at
//!                shutdown), `error` (the one error -> status table).
//! - `service`    the shared request path (`Service::start`, `Service::embed`): persona, prompt
//!                template and conversation history (`history`, `catalog`), response-cache
//!                lookup, admission, resolve, lease, generate; `answer` forwards the backend's
//!                events (or replays a cached answer) and records the finished answer; `reply`
//!                reads them once for every front end (text, a tool call held back, done or
//!                failed); `route` tries a route's targets one after another and watches
//!                the answer for the target's breaker and counts; `embed` is the embedding
//!                path; `tokens` tokenizes and renders on a local model without generating;
//!                `score` is /validate-model's decode measurement; `accounts` is
//!                an API key's scopes, limits and usage; `shared_limits` the same limits
//!                counted in Redis, for several fronts.
//! - `routing`    providers and routes: the table (swapped whole on reload), which backend a
//!                name means (`provider/model`), a route's plan (fallback order, a split's
//!                sticky pick), breakers, counts, cost and feedback, the providers' upkeep.
//! - `cache`      the response cache: bytes under hashed keys, in memory or in Redis.
//! - `conversations` server-side conversations in SQLite (WAL), or in PostgreSQL shared by
//!                several servers (`postgres`, with each API key's usage), one turn at a time
//!                per id (across servers on PostgreSQL); the Responses API's stored responses
//!                (`responses`), routes' attributions and feedback, and on PostgreSQL the
//!                profiles (`shared`), in the same database.
//! - `metrics`    the Prometheus registry and its JSON view with percentiles.
//! - `prompts`    named prompt templates with `{variable}` placeholders.
//! - `bench`      `hearth bench`: prefill/decode speed, latency percentiles, throughput.
//! - `resources`  the resource manager: RAM budget, LRU eviction of idle models, leases,
//!                keep-alive unloads, per-model queue bound, load reservations and deadlines,
//!                dead instances dropped. Holds models only as `backend::ModelInstance`.
//! - `backend`    the seam: `Backend` (estimate, load) and `ModelInstance` (generate from an
//!                assembled prompt, embed, tokenize and render), with typed `Event`s back. `llama` is llama.cpp
//!                behind it (render, trim history, tokenize, submit); `remote` is another
//!                server behind it (a provider: Ollama's, OpenAI's or Anthropic's API), or
//!                a fleet of hearth nodes picked per request (`remote::fleet`, its prefix
//!                owners in memory and Redis: `fleet::owners`); `breaker`
//!                is the circuit breaker routes and fleets share;
//!                `fake` is a deterministic stand-in for the tests of the layers above
//!                (`cfg(test)`).
//! - `engine`     the only module that touches llama.cpp: one worker thread per loaded model
//!                with continuous batching over one shared KV pool and embeddings (`worker`,
//!                `embed`), what slots keep cached and the saved prefixes (`slot_cache`,
//!                `prefix`; `exact` for reuse a fresh read agrees with bit for bit),
//!                speculative decoding's guesses from the context (`lookup`),
//!                decodes stopped when their client leaves (`abort`), sampling with
//!                grammars and logprobs (`sampler`), a JSON answer's wrap-up near its
//!                budget (`wrapup`), JSON schemas and tool calls as grammars
//!                (`grammar`), streamed-text handling (`text`), RAM estimates from GGUF metadata
//!                (`estimate`), the CPU kernels chosen for this machine and loaded from memory
//!                (`cpu`, with the variant table build.rs shares).
//! - `store`      model names -> manifests over content-addressed blobs, drop-in `NAME.gguf`
//!                files and Ollama's store (read-only), names resolved once per version
//!                of their files (`resolved`); `pull` (resumable downloads) and
//!                `reach` (which addresses a network-asked pull may connect to),
//!                `modelfile` (create), `gguf` (the validator every file passes first).
//! - `spec`       what a generation asks for, as values: Ollama's options as typed patches
//!                (`OptionPatch`: model < persona < request, resolved once to
//!                `SamplingOptions`), chat and request templates. No llama.cpp, no I/O.
//!
//! Layers point down: api -> service -> (routing, resources) -> backend -> engine -> store ->
//! spec. A layer
//! may use any layer below it (the API builds `engine::grammar` values, the service reads
//! `store` entries), never one above. `cache`, `conversations`, `metrics` and `prompts` are
//! leaves: the service uses them, `routing` keeps feedback in `conversations`, and a fleet
//! shares its prefix owners through `cache`'s Redis connection; `config` and `api` are edges that turn outside input into the
//! types below them; `bench` and `commands` sit on top.

//! The library's public surface is what the binary and the integration tests use (`cli`,
//! `commands`, and `service` and `store` for the decode-score test); every other module is
//! `pub(crate)`, so the compiler reports what nothing uses.
//!
//! Invariants, written as absences:
//! - Nothing outside `engine` imports `llama_cpp_2`, and no async task ever runs a decode.
//! - No instruction above the x86-64 (or ARMv8.0) baseline runs before `engine::cpu` has chosen
//!   the kernels this CPU can run; the binary is built for the baseline, the kernels are modules.
//! - Nothing above `backend` knows which backend produced a token: `resources` and `service`
//!   hold `dyn ModelInstance`, and the tests run them on the fake.
//! - Nothing outside `api` defines a wire struct, and nothing outside `api` and
//!   `backend::remote` (which speaks other servers' APIs, as `serde_json::Value`s) knows a wire
//!   format; the core takes only validated types. The one
//!   shared parser is `spec::options`'s private shape of Ollama's `options` object, which the
//!   API, the config file, stored profiles and Modelfiles all turn into an `OptionPatch`.
//! - No `serde_json::Value` travels between the API and the backend except JSON that is data:
//!   a tool's parameter schema, the tools offered to a chat template, a tool call's arguments.
//! - Every front end reads a generation through `service::reply`, once: the tool-call
//!   hold-back exists in one place.
//! - Nothing writes to stdout but the commands, which own it (`stdio` carries the protocol).
//! - No name or digest from outside becomes a path before `store` has validated it, and no
//!   model appears in the store before its file is complete, verified and validated.
//! - A model with a live `ModelLease` is never unloaded.
//! - Nothing is cached or appended to a conversation from an answer that did not finish.
//! - No prompt or answer text is logged unless `--log-prompts` asks for it.
//! - No request from a web page outside the origin allow list, and no request naming a foreign
//!   host on a loopback bind, reaches a handler.
//! - No model is loaded unless its estimate fits the RAM budget next to what is loaded or still
//!   being freed.
//! - Once keys are configured, no request but `/health`, the page's static files (`/ui`) and a
//!   browser's `GET /` (a redirect to them) reaches a handler without a valid key
//!   holding the route's scope; no key is stored or logged, only its SHA-256.
//! - No pull asked over the network connects to a loopback, private, link-local or reserved
//!   address outside `pull.allow`.
//! - No answer keeps working for a client that left: the engine drops it at its next step,
//!   and a provider's request is dropped with it.
//! - No provider's API key is written in the config file, logged or shown: it is read from the
//!   environment variable the file names and only sent in its request header.
//! - No request is retried on another target (or a fleet's node) once its answer has started
//!   reaching the client.

// The code map above aligns its descriptions in a column.
#![allow(clippy::doc_overindented_list_items)]

pub(crate) mod api;
pub(crate) mod backend;
pub(crate) mod bench;
pub(crate) mod cache;
pub mod cli;
pub mod commands;
pub(crate) mod config;
pub(crate) mod conversations;
pub(crate) mod engine;
pub(crate) mod metrics;
pub(crate) mod prompts;
pub(crate) mod resources;
pub(crate) mod routing;
pub mod service;
pub(crate) mod spec;
pub mod store;

/// hearth's version, as `/api/version` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Version with the git commit it was built from.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HEARTH_GIT_HASH"), ")");

/// `hearth --version`'s second line: the CPU kernels this machine gets and the features seen.
pub fn cpu_description() -> String {
    engine::cpu::describe()
}

/// Sets how llama.cpp's OpenMP threads wait, starting the process again if it must: call in
/// `main` before any thread starts (`engine::cpu::openmp`).
pub fn ensure_openmp_wait_policy() {
    engine::cpu::openmp::ensure_wait_policy();
}
