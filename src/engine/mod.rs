//! The engine: the only module that imports `llama_cpp_2`.
//!
//! Each loaded model gets one dedicated OS thread (`worker`) that owns its llama.cpp context and
//! decodes every active sequence together in one batch per step. Async code talks to it over
//! channels and never blocks on a decode. A `LoadedModel` is the handle: dropping the last one
//! closes the job channel, the worker finishes what it has in flight, and the model is freed.

mod abort;
pub mod convert;
pub mod cpu;
pub mod disk_prefixes;
pub mod embed;
pub mod estimate;
pub mod exact;
pub mod prefix;
mod sampler;
pub mod grammar;
pub mod lookup;
mod pages;
mod sequence;
mod slot_cache;
pub mod text;
mod worker;
mod wrapup;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use crate::spec::options::SamplingOptions;
use crate::spec::template::{self, ChatTemplate, TemplateError, TemplateMessage};
use crate::store::gguf::GgufInfo;

/// How a model instance is set up when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSettings {
    /// Context per parallel slot, in tokens (clamped to the model's training context).
    pub num_ctx: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// Threads for single-token decode steps.
    pub threads: i32,
    /// Threads for prompt batches.
    pub threads_batch: i32,
    /// Most tokens put into one decode step.
    pub batch_size: u32,
    /// How the weights are held in memory (`convert`).
    pub weights: convert::Weights,
    /// Whether few-stream decoding guesses ahead from the context (`lookup`).
    pub speculative: bool,
    /// How a cached prefix is reused (`exact`): exactly, a prefix kept only as far as a fresh
    /// prefill would compute the same KV, or fast.
    pub prefix_reuse: exact::Reuse,
    /// The most the prefix store may hold, from the RAM budget (`prefix::prefix_store_bytes`
    /// also caps it by the KV cache's size).
    pub prefix_store_limit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("llama.cpp backend failed to start: {0}")]
    Backend(String),
    #[error("failed to load model from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("prompt is too long: {prompt_tokens} tokens, but the context holds {num_ctx} (raise num_ctx, shorten the prompt, or send truncate: true)")]
    PromptTooLong { prompt_tokens: usize, num_ctx: u32 },
    #[error("input length exceeds the context length: {tokens} tokens, but the context holds {num_ctx} (raise num_ctx, shorten the input, or set truncate to true)")]
    InputTooLong { tokens: usize, num_ctx: u32 },
    #[error("input {0} is empty: it has no tokens to embed")]
    EmptyInput(usize),
    #[error("dimensions must be between 1 and {n_embd} for this model, got {requested}")]
    Dimensions { requested: usize, n_embd: usize },
    #[error("{0}")]
    EmbedContext(String),
    #[error("token id {0} is not in this model's vocabulary")]
    InvalidToken(i32),
    #[error("the model's worker has stopped")]
    WorkerGone,
    #[error("internal error: {0}")]
    Task(String),
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("sampling failed: {0}")]
    Sampling(String),
    #[error("the request ran past its time limit of {0:?} (request_timeout, REQUEST_TIMEOUT)")]
    TimedOut(std::time::Duration),
    /// Another server (a provider) refused or failed the request. `status` is what hearth
    /// answers: the upstream's own 4xx, 429 when it is at its limit, 502 when it could not be
    /// reached or failed, 504 when it did not answer in time.
    #[error("{target}: {message}")]
    Upstream { target: String, status: u16, message: String },
    /// The request asks for something the provider's API cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The answer was generated but its conversation turn could not be stored (the database
    /// is down): the client is told, rather than shown an answer its history will not have.
    #[error("the answer was not stored in the conversation: {0}")]
    NotStored(String),
}

impl EngineError {
    /// Whether another target may succeed where this one failed: the target could not be
    /// reached, failed, was too slow to start, or was at its limit; not when the request
    /// itself is at fault.
    pub fn is_target_failure(&self) -> bool {
        match self {
            EngineError::Upstream { status, .. } => *status >= 500 || *status == 429,
            EngineError::Backend(_) | EngineError::WorkerGone | EngineError::Task(_) | EngineError::Decode(_) | EngineError::Load { .. } => true,
            _ => false,
        }
    }
}

/// Why a generation ended, with Ollama's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    Stop,
    Length,
}

impl DoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

/// The final accounting of one generation.
#[derive(Debug, Clone)]
pub struct Completion {
    pub reason: DoneReason,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was reused from an earlier request (not evaluated again).
    pub cached_tokens: u32,
    pub prompt_eval: Duration,
    pub eval_tokens: u32,
    pub eval: Duration,
    /// The whole token sequence (prompt + output), Ollama's `context`.
    pub context: Vec<i32>,
    /// The stop sequence that ended the answer, when one did (Anthropic's `stop_sequence`).
    pub stop_sequence: Option<String>,
    /// Tokens guessed ahead by speculative decoding, and how many of them held.
    pub draft_tokens: u32,
    pub draft_accepted: u32,
}

/// One output token's log-probability, and the most likely alternatives with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(Vec<u8>, f32)>,
}

/// What the worker sends back for one request, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    /// Sent before a token's text when the request asked for log-probabilities.
    Logprob(TokenLogprob),
    Done(Completion),
    Failed(EngineError),
}

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own logging goes to tracing (target llama-cpp-2), filtered like ours.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            // The CPU kernels are not linked in: the best build for this CPU is loaded first.
            let variant = cpu::load()?;
            tracing::info!(variant, features = %cpu::features().join(","), "CPU kernels loaded");
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// A model resident in memory with its worker thread.
pub struct LoadedModel {
    model: Arc<LlamaModel>,
    /// `None` only while dropping.
    jobs: Option<std_mpsc::Sender<worker::Work>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Set by the worker as it unwinds from a panic.
    dead: Arc<std::sync::atomic::AtomicBool>,
    template: ChatTemplate,
    bos_text: Option<String>,
    eos_text: String,
    /// Context per slot actually allocated.
    pub n_ctx_slot: u32,
    pub settings: LoadSettings,
    pub load_duration: Duration,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("n_ctx_slot", &self.n_ctx_slot)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for LoadedModel {
    /// Closes the job channel and waits for the worker to finish its requests and free the
    /// context, so that when this returns the instance's memory is released.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        // A model's buffers come and go in hundreds of MiB; hand the freed heap back to the
        // system now rather than let the allocator's arenas keep it (RSS is what the budget
        // is checked against).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory at the top of glibc's arenas.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The converted copy of the model `settings.weights` asks for, or `None` to load the file as
/// it is (no conversion asked, or nothing in this model to convert).
fn convert_if_asked(path: &Path, info: &GgufInfo, settings: &LoadSettings) -> Result<Option<convert::Converted>, String> {
    if !convert::worth_converting(info, settings.weights) {
        return Ok(None);
    }
    let started = Instant::now();
    let converted = convert::convert(path, info, settings.threads_batch)?;
    tracing::info!(weights = settings.weights.as_str(), elapsed_ms = started.elapsed().as_millis() as u64, "converted the weights");
    Ok(Some(converted))
}

impl LoadedModel {
    /// Loads the GGUF at `path` (whose validated header is `info`) and starts its worker.
    /// Blocking: call from a blocking thread. `adapters` (at most one LoRA, applied at scale 1)
    /// must already be validated GGUF files. `disk` holds the prefixes earlier loads saved, and
    /// takes this one's when it ends.
    pub fn load(path: &Path, info: &GgufInfo, adapters: &[std::path::PathBuf], settings: LoadSettings, disk: Option<disk_prefixes::DiskPrefixes>) -> Result<LoadedModel, EngineError> {
        let started = Instant::now();
        let backend = backend()?;
        let load_err = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        let params = LlamaModelParams::default().with_n_gpu_layers(0);
        // With a conversion, the model is loaded from the converted in-memory copy, which stays
        // mapped by the model after `converted` closes its descriptor.
        let converted = convert_if_asked(path, info, &settings).map_err(load_err)?;
        let source = converted.as_ref().map_or_else(|| path.to_path_buf(), convert::Converted::path);
        let mut model = LlamaModel::load_from_file(backend, &source, &params)
            .map_err(|e| load_err(format!("{e} (llama.cpp could not read it; see the log)")))?;
        // The pages of weights copied at load (repacked) are not read again: not kept resident.
        // A converted copy has its own layout.
        let spans = match &converted {
            None => info.tensor_spans(),
            Some(_) => crate::store::gguf::read_gguf(&source).map(|c| c.tensor_spans()).unwrap_or_default(),
        };
        match pages::release(&source, &spans) {
            Ok(bytes) => tracing::debug!(mib = bytes >> 20, "handed back the model file's mapped pages"),
            Err(e) => tracing::warn!(error = %e, "could not hand back the model file's mapped pages"),
        }
        drop(converted);
        let adapter = match adapters {
            [] => None,
            [a] => Some(model.lora_adapter_init(a).map_err(|e| {
                load_err(format!("adapter {} does not fit this model: {e}", a.display()))
            })?),
            _ => return Err(load_err("hearth applies at most one adapter per model".to_string())),
        };
        let model = Arc::new(model);

        let vocab = model.vocab();
        let piece = |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let bos_text = (vocab.bos().0 >= 0).then(|| piece(vocab.bos()));
        let eos_text = if vocab.eos().0 >= 0 { piece(vocab.eos()) } else { String::new() };
        let arch = model.meta_val_str("general.architecture").unwrap_or_default();
        let source = model
            .meta_val_str("tokenizer.chat_template")
            .unwrap_or_else(|_| template::fallback_template(&arch).to_string());
        let template = ChatTemplate::new(&source, bos_text.as_deref().unwrap_or(""), &eos_text)?;

        let mut settings = settings;
        settings.num_ctx = settings.num_ctx.min(model.n_ctx_train().max(1));
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let (jobs_tx, jobs_rx) = std_mpsc::channel();
        let worker_model = Arc::clone(&model);
        let worker_settings = settings.clone();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker_dead = Arc::clone(&dead);
        let worker = std::thread::Builder::new()
            .name("hearth-model".to_string())
            .spawn(move || worker::run(&worker_model, worker::Extras { adapter, disk }, backend, &worker_settings, jobs_rx, ready_tx, &worker_dead))
            .map_err(|e| load_err(format!("cannot start worker thread: {e}")))?;
        let n_ctx_slot = ready_rx
            .recv()
            .map_err(|_| EngineError::WorkerGone)?
            .map_err(load_err)?;
        Ok(LoadedModel {
            model,
            jobs: Some(jobs_tx),
            worker: Some(worker),
            dead,
            template,
            bos_text,
            eos_text,
            n_ctx_slot,
            settings,
            load_duration: started.elapsed(),
        })
    }

    /// Renders a conversation with the model's chat template (or the fallback).
    pub fn render_chat(&self, messages: &[TemplateMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        Ok(self.template.render(messages, add_generation_prompt)?)
    }

    /// Renders a conversation that offers `tools` (OpenAI-style function objects): through the
    /// chat template when it renders tools itself, else with hearth's tool prompt added to the
    /// system message (`template::tool_prompt`).
    pub fn render_chat_tools(&self, messages: &[TemplateMessage], tools: &[serde_json::Value], override_template: Option<&str>) -> Result<String, EngineError> {
        if override_template.is_none() && self.template.knows_tools() {
            return Ok(self.template.render_with_tools(messages, tools, true)?);
        }
        let mut messages = messages.to_vec();
        let prompt = template::tool_prompt(tools);
        match messages.iter_mut().find(|m| m.role == "system") {
            Some(system) => system.content = format!("{}\n\n{prompt}", system.content),
            None => messages.insert(0, TemplateMessage { role: "system".into(), content: prompt }),
        }
        match override_template {
            Some(t) => self.render_chat_with(t, &messages),
            None => self.render_chat(&messages, true),
        }
    }

    /// Renders a conversation with a template that replaces the model's (a Modelfile's).
    pub fn render_chat_with(&self, source: &str, messages: &[TemplateMessage]) -> Result<String, EngineError> {
        Ok(template::render_override(source, messages, self.bos_text.as_deref().unwrap_or(""), &self.eos_text)?)
    }

    /// Tokenizes a rendered prompt. Special tokens in the text are parsed; BOS is added when the
    /// model wants one and the text does not already start with it (templates often emit it).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        let has_bos = self.bos_text.as_deref().is_some_and(|b| !b.is_empty() && text.starts_with(b));
        self.model
            .vocab()
            .tokenize(text.as_bytes(), !has_bos, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Tokenizes text as asked: with or without BOS (and the model's other added tokens), and
    /// with special tokens parsed or read as plain text.
    pub fn tokenize_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), add_special, parse_special).into_iter().map(|t| t.0).collect()
    }

    /// The bytes of one token, special tokens written out; fails on an id outside the vocabulary.
    pub fn piece(&self, token: i32) -> Result<Vec<u8>, EngineError> {
        if token < 0 || token >= self.model.n_vocab() {
            return Err(EngineError::InvalidToken(token));
        }
        Ok(self.model.vocab().token_to_piece(LlamaToken(token), true, None))
    }

    /// Queues a generation. Fails at once, before any output, if the prompt can't fit.
    pub fn submit(&self, prompt: Vec<i32>, options: SamplingOptions) -> Result<mpsc::UnboundedReceiver<Event>, EngineError> {
        let num_ctx = options.num_ctx.min(self.n_ctx_slot);
        if prompt.len() >= num_ctx as usize {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                num_ctx,
            });
        }
        let n_vocab = self.model.n_vocab();
        if let Some(&bad) = prompt.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(EngineError::InvalidToken(bad));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let job = worker::Job {
            prompt: prompt.into_iter().map(LlamaToken).collect(),
            options,
            events: tx,
        };
        self.send(worker::Work::Generate(job))?;
        Ok(rx)
    }

    fn send(&self, work: worker::Work) -> Result<(), EngineError> {
        self.jobs
            .as_ref()
            .ok_or(EngineError::WorkerGone)?
            .send(work)
            .map_err(|_| EngineError::WorkerGone)
    }

    /// Whether the worker thread still runs. It only ends when the handle is dropped, so a
    /// finished worker here has died (a panic in llama.cpp's or hearth's code on that thread).
    pub fn is_alive(&self) -> bool {
        !self.dead.load(std::sync::atomic::Ordering::SeqCst) && self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Width of the vectors `embed` returns.
    pub fn n_embd(&self) -> usize {
        usize::try_from(self.model.n_embd_out()).unwrap_or(0)
    }

    /// Cuts an embedding input to `limit` tokens, keeping an end-of-sequence token the
    /// tokenizer appended (BERT-style `[SEP]`) at the end.
    pub fn truncate_input(&self, tokens: &mut Vec<i32>, limit: usize) {
        if tokens.len() <= limit {
            return;
        }
        let vocab = self.model.vocab();
        let last = tokens.last().copied();
        let appended = (vocab.should_add_eos() && last == Some(vocab.eos().0))
            || (vocab.should_add_sep() && last == Some(vocab.sep().0));
        tokens.truncate(limit);
        if let (true, Some(last), Some(end)) = (appended && limit > 1, last, tokens.last_mut()) {
            *end = last;
        }
    }

    /// Queues inputs (already truncated to at most `n_ctx_slot` tokens) to be embedded by the
    /// worker, batched together where they fit. The answer holds one pooled vector per input,
    /// in order, not normalized. Fails at once for an empty, too long or out-of-vocabulary input.
    pub fn embed(&self, inputs: Vec<Vec<i32>>) -> Result<oneshot::Receiver<embed::EmbedReply>, EngineError> {
        let n_vocab = self.model.n_vocab();
        for (i, input) in inputs.iter().enumerate() {
            if input.is_empty() {
                return Err(EngineError::EmptyInput(i));
            }
            if input.len() > self.n_ctx_slot as usize {
                return Err(EngineError::InputTooLong { tokens: input.len(), num_ctx: self.n_ctx_slot });
            }
            if let Some(&bad) = input.iter().find(|&&t| t < 0 || t >= n_vocab) {
                return Err(EngineError::InvalidToken(bad));
            }
        }
        let (tx, rx) = oneshot::channel();
        let job = embed::EmbedJob {
            inputs: inputs.into_iter().map(|i| i.into_iter().map(LlamaToken).collect()).collect(),
            reply: tx,
        };
        self.send(worker::Work::Embed(job))?;
        Ok(rx)
    }
}
