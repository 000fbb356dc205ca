//! The per-model worker thread: owns the llama.cpp context and runs continuous batching.
//!
//! Each step puts every generating sequence's last token, plus chunks of waiting prompts up to
//! the batch size, into one batch and decodes once; then each sequence samples its next token.
//! A request whose receiver is gone (client left) is dropped before the next step; a decode
//! holding its tokens stops as soon as it notices (`abort`), and its batch is taken back.
//! Nothing outside this thread touches the context.
//! Prefix reuse: a slot keeps its sequence's KV cache after its request ends, and a new prompt
//! goes to the free slot sharing the longest prefix with it (`prefix::pick_slot`); only the
//! rest is decoded. A slot taken over by an unrelated prompt first saves its state into a
//! RAM-bounded `PrefixStore`, from which a later prompt that shares it restores it.
//! The slots share one pool of KV cells; when a batch finds no room, idle slots' cached
//! sequences go first, then the request admitted last waits with its cells given up
//! (`make_room_in_pool`). With one or two streams, each step also decodes a guess at what
//! follows a stream (`lookup`), and keeps the guessed tokens its sampler would have picked
//! (`verify`). When the worker ends (the model unloaded or the server stopping), what the
//! slots and the store hold is saved to disk for the next load (`disk_prefixes`).
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
use llama_cpp_2::DecodeError;
use tokio::sync::mpsc::UnboundedSender;

use super::abort::{AbortWatch, ABORTED};
use super::disk_prefixes::DiskPrefixes;
use super::embed::{EmbedJob, Embedder, FairShare};
use super::exact;
use crate::spec::options::{PredictLimit, SamplingOptions};
use super::sequence::{add_draft, verify, Active, SPECULATE_MAX_STREAMS};
use super::slot_cache::{clear_seq, Prefixes};
use super::{sampler, DoneReason, EngineError, Event, LoadSettings};

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

/// What a load adds to the model for its worker: a LoRA adapter and the prefixes on disk.
pub(super) struct Extras {
    pub adapter: Option<LlamaLoraAdapter>,
    pub disk: Option<DiskPrefixes>,
}

pub(super) fn run(
    model: &LlamaModel,
    Extras { adapter, disk }: Extras,
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
    // n_ubatch = n_batch also makes a decode that finds no room in the KV pool fail whole.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.num_ctx))
        .with_n_batch(settings.batch_size)
        .with_n_ubatch(settings.batch_size)
        .with_n_seq_max(parallel)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads_batch)
        // One pool of num_ctx cells for all slots (as llama-server's -c with --kv-unified):
        // any one request may use all of it, and what slots hold costs only what they use.
        .with_kv_unified(true);
    // Before the context, so it is dropped after it: llama.cpp keeps a pointer to it.
    let abort = AbortWatch::default();
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create context: {e}")));
            return;
        }
    };
    if let Err(e) = abort.install(&ctx) {
        let _ = ready.send(Err(e));
        return;
    }
    let mut adapter = adapter;
    if let Some(adapter) = adapter.as_mut() {
        if let Err(e) = ctx.lora_adapter_set(adapter, 1.0) {
            let _ = ready.send(Err(format!("cannot apply the adapter: {e}")));
            return;
        }
    }
    let n_ctx_slot = ctx.n_ctx();
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
    let reuse = (settings.prefix_reuse, settings.batch_size as usize);
    let mut prefixes = Prefixes::new(model, parallel as usize, ctx.n_ctx(), settings.prefix_store_limit, disk, reuse);
    let mut embedder = Embedder::new(model, backend, adapter, settings, n_ctx_slot);
    let mut share = FairShare::default();
    let mut open = true;
    // Requests holding a slot after the last admission.
    let mut occupied = 0;
    // Declared after everything that holds a request, so on a panic it is dropped first: the
    // instance is marked dead before its requests see their channels close, and a request that
    // comes after them is not given to this worker.
    let _death_notice = DeathNotice(dead);

    loop {
        // Block only when there is nothing to do (exact reuse may have an answer to re-read).
        if open && waiting.is_empty() && slots.iter().all(Option::is_none) && embedder.idle() && !prefixes.retile_step(&mut ctx, &mut batch) {
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
        // A request that finished or left gave its cells back: the suspended may try again.
        if slots.iter().flatten().count() < occupied {
            slots.iter_mut().flatten().for_each(|a| a.suspended = false);
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
        occupied = slots.iter().flatten().count();
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
        fill_batch(&mut batch, &mut slots, &mut ctx, &mut prefixes, settings.batch_size as usize);
        if batch.n_tokens() == 0 {
            continue;
        }
        abort.watch(slots.iter().flatten().filter(|a| a.n_past > a.fed_from).map(|a| a.events.clone()));
        let decoded = ctx.decode(&mut batch);
        abort.clear();
        if let Err(DecodeError::Unknown(ABORTED)) = decoded {
            // A client left: nothing of the batch was kept. The others read it again next step.
            tracing::debug!("decode stopped: a client whose tokens it held has left");
            take_back(&mut slots);
            for (seq, a) in slots.iter_mut().enumerate() {
                if let Some(a) = a.as_mut().filter(|a| !prefixes.roll_back(&mut ctx, seq, a.n_past)) {
                    a.n_past = 0;
                }
            }
            continue;
        }
        if let Err(DecodeError::NoKvCacheSlot) = decoded {
            make_room_in_pool(&mut slots, &mut ctx, &mut prefixes);
            continue;
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
        for (seq, a) in slots.iter().enumerate() {
            if let Some(a) = a.as_ref().filter(|a| a.n_past > a.fed_from) {
                prefixes.fed(seq, a.fed_from, a.n_past, batch.n_tokens() as usize);
            }
        }
        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(idx) = slot.as_ref().and_then(|a| a.logits_idx) else { continue };
            let Some(mut a) = slot.take() else { continue };
            let (done, rejected) = match verify(&mut a, &ctx, model, idx, &mut closers) {
                Ok(verified) => verified,
                Err(e) => {
                    let _ = a.events.send(Event::Failed(EngineError::Sampling(e)));
                    prefixes.forget(&mut ctx, seq);
                    continue;
                }
            };
            // Guessed tokens that did not hold leave the KV cache; if the sequence can't be
            // cut there (a sliding window), it is read again from the start.
            if rejected > 0 && !prefixes.roll_back(&mut ctx, seq, a.n_past) {
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
    prefixes.persist(&mut ctx);
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
/// gave 5.8 s and 92 s): each step pays a fixed cost. A departed client needs no small steps
/// either: the decode holding its tokens stops (`abort`).
fn fill_batch(batch: &mut LlamaBatch, slots: &mut [Option<Active>], ctx: &mut LlamaContext, prefixes: &mut Prefixes, capacity: usize) {
    batch.clear();
    // Nobody finishes while everyone waits: then they all try again.
    if slots.iter().flatten().all(|a| a.suspended) {
        slots.iter_mut().flatten().for_each(|a| a.suspended = false);
    }
    let streams = slots.iter().flatten().filter(|a| a.first_token_at.is_some()).count();
    let mut room = capacity;
    for generating in [true, false] {
        for (seq, slot) in slots.iter_mut().enumerate() {
            let Some(a) = slot.as_mut() else { continue };
            if generating {
                a.logits_idx = None;
                // Left out of this batch, it has nothing to take back if the batch fails.
                a.fed_from = a.n_past;
            }
            if (a.first_token_at.is_some()) != generating || a.unfed() == 0 || room == 0 || a.suspended {
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
            a.fed_from = a.n_past;
            let take = match prefixes.exact() {
                Some(batch) if !generating => exact::aligned_take(a.n_past, a.unfed(), room, batch),
                _ => a.unfed().min(room),
            };
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
        }
    }
}

/// The batch was not decoded (no room, or stopped): each sequence's tokens in it are unfed again.
fn take_back(slots: &mut [Option<Active>]) {
    for a in slots.iter_mut().flatten() {
        a.n_past = a.fed_from;
        a.logits_idx = None;
        a.draft.clear();
    }
}

/// The batch found no room in the KV pool (nothing of it was decoded): takes back what it fed,
/// then frees cells for the next try: a free slot's cached prefix first (saved to the prefix
/// store if worth it), else the cells of the request admitted last, which waits, suspended,
/// until another request finishes and then reads its history again.
fn make_room_in_pool(slots: &mut [Option<Active>], ctx: &mut LlamaContext, prefixes: &mut Prefixes) {
    take_back(slots);
    if prefixes.evict_one(ctx) {
        return;
    }
    let youngest = slots
        .iter()
        .enumerate()
        .filter_map(|(seq, s)| s.as_ref().filter(|a| !a.suspended && a.n_past > 0).map(|a| (seq, a.started)))
        .max_by_key(|&(_, started)| started);
    let running = slots.iter().flatten().filter(|a| !a.suspended).count();
    match youngest {
        Some((seq, _)) if running > 1 => {
            tracing::debug!(slot = seq, "KV pool full: a request waits for another to finish");
            clear_seq(ctx, seq);
            if let Some(a) = slots[seq].as_mut() {
                a.n_past = 0;
                a.suspended = true;
            }
        }
        // One request alone fits (its context is at most the pool), so this is fragmentation
        // or a bug: start it over rather than spin.
        _ => {
            for (seq, slot) in slots.iter_mut().enumerate() {
                if let Some(a) = slot.as_mut().filter(|a| !a.suspended) {
                    tracing::warn!(slot = seq, "no room in the KV pool for a lone request; reading it again");
                    clear_seq(ctx, seq);
                    a.n_past = 0;
                }
            }
        }
    }
}
