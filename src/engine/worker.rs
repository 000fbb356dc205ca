//! The per-model worker thread: owns the llama.cpp context and runs continuous batching.
//!
//! Each step puts every generating sequence's last token, plus chunks of waiting prompts up to
//! the batch size, into one batch and decodes once; then each sequence samples its next token.
//! A request whose receiver is gone (client left) is dropped before the next step, so a
//! cancelled prompt costs at most one chunk, and chunks are sized to the measured prefill rate
//! to keep a step short (`pace`). Nothing outside this thread touches the context.
//! Prefix reuse: a slot keeps its sequence's KV cache after its request ends, and a new prompt
//! goes to the free slot sharing the longest prefix with it (`prefix::pick_slot`); only the
//! rest is decoded. A slot taken over by an unrelated prompt first saves its state into a
//! RAM-bounded `PrefixStore`, from which a later prompt that shares it restores it.
//! Embed jobs go to the `embed::Embedder`, which runs decodes of its own context between
//! generation steps; while both have work each gets half the time (`FairShare`), so a chat in
//! progress keeps streaming while inputs are embedded.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::model::LlamaLoraAdapter;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::embed::{EmbedJob, Embedder, FairShare};
use crate::spec::options::{PredictLimit, SamplingOptions};
use super::lookup::{self, DraftControl};
use super::slot_cache::{clear_seq, Prefixes};
use super::text::{StopMatcher, StopScan, Utf8Stream};
use super::wrapup::WrapUp;
use super::{sampler, Completion, DoneReason, EngineError, Event, LoadSettings, TokenLogprob};

/// What the worker's channel carries.
pub(super) enum Work {
    Generate(Job),
    Embed(EmbedJob),
}

pub(super) struct Job {
    pub prompt: Vec<LlamaToken>,
    pub options: SamplingOptions,
    pub events: UnboundedSender<Event>,
}

/// A request holding a slot (one llama.cpp sequence).
struct Active {
    events: UnboundedSender<Event>,
    options: SamplingOptions,
    sampler: sampler::TokenSampler,
    /// The sequence's tokens: prompt, then output. `history[..n_past]` is in the KV cache.
    history: Vec<LlamaToken>,
    n_past: usize,
    /// The context this request may use.
    n_ctx: usize,
    prompt_tokens: usize,
    /// Prompt tokens whose KV came from the slot's cache or the prefix store, not decoded.
    cached_tokens: usize,
    generated: u32,
    /// Where a structured answer is, to wrap it up properly near its token limit.
    json: super::wrapup::JsonLexState,
    /// Where this sequence's logits are in the current batch; guessed tokens' follow.
    logits_idx: Option<i32>,
    /// Tokens guessed to follow `history` (prompt lookup), decoded in the current batch.
    draft: Vec<LlamaToken>,
    /// `None` when this sequence does not guess (speculative decoding off, or a model whose
    /// state can't be rolled back).
    drafting: Option<DraftControl>,
    /// Guessed tokens decoded and accepted, for the log.
    drafted: usize,
    accepted: usize,
    utf8: Utf8Stream,
    stop: StopMatcher,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl Active {
    /// Fails (after telling the client) when the request's grammar does not compile.
    fn new(job: Job, model: &LlamaModel, n_ctx_slot: u32, speculate: bool) -> Option<Active> {
        let n_ctx = job.options.num_ctx.min(n_ctx_slot) as usize;
        let mut sampler = match sampler::build(model, &job.options, n_ctx as u32) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.send(Event::Failed(EngineError::Sampling(e)));
                return None;
            }
        };
        // Repetition penalties see the prompt too, as in llama.cpp and Ollama.
        let window = if job.options.repeat_last_n < 0 { n_ctx } else { job.options.repeat_last_n as usize };
        let tail = &job.prompt[job.prompt.len().saturating_sub(window)..];
        sampler.accept_many(tail);
        let may_be_text = job.options.grammar.as_deref().is_some_and(super::grammar::may_be_text);
        Some(Active {
            events: job.events,
            stop: StopMatcher::new(job.options.stop.clone()),
            options: job.options,
            sampler,
            prompt_tokens: job.prompt.len(),
            cached_tokens: 0,
            history: job.prompt,
            n_past: 0,
            n_ctx,
            generated: 0,
            json: super::wrapup::JsonLexState::new(may_be_text),
            logits_idx: None,
            draft: Vec::new(),
            drafting: speculate.then(DraftControl::default),
            drafted: 0,
            accepted: 0,
            utf8: Utf8Stream::default(),
            started: Instant::now(),
            first_token_at: None,
        })
    }

    /// How many more tokens this request may generate: its `num_predict` (at most its
    /// context's size, so the context shift cannot run forever), or the room left in its
    /// context.
    fn tokens_left(&self) -> usize {
        let room = self.n_ctx.saturating_sub(self.history.len());
        match self.options.num_predict {
            PredictLimit::Tokens(n) => room.min(self.predict_cap(n).saturating_sub(self.generated) as usize),
            PredictLimit::UntilContextFull => room,
        }
    }

    fn predict_cap(&self, num_predict: u32) -> u32 {
        num_predict.min(u32::try_from(self.n_ctx).unwrap_or(u32::MAX))
    }

    /// Tokens waiting to go into the KV cache.
    fn unfed(&self) -> usize {
        self.history.len() - self.n_past
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(Event::Text(text));
        }
    }

    /// The tokens whose KV is in this request's sequence: what its slot offers the next prompt.
    fn in_cache(&self) -> Vec<LlamaToken> {
        self.history[..self.n_past].to_vec()
    }

    /// Flushes held-back text and reports the end of generation.
    fn finish(mut self, reason: DoneReason) {
        // Text held back as a possible stop sequence was not one; an unfinished UTF-8
        // character (self.utf8.held_back()) is dropped.
        let tail = self.stop.finish();
        self.send_text(tail);
        let now = Instant::now();
        let first = self.first_token_at.unwrap_or(now);
        tracing::debug!(
            prompt_tokens = self.prompt_tokens,
            cached_tokens = self.cached_tokens,
            drafted = self.drafted,
            accepted = self.accepted,
            prompt_eval_ms = (first - self.started).as_millis() as u64,
            "generation finished"
        );
        let _ = self.events.send(Event::Done(Completion {
            reason,
            prompt_tokens: self.prompt_tokens as u32,
            cached_tokens: self.cached_tokens as u32,
            prompt_eval: first - self.started,
            eval_tokens: self.generated,
            eval: now - first,
            context: self.history.iter().map(|t| t.0).collect(),
            stop_sequence: self.stop.matched().map(str::to_string),
            draft_tokens: self.drafted as u32,
            draft_accepted: self.accepted as u32,
        }));
    }

    /// When the context is full and the caller asked for a fixed number of tokens, drop the
    /// older half of what follows the first `num_keep` tokens and re-read the rest. Re-reading
    /// (not shifting the KV cache) works for every architecture, sliding-window ones included.
    fn make_room(&mut self) -> bool {
        if !self.options.shift || !matches!(self.options.num_predict, PredictLimit::Tokens(_)) {
            return false;
        }
        let keep = if self.options.num_keep < 0 {
            self.prompt_tokens
        } else {
            self.options.num_keep as usize
        }
        .min(self.history.len());
        let discard = (self.history.len() - keep) / 2;
        if discard == 0 {
            return false;
        }
        self.history.drain(keep..keep + discard);
        self.n_past = 0;
        true
    }
}

pub(super) fn run(
    model: &LlamaModel,
    adapter: Option<LlamaLoraAdapter>,
    backend: &LlamaBackend,
    settings: &LoadSettings,
    jobs: Receiver<Work>,
    ready: SyncSender<Result<u32, String>>,
    dead: &AtomicBool,
) {
    let parallel = settings.parallel.max(1);
    // Measured with llama-bench on the test models (2 cores, 2 threads; see the performance
    // issue's note): n_ubatch = n_batch = 512 is within 2% of the best pp512 (64: -5%/-8%);
    // flash attention, left at llama.cpp's "auto" (on for every model we run on CPU), is
    // +2-6% prefill and +6-9% decode over off; a q8_0 KV cache costs 25% of prefill, so f16.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.num_ctx.saturating_mul(parallel)))
        .with_n_batch(settings.batch_size)
        .with_n_ubatch(settings.batch_size)
        .with_n_seq_max(parallel)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads_batch)
        // Each slot gets its own num_ctx cells, so one long conversation can't starve the rest.
        .with_kv_unified(false);
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create context: {e}")));
            return;
        }
    };
    let mut adapter = adapter;
    if let Some(adapter) = adapter.as_mut() {
        if let Err(e) = ctx.lora_adapter_set(adapter, 1.0) {
            let _ = ready.send(Err(format!("cannot apply the adapter: {e}")));
            return;
        }
    }
    let n_ctx_slot = ctx.n_ctx() / parallel;
    // A guess that fails is rolled back, which a recurrent state cannot be.
    let speculate = settings.speculative && !model.is_recurrent() && !model.is_hybrid();
    if ready.send(Ok(n_ctx_slot)).is_err() {
        return;
    }
    let mut batch = LlamaBatch::new(settings.batch_size as usize, 1);
    let mut slots: Vec<Option<Active>> = (0..parallel).map(|_| None).collect();
    // Logit biases toward closing JSON, computed the first time a structured answer wraps up.
    let mut closers: Option<sampler::WrapUpBias> = None;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut prefixes = Prefixes::new(model, parallel as usize, ctx.n_ctx());
    let mut embedder = Embedder::new(model, backend, adapter, settings, n_ctx_slot);
    let mut share = FairShare::default();
    let mut pace = super::pace::PrefillPace::new(settings.batch_size as usize);
    let mut open = true;
    // Declared after everything that holds a request, so on a panic it is dropped first: the
    // instance is marked dead before its requests see their channels close, and a request that
    // comes after them is not given to this worker.
    let _death_notice = DeathNotice(dead);

    loop {
        // Block only when there is nothing to do.
        if open && waiting.is_empty() && slots.iter().all(Option::is_none) && embedder.idle() {
            match jobs.recv() {
                Ok(work) => accept(work, &mut waiting, &mut embedder),
                Err(_) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(work) => accept(work, &mut waiting, &mut embedder),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Clients that left give their place back (what they read stays cached for reuse).
        waiting.retain(|job| !job.events.is_closed());
        for (seq, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|a| a.events.is_closed()) {
                if let Some(a) = slot.take() {
                    prefixes.release(seq, a.in_cache());
                }
            }
        }
        while slots.iter().any(Option::is_none) {
            let Some(job) = waiting.pop_front() else { break };
            let Some(mut active) = Active::new(job, model, n_ctx_slot, speculate) else { continue };
            if active.options.num_predict == PredictLimit::Tokens(0) {
                active.finish(DoneReason::Length);
                continue;
            }
            let free: Vec<usize> = (0..slots.len()).filter(|&s| slots[s].is_none()).collect();
            let Some((seq, keep)) = prefixes.assign(&mut ctx, &free, &active.history) else {
                waiting.push_front(Job { prompt: active.history, options: active.options, events: active.events });
                break;
            };
            active.n_past = keep;
            active.cached_tokens = keep;
            slots[seq] = Some(active);
        }
        if !embedder.idle() && share.embed_now(slots.iter().any(Option::is_some)) {
            let started = Instant::now();
            embedder.step();
            share.embedded(started.elapsed());
        }
        if slots.iter().all(Option::is_none) {
            if !open && waiting.is_empty() && embedder.idle() {
                break;
            }
            continue;
        }

        let step_started = Instant::now();
        let prompt_tokens = fill_batch(&mut batch, &mut slots, &mut ctx, &mut prefixes, settings.batch_size as usize, pace.budget());
        if batch.n_tokens() == 0 {
            continue;
        }
        let decoded = ctx.decode(&mut batch);
        if prompt_tokens > 0 {
            pace.observe(batch.n_tokens() as usize, step_started.elapsed());
        }
        if let Err(e) = decoded {
            tracing::error!("decode failed: {e}");
            for (seq, slot) in slots.iter_mut().enumerate() {
                if let Some(a) = slot.take() {
                    let _ = a.events.send(Event::Failed(EngineError::Decode(e.to_string())));
                    prefixes.forget(&mut ctx, seq);
                }
            }
            continue;
        }
        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(idx) = slot.as_ref().and_then(|a| a.logits_idx) else { continue };
            let Some(mut a) = slot.take() else { continue };
            let drafted = a.draft.len();
            let done = match verify(&mut a, &ctx, model, idx, &mut closers) {
                Ok(done) => done,
                Err(e) => {
                    let _ = a.events.send(Event::Failed(EngineError::Sampling(e)));
                    prefixes.forget(&mut ctx, seq);
                    continue;
                }
            };
            let accepted = a.draft.len();
            a.draft.clear();
            if let Some(control) = a.drafting.as_mut() {
                control.record(drafted, accepted);
            }
            a.drafted += drafted;
            a.accepted += accepted;
            // Guessed tokens that did not hold leave the KV cache; if the sequence can't be
            // cut there (a sliding window), it is read again from the start.
            if accepted < drafted && !prefixes.roll_back(&mut ctx, seq, a.n_past) {
                a.n_past = 0;
            }
            match done {
                Some(reason) => {
                    prefixes.release(seq, a.in_cache());
                    a.finish(reason);
                }
                None => *slot = Some(a),
            }
        }
        share.generated(step_started.elapsed(), !embedder.idle());
    }
}

fn accept(work: Work, waiting: &mut VecDeque<Job>, embedder: &mut Embedder<'_>) {
    match work {
        Work::Generate(job) => {
            waiting.push_back(job);
            // After the push: the request is the worker's, as it would be for a real panic.
            #[cfg(debug_assertions)]
            injected_panic();
        }
        Work::Embed(job) => embedder.push(job),
    }
}

/// Marks the instance dead when the worker thread unwinds from a panic.
struct DeathNotice<'a>(&'a AtomicBool);

impl Drop for DeathNotice<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A test hook, in debug builds only: `HEARTH_FAULT_WORKER_PANIC=N` makes the worker that
/// receives the process's Nth generation panic, as a bug on this thread would, so the tests can
/// check what the rest of hearth does about a dead worker.
#[cfg(debug_assertions)]
fn injected_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static GENERATIONS: AtomicUsize = AtomicUsize::new(0);
    static AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let Some(n) = *AT.get_or_init(|| std::env::var("HEARTH_FAULT_WORKER_PANIC").ok().and_then(|v| v.parse().ok())) else {
        return;
    };
    if GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1 == n {
        panic!("HEARTH_FAULT_WORKER_PANIC={n}: the worker panics on purpose");
    }
}

/// Puts each generating sequence's next token first (decode steps are what streams wait on),
/// then prompt chunks until the batch is full. A smaller prompt budget per step while others
/// decode did not help on a 2-core machine (SmolLM2, a stream decoding while a 1439-token
/// prompt arrives, one run each, the machine shared with a benchmark: 512 tokens per step gave
/// a median inter-token gap of 2.2 s and 13.7 s for the prompt; 128 gave 1.7 s and 31.8 s; 64
/// gave 5.8 s and 92 s): each step pays a fixed cost. Prompt tokens are further held to
/// `prompt_budget`, so a step stays short enough for a departed client to be noticed soon.
/// Returns the prompt tokens added.
fn fill_batch(batch: &mut LlamaBatch, slots: &mut [Option<Active>], ctx: &mut LlamaContext, prefixes: &mut Prefixes, capacity: usize, prompt_budget: usize) -> usize {
    batch.clear();
    let streams = slots.iter().flatten().filter(|a| a.first_token_at.is_some()).count();
    let mut room = capacity;
    let mut prompt_added = 0;
    for generating in [true, false] {
        if !generating {
            room = room.min(prompt_budget);
        }
        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(a) = slot.as_mut() else { continue };
            if generating {
                a.logits_idx = None;
            }
            if (a.first_token_at.is_some()) != generating || a.unfed() == 0 || room == 0 {
                continue;
            }
            if a.history.len() > a.n_ctx {
                if a.make_room() {
                    clear_seq(ctx, seq);
                } else if let Some(a) = slot.take() {
                    prefixes.release(seq, a.in_cache());
                    a.finish(DoneReason::Length);
                    continue;
                }
            }
            let Some(a) = slot.as_mut() else { continue };
            let take = a.unfed().min(room);
            for i in 0..take {
                let pos = a.n_past + i;
                let last = pos + 1 == a.history.len();
                if batch.add(a.history[pos], pos as i32, &[seq as i32], last).is_err() {
                    break;
                }
                if last {
                    a.logits_idx = Some(batch.n_tokens() - 1);
                }
            }
            a.n_past += take;
            room -= take;
            if generating && a.logits_idx.is_some() && streams <= SPECULATE_MAX_STREAMS {
                room -= add_draft(batch, a, seq, room);
            }
            if !generating {
                prompt_added += take;
            }
        }
    }
    prompt_added
}

/// Samples sequence `a`'s next token from the logits at batch index `idx`, then, while the
/// sampled token is the one guessed next (`a.draft`), the token after it from the guessed
/// token's logits, and so on: the tokens plain decoding would have produced one step at a
/// time, drawn from the same sampler in the same order. Leaves in `a.draft` the guessed tokens
/// that held (now in `history[..n_past]`). Returns why generation ends, if it does.
fn verify(a: &mut Active, ctx: &LlamaContext, model: &LlamaModel, idx: i32, closers: &mut Option<sampler::WrapUpBias>) -> Result<Option<DoneReason>, String> {
    let draft = std::mem::take(&mut a.draft);
    let mut held = 0;
    let done = loop {
        let token = sample(a, ctx, model, idx + held as i32, closers)?;
        if let Some(reason) = step(a, model, token) {
            break Some(reason);
        }
        if draft.get(held) != Some(&token) {
            break None;
        }
        // The guessed token is in the KV cache already, and its logits are next in the batch.
        a.n_past += 1;
        held += 1;
    };
    a.draft = draft;
    a.draft.truncate(held);
    Ok(done)
}

/// Samples one token for `a` from the logits at batch index `idx` (biased toward closing a
/// structured answer near its token limit) and reports its log-probability when asked.
fn sample(a: &mut Active, ctx: &LlamaContext, model: &LlamaModel, idx: i32, closers: &mut Option<sampler::WrapUpBias>) -> Result<LlamaToken, String> {
    let wrap_up = if a.sampler.constrained() { a.json.wrap_up(a.tokens_left()) } else { None };
    if wrap_up.is_some() && closers.is_none() {
        *closers = Some(sampler::wrap_up_bias(model));
    }
    let bias = closers.as_ref().and_then(|b| match wrap_up? {
        WrapUp::Close if a.json.in_string => Some(b.in_string.as_slice()),
        WrapUp::Close => Some(b.outside.as_slice()),
        WrapUp::Compact => Some(b.compact.as_slice()),
    });
    let token = a.sampler.sample(ctx, idx, bias)?;
    if let Some(top) = a.options.logprobs {
        let (logprob, alternatives) = sampler::logprobs(ctx.get_logits_ith(idx), token, top as usize);
        let piece = |t: LlamaToken| model.vocab().token_to_piece(t, false, None);
        let _ = a.events.send(Event::Logprob(TokenLogprob {
            bytes: piece(token),
            logprob,
            top: alternatives.into_iter().map(|(t, lp)| (piece(t), lp)).collect(),
        }));
    }
    Ok(token)
}

/// Guessing is for few streams: with more, the batch is wide already and the guessed tokens
/// take room from other sequences' steps and prompts.
const SPECULATE_MAX_STREAMS: usize = 2;

/// Puts a guess at what follows sequence `a` into the batch after its last token, each with its
/// logits, as many tokens as its `DraftControl` wants and its limits, its context and the
/// batch's `room` allow. Returns the tokens added.
fn add_draft(batch: &mut LlamaBatch, a: &mut Active, seq: usize, room: usize) -> usize {
    // The token sampled after the guess is one more: room for it in the answer and the context.
    let most = a.tokens_left().saturating_sub(1).min(a.n_ctx.saturating_sub(a.history.len() + 1)).min(room);
    let Some(control) = a.drafting.as_mut() else { return 0 };
    if most == 0 {
        return 0;
    }
    let want = control.want().min(most);
    a.draft = lookup::propose(&a.history, want);
    for (i, &token) in a.draft.iter().enumerate() {
        if batch.add(token, (a.history.len() + i) as i32, &[seq as i32], true).is_err() {
            a.draft.truncate(i);
            break;
        }
    }
    a.draft.len()
}

/// Handles one sampled token; returns why generation ends, if it does.
fn step(a: &mut Active, model: &LlamaModel, token: LlamaToken) -> Option<DoneReason> {
    let vocab = model.vocab();
    if a.first_token_at.is_none() {
        a.first_token_at = Some(Instant::now());
    }
    if vocab.is_eog(token) {
        return Some(DoneReason::Stop);
    }
    a.generated += 1;
    a.history.push(token);
    let piece = vocab.token_to_piece(token, false, None);
    if a.sampler.constrained() {
        a.json.feed(&piece);
    }
    let text = a.utf8.push(&piece);
    match a.stop.push(&text) {
        StopScan::Continue(t) => a.send_text(t),
        StopScan::Stopped(t) => {
            a.send_text(t);
            return Some(DoneReason::Stop);
        }
    }
    match a.options.num_predict {
        PredictLimit::Tokens(n) if a.generated >= a.predict_cap(n) => Some(DoneReason::Length),
        _ => None,
    }
}
