//! A deterministic backend for the tests of the layers above the engine (service, resource
//! manager, HTTP router): no model files, no llama.cpp. Only under `cfg(test)`; the real tests
//! run the real binary on real models.
//!
//! What it does, exactly:
//! - A prompt is "tokenized" as its whitespace-separated words: a chat renders as one
//!   `role: content` line per message (the model's system prompt first when the chat has none),
//!   a generate prompt as its system line and prompt. The droppable history is trimmed like
//!   the real backend's, oldest first, until the words fit with room for the answer.
//! - The answer is `num_predict` tokens (8 when unlimited), token `i` being `"t{i} "`, one
//!   every `token_delay` (tokio time, so paused-time tests run instantly); the done reason is
//!   `length` for a set limit, `stop` otherwise.
//! - `estimate` is the model's entry in `bytes` (else `default_bytes`), `embedding_estimate`
//!   is `embedding_bytes`; `load` takes
//!   `load_delay` (real time: it runs on a blocking thread), waits while a `LoadGate` holds the
//!   model, and fails for names in `failing_loads`.
//! - `kill(name)` makes that model's live instances die as a panicking worker would: their
//!   generations end without a final event and `is_alive` turns false.
//! - An embedding is `[words, 1, 0, ...]` of width `n_embd`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc::unbounded_channel;

use super::{Backend, Completion, EmbedInput, EmbedJob, Embedded, EngineError, Event, GenerateJob, LoadSettings, ModelInstance, PromptSpec, Submitted};
use crate::engine::DoneReason;
use crate::spec::options::PredictLimit;
use crate::spec::template::TemplateMessage;
use crate::store::ModelEntry;

/// What the fake does; change it between requests through `FakeBackend::settings`.
#[derive(Debug, Clone)]
pub struct FakeSettings {
    /// Bytes an instance takes, by model name; others take `default_bytes`.
    pub bytes: HashMap<String, u64>,
    pub default_bytes: u64,
    /// Bytes an instance's embedding context adds on its first embed request.
    pub embedding_bytes: u64,
    pub load_delay: Duration,
    pub token_delay: Duration,
    /// Model names whose load fails.
    pub failing_loads: HashSet<String>,
    /// Context per slot (clamped to the load's `num_ctx`).
    pub n_ctx_slot: u32,
    pub n_embd: usize,
}

impl Default for FakeSettings {
    fn default() -> Self {
        FakeSettings {
            bytes: HashMap::new(),
            default_bytes: 100 << 20,
            embedding_bytes: 10 << 20,
            load_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            failing_loads: HashSet::new(),
            n_ctx_slot: 4096,
            n_embd: 8,
        }
    }
}

#[derive(Default)]
struct Shared {
    settings: Mutex<FakeSettings>,
    /// Model names whose loads wait until their `LoadGate` is dropped.
    held: Mutex<HashSet<String>>,
    released: Condvar,
    loads: AtomicUsize,
    generations: AtomicUsize,
    /// Tokens sent so far, over every generation.
    tokens_sent: AtomicUsize,
    live: Mutex<Vec<(String, Weak<FakeInstance>)>>,
}

/// The fake backend: a cheap-to-clone handle, kept by the test to steer and observe it.
#[derive(Clone, Default)]
pub struct FakeBackend {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeBackend {
    pub fn new(settings: FakeSettings) -> FakeBackend {
        let b = FakeBackend::default();
        *lock(&b.shared.settings) = settings;
        b
    }

    /// Changes what the fake does from now on.
    pub fn settings(&self, change: impl FnOnce(&mut FakeSettings)) {
        change(&mut lock(&self.shared.settings));
    }

    /// Holds every load of `name` (on its blocking thread) until the gate is dropped.
    pub fn hold_loads(&self, name: &str) -> LoadGate {
        lock(&self.shared.held).insert(name.to_string());
        LoadGate { shared: Arc::clone(&self.shared), name: name.to_string() }
    }

    /// Loads so far.
    pub fn loads(&self) -> usize {
        self.shared.loads.load(Ordering::SeqCst)
    }

    /// Generations accepted so far.
    pub fn generations(&self) -> usize {
        self.shared.generations.load(Ordering::SeqCst)
    }

    /// Answer tokens sent so far, over all generations.
    pub fn tokens_sent(&self) -> usize {
        self.shared.tokens_sent.load(Ordering::SeqCst)
    }

    /// Instances not yet freed, by model name.
    pub fn live(&self) -> Vec<String> {
        let mut live = lock(&self.shared.live);
        live.retain(|(_, w)| w.strong_count() > 0);
        live.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Kills every live instance of `name`, as a panic on its worker would.
    pub fn kill(&self, name: &str) {
        for (n, w) in lock(&self.shared.live).iter() {
            if let Some(i) = w.upgrade().filter(|_| n == name) {
                i.dead.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Loads of one model wait while this lives.
pub struct LoadGate {
    shared: Arc<Shared>,
    name: String,
}

impl Drop for LoadGate {
    fn drop(&mut self) {
        lock(&self.shared.held).remove(&self.name);
        self.shared.released.notify_all();
    }
}

impl Backend for FakeBackend {
    fn estimate(&self, entry: &ModelEntry, _settings: &LoadSettings) -> Result<u64, String> {
        let s = lock(&self.shared.settings);
        Ok(s.bytes.get(&entry.name).copied().unwrap_or(s.default_bytes))
    }

    fn embedding_estimate(&self, _entry: &ModelEntry, _settings: &LoadSettings) -> Result<u64, String> {
        Ok(lock(&self.shared.settings).embedding_bytes)
    }

    fn load(&self, entry: &ModelEntry, settings: LoadSettings) -> Result<Arc<dyn ModelInstance>, EngineError> {
        let s = lock(&self.shared.settings).clone();
        std::thread::sleep(s.load_delay);
        let mut held = lock(&self.shared.held);
        while held.contains(&entry.name) {
            held = self.shared.released.wait(held).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(held);
        if s.failing_loads.contains(&entry.name) {
            return Err(EngineError::Load { path: entry.path.display().to_string(), reason: "the fake backend fails this load".into() });
        }
        self.shared.loads.fetch_add(1, Ordering::SeqCst);
        let instance = Arc::new(FakeInstance {
            shared: Arc::clone(&self.shared),
            n_ctx_slot: s.n_ctx_slot.min(settings.num_ctx.max(1)),
            parallel: settings.parallel.max(1),
            n_embd: s.n_embd,
            dead: AtomicBool::new(false),
        });
        lock(&self.shared.live).push((entry.name.clone(), Arc::downgrade(&instance)));
        Ok(instance)
    }
}

/// A fake loaded model.
pub struct FakeInstance {
    shared: Arc<Shared>,
    n_ctx_slot: u32,
    parallel: u32,
    n_embd: usize,
    dead: AtomicBool,
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

impl FakeInstance {
    /// The prompt's token count and how many droppable messages were left out.
    fn prompt_tokens(&self, job: &GenerateJob) -> (usize, usize) {
        match &job.prompt {
            PromptSpec::Generate { prompt, system, context, .. } => {
                (context.len() + words(system.as_deref().or(job.model_system.as_deref()).unwrap_or("")) + words(prompt), 0)
            }
            PromptSpec::Chat { messages, .. } => {
                let limit = job.options.num_ctx.min(self.n_ctx_slot) as usize;
                let reserve = super::answer_reserve(&job.options, limit);
                let system = match job.model_system.as_deref() {
                    Some(s) if !messages.iter().any(|m| m.role == "system") => 1 + words(s),
                    _ => 0,
                };
                let size = |m: &[TemplateMessage]| system + m.iter().map(|m| 1 + words(&m.content)).sum::<usize>();
                let mut messages = messages.clone();
                let Ok(dropped) = super::trim_history(&mut messages, job.droppable.clone(), |m| Ok::<_, std::convert::Infallible>(size(m) + reserve <= limit));
                (size(&messages), dropped)
            }
        }
    }
}

impl ModelInstance for FakeInstance {
    fn n_ctx_slot(&self) -> u32 {
        self.n_ctx_slot
    }

    fn parallel(&self) -> u32 {
        self.parallel
    }

    fn load_duration(&self) -> Duration {
        Duration::ZERO
    }

    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    fn n_embd(&self) -> usize {
        self.n_embd
    }

    fn generate(self: Arc<Self>, job: GenerateJob) -> BoxFuture<'static, Result<Submitted, EngineError>> {
        async move {
            if !self.is_alive() {
                return Err(EngineError::WorkerGone);
            }
            let (prompt_tokens, dropped_messages) = self.prompt_tokens(&job);
            let num_ctx = job.options.num_ctx.min(self.n_ctx_slot);
            if prompt_tokens >= num_ctx as usize {
                return Err(EngineError::PromptTooLong { prompt_tokens, num_ctx });
            }
            let (count, reason) = match job.options.num_predict {
                PredictLimit::Tokens(n) => (n, DoneReason::Length),
                PredictLimit::UntilContextFull => (8, DoneReason::Stop),
            };
            let token_delay = lock(&self.shared.settings).token_delay;
            self.shared.generations.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = unbounded_channel();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                for i in 0..count {
                    if !token_delay.is_zero() {
                        tokio::time::sleep(token_delay).await;
                    }
                    // A dead worker sends nothing more, not even a final event.
                    if !self.is_alive() || tx.send(Event::Text(format!("t{i} "))).is_err() {
                        return;
                    }
                    self.shared.tokens_sent.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tx.send(Event::Done(Completion {
                    reason,
                    prompt_tokens: prompt_tokens as u32,
                    cached_tokens: 0,
                    prompt_eval: Duration::ZERO,
                    eval_tokens: count,
                    eval: started.elapsed(),
                    context: Vec::new(),
                    stop_sequence: None,
                    draft_tokens: 0,
                    draft_accepted: 0,
                }));
            });
            Ok(Submitted { events: rx, dropped_messages, answered_by: None })
        }
        .boxed()
    }

    fn embed(self: Arc<Self>, job: EmbedJob) -> BoxFuture<'static, Result<Embedded, EngineError>> {
        async move {
            let mut prompt_tokens = 0;
            let mut vectors = Vec::new();
            for (i, input) in job.inputs.iter().enumerate() {
                let mut n = match input {
                    EmbedInput::Text(t) => words(t),
                    EmbedInput::Tokens(t) => t.len(),
                };
                if n == 0 {
                    return Err(EngineError::EmptyInput(i));
                }
                if n > job.limit as usize {
                    if !job.truncate {
                        return Err(EngineError::InputTooLong { tokens: n, num_ctx: job.limit });
                    }
                    n = job.limit as usize;
                }
                prompt_tokens += n;
                let mut v = vec![0.0; self.n_embd];
                v[0] = n as f32;
                if self.n_embd > 1 {
                    v[1] = 1.0;
                }
                vectors.push(v);
            }
            Ok(Embedded { vectors, prompt_tokens })
        }
        .boxed()
    }
}
