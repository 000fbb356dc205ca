//! The llama.cpp backend: hearth's own engine behind the seam. Estimates from the GGUF header
//! (every file passes hearth's validator first), loads through `engine::LoadedModel`, and turns
//! a job into tokens: the model's (or a Modelfile's) template renders the prompt, the oldest
//! droppable messages go until it fits with room for the answer, and the tokens go to the
//! model's worker.
//!
//! Rendering and tokenizing are CPU work proportional to the prompt: they run on a blocking
//! thread, never on the async workers.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Backend, EmbedInput, EmbedJob, Embedded, GenerateJob, ModelInstance, PromptSpec, Submitted, TextAnswer, TextWork};
use crate::spec::template::{render_request_template, TemplateMessage};
use crate::engine::disk_prefixes::{self, DiskPrefixConfig, DiskPrefixes};
use crate::engine::exact::Reuse;
use crate::engine::{EngineError, LoadSettings, LoadedModel};
use crate::store::gguf::{read_gguf_as, GgufKind};
use crate::store::ModelEntry;

/// Models run in this process, on llama.cpp. With `disk_prefixes`, what a model's slots hold
/// when it is unloaded is kept on disk for its next load.
#[derive(Debug, Default, Clone)]
pub struct LlamaCpp {
    pub disk_prefixes: Option<DiskPrefixConfig>,
}

/// The disk-prefix folder for `entry` loaded with `settings`: the weights by digest when the
/// store knows it, else by path, size and time (as `ModelEntry::same_load` tells instances
/// apart); the adapters likewise; the conversion, and whether prefix reuse is exact for it.
fn prefix_key(entry: &ModelEntry, settings: &LoadSettings, exact: bool) -> String {
    let weights = entry
        .digest
        .clone()
        .unwrap_or_else(|| format!("{}|{}|{:?}", entry.path.display(), entry.size, entry.modified));
    let adapters: Vec<String> = entry
        .defaults
        .adapters
        .iter()
        .map(|a| {
            let meta = std::fs::metadata(a).ok();
            format!("{}|{:?}|{:?}", a.display(), meta.as_ref().map(std::fs::Metadata::len), meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    // Exact reuse saves only KV computed as a fresh read computes it: a folder of its own.
    let computed = if exact { format!("{}|exact", settings.weights.as_str()) } else { settings.weights.as_str().to_string() };
    disk_prefixes::key(&weights, &adapters, &computed)
}

impl Backend for LlamaCpp {
    fn estimate(&self, entry: &ModelEntry, settings: &LoadSettings) -> Result<u64, String> {
        let info = read_gguf_as(&entry.path, GgufKind::Model).map_err(|e| e.to_string())?;
        let adapters = entry
            .defaults
            .adapters
            .iter()
            .try_fold(0u64, |sum, a| Ok::<_, String>(sum + read_gguf_as(a, GgufKind::Adapter).map_err(|e| e.to_string())?.file_size))?;
        Ok(crate::engine::estimate::estimate(&info, settings).total() + adapters)
    }

    fn embedding_estimate(&self, entry: &ModelEntry, settings: &LoadSettings) -> Result<u64, String> {
        let info = read_gguf_as(&entry.path, GgufKind::Model).map_err(|e| e.to_string())?;
        Ok(crate::engine::estimate::estimate(&info, settings).embedding)
    }

    fn load(&self, entry: &ModelEntry, mut settings: LoadSettings) -> Result<Arc<dyn ModelInstance>, EngineError> {
        let info = read_gguf_as(&entry.path, GgufKind::Model).map_err(|e| EngineError::Load { path: entry.path.display().to_string(), reason: e.to_string() })?;
        // `auto` prefix reuse becomes exact or fast for this model.
        let exact = settings.prefix_reuse.exact_for(info.arch_u64("attention.sliding_window").unwrap_or(0));
        settings.prefix_reuse = if exact { Reuse::Exact } else { Reuse::Fast };
        let disk = self.disk_prefixes.clone().map(|c| DiskPrefixes::open(c, &prefix_key(entry, &settings, exact)));
        let model = LoadedModel::load(&entry.path, &info, &entry.defaults.adapters, settings, disk)?;
        Ok(Arc::new(LlamaInstance(model)))
    }
}

/// A model loaded by llama.cpp with its worker thread.
#[derive(Debug)]
pub struct LlamaInstance(LoadedModel);

impl ModelInstance for LlamaInstance {
    fn n_ctx_slot(&self) -> u32 {
        self.0.n_ctx_slot
    }

    fn parallel(&self) -> u32 {
        self.0.settings.parallel
    }

    fn load_duration(&self) -> Duration {
        self.0.load_duration
    }

    fn is_alive(&self) -> bool {
        self.0.is_alive()
    }

    fn n_embd(&self) -> usize {
        self.0.n_embd()
    }

    fn generate(self: Arc<Self>, job: GenerateJob) -> BoxFuture<'static, Result<Submitted, EngineError>> {
        async move {
            tokio::task::spawn_blocking(move || {
                let (tokens, dropped_messages) = self.prompt_tokens(&job)?;
                let events = self.0.submit(tokens, job.options)?;
                Ok(Submitted { events, dropped_messages, answered_by: None })
            })
            .await
            .map_err(|e| EngineError::Task(format!("prompt task failed: {e}")))?
        }
        .boxed()
    }

    fn embed(self: Arc<Self>, job: EmbedJob) -> BoxFuture<'static, Result<Embedded, EngineError>> {
        async move {
            let me = Arc::clone(&self);
            let tokens = tokio::task::spawn_blocking(move || {
                let EmbedJob { inputs, truncate, limit } = job;
                inputs
                    .into_iter()
                    .map(|input| {
                        let mut tokens = match input {
                            EmbedInput::Text(text) => me.0.tokenize(&text),
                            EmbedInput::Tokens(tokens) => tokens,
                        };
                        if tokens.len() > limit as usize {
                            if !truncate {
                                return Err(EngineError::InputTooLong { tokens: tokens.len(), num_ctx: limit });
                            }
                            me.0.truncate_input(&mut tokens, limit as usize);
                        }
                        Ok(tokens)
                    })
                    .collect::<Result<Vec<_>, EngineError>>()
            })
            .await
            .map_err(|e| EngineError::Task(format!("tokenize task failed: {e}")))??;
            let prompt_tokens = tokens.iter().map(Vec::len).sum();
            let vectors = self.0.embed(tokens)?.await.map_err(|_| EngineError::WorkerGone)??;
            Ok(Embedded { vectors, prompt_tokens })
        }
        .boxed()
    }

    fn text(self: Arc<Self>, work: TextWork) -> BoxFuture<'static, Result<TextAnswer, EngineError>> {
        async move {
            tokio::task::spawn_blocking(move || {
                let model = &self.0;
                Ok(match work {
                    TextWork::Tokenize { text, add_special, parse_special } => {
                        let ids = model.tokenize_with(&text, add_special, parse_special);
                        TextAnswer::Tokens(ids.into_iter().map(|t| Ok((t, model.piece(t)?))).collect::<Result<_, EngineError>>()?)
                    }
                    TextWork::Detokenize(tokens) => {
                        let mut bytes = Vec::new();
                        for t in tokens {
                            bytes.extend(model.piece(t)?);
                        }
                        TextAnswer::Text(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    TextWork::Render(job) => {
                        let messages = match &job.prompt {
                            PromptSpec::Chat { messages, .. } => messages.clone(),
                            PromptSpec::Generate { .. } => Vec::new(),
                        };
                        let (text, context) = self.render(&job, &messages)?;
                        TextAnswer::Prompt { tokens: context + model.tokenize(&text).len(), text }
                    }
                })
            })
            .await
            .map_err(|e| EngineError::Task(format!("tokenizer task failed: {e}")))?
        }
        .boxed()
    }
}

impl LlamaInstance {
    /// Renders the job's prompt with the model's templates (a Modelfile's TEMPLATE and SYSTEM
    /// apply) and tokenizes it, leaving out the oldest droppable messages until it fits the
    /// context with room for the answer. Returns the tokens and how many messages went.
    fn prompt_tokens(&self, job: &GenerateJob) -> Result<(Vec<i32>, usize), EngineError> {
        let model = &self.0;
        let limit = job.options.num_ctx.min(model.n_ctx_slot) as usize;
        let reserve = super::answer_reserve(&job.options, limit);
        let (mut tokens, dropped) = match &job.prompt {
            PromptSpec::Generate { context, .. } => {
                let mut tokens = context.clone();
                tokens.extend(model.tokenize(&self.render(job, &[])?.0));
                (tokens, 0)
            }
            PromptSpec::Chat { messages, .. } => {
                let mut messages = messages.clone();
                // `truncate`: every message but the system prompt and the last may go, oldest
                // first, not only a conversation's history.
                let droppable = match job.options.truncate {
                    true => messages.iter().take_while(|m| m.role == "system").count()..messages.len().saturating_sub(1),
                    false => job.droppable.clone(),
                };
                let mut tokens = Vec::new();
                let dropped = super::trim_history(&mut messages, droppable, |m| {
                    tokens = model.tokenize(&self.render(job, m)?.0);
                    Ok::<_, EngineError>(tokens.len() + reserve <= limit)
                })?;
                (tokens, dropped)
            }
        };
        if job.options.truncate && tokens.len() + reserve > limit {
            // Still too long: cut tokens from the front, after the first (the BOS, usually).
            let cut = tokens.len() + reserve - limit;
            tokens.drain(1..=cut.min(tokens.len() - 1));
        }
        Ok((tokens, dropped))
    }

    /// The job's prompt as text, for these chat `messages` (a chat's, less any left out), and
    /// how many `context` tokens go before it (a generate request's).
    fn render(&self, job: &GenerateJob, messages: &[TemplateMessage]) -> Result<(String, usize), EngineError> {
        Ok(match &job.prompt {
            PromptSpec::Generate { prompt, system, template, raw, context } => {
                let text = if *raw {
                    prompt.clone()
                } else if let Some(t) = template {
                    render_request_template(t, system.as_deref().unwrap_or(""), prompt)?
                } else {
                    let mut messages = Vec::new();
                    if let Some(s) = system {
                        messages.push(TemplateMessage { role: "system".into(), content: s.clone() });
                    }
                    messages.push(TemplateMessage { role: "user".into(), content: prompt.clone() });
                    self.render_chat(job, messages, &[])?
                };
                (text, context.len())
            }
            PromptSpec::Chat { tools, .. } => (self.render_chat(job, messages.to_vec(), tools)?, 0),
        })
    }

    fn render_chat(&self, job: &GenerateJob, mut messages: Vec<TemplateMessage>, tools: &[serde_json::Value]) -> Result<String, EngineError> {
        let model = &self.0;
        if let Some(system) = &job.model_system {
            if !messages.iter().any(|m| m.role == "system") {
                messages.insert(0, TemplateMessage { role: "system".into(), content: system.clone() });
            }
        }
        match &job.model_template {
            _ if !tools.is_empty() => model.render_chat_tools(&messages, tools, job.model_template.as_deref()),
            Some(t) => model.render_chat_with(t, &messages),
            None => model.render_chat(&messages, true),
        }
    }
}
