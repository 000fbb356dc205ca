//! Pooled embeddings: the embedding context a model's worker creates on its first embed job,
//! how queued inputs are packed into decodes, and the pooling and normalization math.
//!
//! The generation context can't switch embeddings on, so the worker keeps a second llama.cpp
//! context on the same weights (`Embedder`), made lazily and kept for later requests. It holds
//! one slot's context (`n_ctx_slot` KV cells) shared by up to `EMBED_SEQS` sequences, so many
//! short inputs go into one decode and one input as long as a slot's context still fits. With
//! embeddings on, llama.cpp outputs every token of a batch, and for a causal LM that includes
//! the whole vocabulary's logits: a decode's token count (`embed_batch_tokens`) is therefore
//! bounded by a logits budget, and a longer input is fed over several decodes, its KV cache
//! carrying the earlier tokens and its pooled pieces combined here (`PoolAccumulator`). A model
//! with non-causal attention can't be split that way and gets a batch of a whole slot's context.
//! The resource estimate counts all of this (`resources::estimate`), from the same functions.
//!
//! Runs only on the model's worker thread, one decode at a time between generation steps, with
//! half the worker's time while a generation is running (`FairShare`); a sequence is freed as
//! soon as its input is pooled.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use super::{EngineError, LoadSettings};

/// Sequences one embedding decode may carry (inputs embedded together).
pub const EMBED_SEQS: u32 = 16;
/// Bytes one embedding decode may spend on logits. llama.cpp keeps them twice (the graph's
/// output tensor and the context's output buffer), 4 bytes per vocabulary entry per token.
pub const EMBED_LOGITS_BUDGET: u64 = 64 << 20;
/// Fewest tokens per embedding decode, whatever the vocabulary: smaller batches waste the CPU.
pub const EMBED_MIN_BATCH: u32 = 32;

/// How a sequence's token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

impl Pooling {
    /// The pooling a GGUF's `{arch}.pooling_type` declares (llama.cpp's numbering). Absent,
    /// "none" (causal LMs) and "rank" (rerankers, whose output is a score, not a vector) embed
    /// with mean pooling, as Ollama does for models without a pooling type.
    pub fn from_gguf(value: Option<u64>) -> Pooling {
        match value {
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            _ => Pooling::Mean,
        }
    }

    fn llama(self) -> LlamaPoolingType {
        match self {
            Pooling::Mean => LlamaPoolingType::Mean,
            Pooling::Cls => LlamaPoolingType::Cls,
            Pooling::Last => LlamaPoolingType::Last,
        }
    }
}

/// Whether an input must go into one decode whole: with non-causal attention every token sees
/// the ones after it, so pieces pooled over separate decodes would differ from the whole.
/// `causal` is the GGUF's `{arch}.attention.causal`; llama.cpp also hard-codes some archs.
pub fn needs_whole_input(arch: &str, causal: Option<bool>) -> bool {
    causal == Some(false) || arch == "gemma-embedding"
}

/// Tokens per embedding decode: as many as the logits budget allows for this vocabulary (a
/// multiple of `EMBED_MIN_BATCH`, at most the server's batch size), or a whole slot's context
/// for a model that needs whole inputs.
pub fn embed_batch_tokens(n_vocab: u64, n_ctx_slot: u32, batch_size: u32, whole_input: bool) -> u32 {
    let n_ctx_slot = n_ctx_slot.max(1);
    if whole_input {
        return n_ctx_slot;
    }
    let by_budget = EMBED_LOGITS_BUDGET / (8 * n_vocab.max(1));
    let by_budget = u32::try_from(by_budget).unwrap_or(u32::MAX) / EMBED_MIN_BATCH * EMBED_MIN_BATCH;
    by_budget.max(EMBED_MIN_BATCH).min(batch_size.max(1)).min(n_ctx_slot)
}

/// Scales `v` to unit L2 norm; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// The first `dims` components of `v`, normalized again (Ollama's `dimensions`).
pub fn shorten(mut v: Vec<f32>, dims: usize) -> Vec<f32> {
    v.truncate(dims);
    normalize(&mut v);
    v
}

/// The vectors of one embedding request, one per input, or why there are none.
pub type EmbedReply = Result<Vec<Vec<f32>>, EngineError>;

/// Builds one input's pooled vector from the pieces llama.cpp pools per decode: each piece
/// covers consecutive tokens of the input, the first piece starting at its first token.
#[derive(Debug, Clone)]
pub struct PoolAccumulator {
    pooling: Pooling,
    acc: Vec<f64>,
    tokens: usize,
}

impl PoolAccumulator {
    pub fn new(pooling: Pooling) -> Self {
        PoolAccumulator { pooling, acc: Vec::new(), tokens: 0 }
    }

    /// Adds the piece pooled over the next `n` tokens.
    pub fn add(&mut self, piece: &[f32], n: usize) {
        let first = self.tokens == 0;
        self.tokens += n;
        match self.pooling {
            // Mean over all tokens = token-weighted mean of the pieces' means.
            Pooling::Mean => {
                self.acc.resize(piece.len(), 0.0);
                for (a, x) in self.acc.iter_mut().zip(piece) {
                    *a += f64::from(*x) * n as f64;
                }
            }
            Pooling::Cls if first => self.acc = piece.iter().map(|x| f64::from(*x)).collect(),
            Pooling::Cls => {}
            Pooling::Last => self.acc = piece.iter().map(|x| f64::from(*x)).collect(),
        }
    }

    pub fn finish(self) -> Vec<f32> {
        let div = match self.pooling {
            Pooling::Mean => self.tokens.max(1) as f64,
            Pooling::Cls | Pooling::Last => 1.0,
        };
        self.acc.into_iter().map(|a| (a / div) as f32).collect()
    }
}

/// Splits the worker's time evenly between embedding decodes and generation steps while both
/// have work: an embedding decode takes far longer than a generation step, so alternating them
/// one for one would slow a streaming chat to a token per embedding decode.
#[derive(Debug, Default)]
pub(super) struct FairShare {
    embedding: Duration,
    generation: Duration,
}

impl FairShare {
    /// Whether the next embedding decode may run now.
    pub fn embed_now(&mut self, generating: bool) -> bool {
        if !generating {
            *self = FairShare::default();
            return true;
        }
        self.embedding <= self.generation
    }

    pub fn embedded(&mut self, took: Duration) {
        self.embedding += took;
    }

    /// Counts a generation step; time generation had to itself is not owed to embeddings.
    pub fn generated(&mut self, took: Duration, embedding_waits: bool) {
        if embedding_waits {
            self.generation += took;
        } else {
            *self = FairShare::default();
        }
    }
}

/// Inputs to embed, and where their vectors go (pooled, not normalized; same order).
pub(super) struct EmbedJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub reply: oneshot::Sender<EmbedReply>,
}

/// A job in the queue: its inputs not yet started and the vectors done so far.
struct Pending {
    id: u64,
    inputs: Vec<Vec<LlamaToken>>,
    /// Inputs `..next` have been started.
    next: usize,
    vectors: Vec<Option<Vec<f32>>>,
    reply: oneshot::Sender<EmbedReply>,
}

impl Pending {
    fn complete(&self) -> bool {
        self.vectors.iter().all(Option::is_some)
    }
}

/// An input holding a sequence of the embedding context.
struct Running {
    job: u64,
    input: usize,
    seq: i32,
    tokens: Vec<LlamaToken>,
    /// `tokens[..n_past]` have been decoded.
    n_past: usize,
    /// Tokens of this input in the decode being built.
    in_batch: usize,
    pool: PoolAccumulator,
}

/// The sizes an embedding context is made with, fixed at load.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kv_cells: u32,
    batch_tokens: u32,
    whole_input: bool,
    pooling: Pooling,
}

/// The worker's embedding side: its queue and, once needed, its context.
pub(super) struct Embedder<'m> {
    model: &'m LlamaModel,
    backend: &'m LlamaBackend,
    adapter: Option<LlamaLoraAdapter>,
    threads: i32,
    threads_batch: i32,
    shape: Shape,
    ctx: Option<(LlamaContext<'m>, LlamaBatch<'static>)>,
    queue: VecDeque<Pending>,
    running: Vec<Running>,
    next_id: u64,
}

impl<'m> Embedder<'m> {
    pub fn new(
        model: &'m LlamaModel,
        backend: &'m LlamaBackend,
        adapter: Option<LlamaLoraAdapter>,
        settings: &LoadSettings,
        n_ctx_slot: u32,
    ) -> Self {
        let arch = model.meta_val_str("general.architecture").unwrap_or_default();
        let meta = |key: &str| model.meta_val_str(&format!("{arch}.{key}")).ok();
        let causal = meta("attention.causal").map(|v| v != "false");
        let pooling = Pooling::from_gguf(meta("pooling_type").and_then(|v| v.parse().ok()));
        let whole_input = needs_whole_input(&arch, causal);
        let n_vocab = u64::try_from(model.n_vocab()).unwrap_or(0);
        Embedder {
            model,
            backend,
            adapter,
            threads: settings.threads,
            threads_batch: settings.threads_batch,
            shape: Shape {
                kv_cells: n_ctx_slot.max(1),
                batch_tokens: embed_batch_tokens(n_vocab, n_ctx_slot, settings.batch_size, whole_input),
                whole_input,
                pooling,
            },
            ctx: None,
            queue: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
        }
    }

    /// The longest input one sequence can take.
    fn max_input(&self) -> usize {
        let s = self.shape;
        (if s.whole_input { s.kv_cells.min(s.batch_tokens) } else { s.kv_cells }) as usize
    }

    pub fn push(&mut self, job: EmbedJob) {
        let n = job.inputs.len();
        if n == 0 {
            let _ = job.reply.send(Ok(Vec::new()));
            return;
        }
        // An input with no tokens would never be decoded, so never finish.
        if let Some(i) = job.inputs.iter().position(Vec::is_empty) {
            let _ = job.reply.send(Err(EngineError::EmptyInput(i)));
            return;
        }
        self.queue.push_back(Pending {
            id: self.next_id,
            inputs: job.inputs,
            next: 0,
            vectors: vec![None; n],
            reply: job.reply,
        });
        self.next_id += 1;
    }

    /// Whether there is nothing to embed.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Runs one embedding decode: continues started inputs, starts queued ones while they fit,
    /// pools what the decode produced, and answers every job whose inputs are all done.
    pub fn step(&mut self) {
        let gone: Vec<u64> = self.queue.iter().filter(|p| p.reply.is_closed()).map(|p| p.id).collect();
        drop(self.release(&gone));
        if self.queue.is_empty() {
            return;
        }
        if self.ctx.is_none() {
            match self.create_context() {
                Ok(c) => self.ctx = Some(c),
                Err(e) => {
                    tracing::error!("{e}");
                    for p in self.queue.drain(..) {
                        let _ = p.reply.send(Err(EngineError::EmbedContext(e.clone())));
                    }
                    return;
                }
            }
        }
        self.admit();
        if let Err((jobs, reason)) = self.decode_once() {
            tracing::error!("embedding decode failed: {reason}");
            for p in self.release(&jobs) {
                let _ = p.reply.send(Err(EngineError::Decode(reason.clone())));
            }
        }
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].complete() {
                if let Some(p) = self.queue.remove(i) {
                    let _ = p.reply.send(Ok(p.vectors.into_iter().flatten().collect()));
                }
            } else {
                i += 1;
            }
        }
    }

    /// Starts queued inputs, in order, while a sequence is free and the KV cells hold them (and,
    /// for whole-input models, this decode holds them whole).
    fn admit(&mut self) {
        let mut cells: usize = self.running.iter().map(|r| r.tokens.len()).sum();
        let unfed: usize = self.running.iter().map(|r| r.tokens.len() - r.n_past).sum();
        let mut batch_room = (self.shape.batch_tokens as usize).saturating_sub(unfed);
        let max_input = self.max_input();
        let mut too_long = Vec::new();
        'jobs: for p in self.queue.iter_mut() {
            while p.next < p.inputs.len() {
                let Some(seq) = (0..EMBED_SEQS as i32).find(|s| self.running.iter().all(|r| r.seq != *s)) else {
                    break 'jobs;
                };
                let len = p.inputs[p.next].len();
                if len > max_input {
                    // `LoadedModel::embed` refuses these; never let one block the queue.
                    too_long.push((p.id, len));
                    continue 'jobs;
                }
                let fits_batch = !self.shape.whole_input || len <= batch_room;
                if cells + len > self.shape.kv_cells as usize || !fits_batch || batch_room == 0 {
                    break 'jobs;
                }
                cells += len;
                batch_room = batch_room.saturating_sub(len);
                self.running.push(Running {
                    job: p.id,
                    input: p.next,
                    seq,
                    tokens: std::mem::take(&mut p.inputs[p.next]),
                    n_past: 0,
                    in_batch: 0,
                    pool: PoolAccumulator::new(self.shape.pooling),
                });
                p.next += 1;
            }
        }
        let ids: Vec<u64> = too_long.iter().map(|t| t.0).collect();
        for p in self.release(&ids) {
            let tokens = too_long.iter().find(|t| t.0 == p.id).map_or(0, |t| t.1);
            let num_ctx = u32::try_from(max_input).unwrap_or(u32::MAX);
            let _ = p.reply.send(Err(EngineError::InputTooLong { tokens, num_ctx }));
        }
    }

    /// Puts the next tokens of every started input into one batch, decodes it, pools each
    /// input's piece, and frees the sequences of inputs now complete. On failure, names the
    /// jobs that had inputs in the decode.
    fn decode_once(&mut self) -> Result<(), (Vec<u64>, String)> {
        let Some((ctx, batch)) = self.ctx.as_mut() else { return Ok(()) };
        batch.clear();
        let mut room = self.shape.batch_tokens as usize;
        for r in &mut self.running {
            r.in_batch = 0;
            let take = (r.tokens.len() - r.n_past).min(room);
            for pos in r.n_past..r.n_past + take {
                // Pooled embeddings need every token as an output.
                if batch.add(r.tokens[pos], pos as i32, &[r.seq], true).is_err() {
                    break;
                }
                r.in_batch += 1;
            }
            room -= r.in_batch;
        }
        if batch.n_tokens() == 0 {
            return Ok(());
        }
        let in_decode = |running: &[Running]| running.iter().filter(|r| r.in_batch > 0).map(|r| r.job).collect::<Vec<_>>();
        if let Err(e) = ctx.decode(batch) {
            return Err((in_decode(&self.running), e.to_string()));
        }
        for r in self.running.iter_mut().filter(|r| r.in_batch > 0) {
            let Ok(piece) = ctx.embeddings_seq_ith(r.seq) else {
                return Err((vec![r.job], format!("llama.cpp returned no pooled embedding for sequence {}", r.seq)));
            };
            r.pool.add(piece, r.in_batch);
            r.n_past += r.in_batch;
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].n_past < self.running[i].tokens.len() {
                i += 1;
                continue;
            }
            let r = self.running.remove(i);
            let _ = ctx.clear_kv_cache_seq(u32::try_from(r.seq).ok(), None, None);
            if let Some(p) = self.queue.iter_mut().find(|p| p.id == r.job) {
                p.vectors[r.input] = Some(r.pool.finish());
            }
        }
        Ok(())
    }

    /// Takes `jobs` out of the queue, freeing the sequences their started inputs hold.
    fn release(&mut self, jobs: &[u64]) -> Vec<Pending> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let (dropped, kept): (Vec<Running>, Vec<Running>) = self.running.drain(..).partition(|r| jobs.contains(&r.job));
        self.running = kept;
        if let Some((ctx, _)) = self.ctx.as_mut() {
            for r in dropped {
                let _ = ctx.clear_kv_cache_seq(u32::try_from(r.seq).ok(), None, None);
            }
        }
        let (out, kept): (Vec<Pending>, Vec<Pending>) = self.queue.drain(..).partition(|p| jobs.contains(&p.id));
        self.queue = kept.into();
        out
    }

    fn create_context(&mut self) -> Result<(LlamaContext<'m>, LlamaBatch<'static>), String> {
        let s = self.shape;
        let params = LlamaContextParams::default()
            .with_embeddings(true)
            .with_pooling_type(s.pooling.llama())
            .with_n_ctx(NonZeroU32::new(s.kv_cells))
            .with_n_batch(s.batch_tokens)
            .with_n_ubatch(s.batch_tokens)
            .with_n_seq_max(EMBED_SEQS)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads_batch)
            // All sequences share the cells: one long input or many short ones.
            .with_kv_unified(true);
        let mut ctx = self
            .model
            .new_context(self.backend, params)
            .map_err(|e| format!("cannot create the embedding context: {e}"))?;
        if let Some(adapter) = self.adapter.as_mut() {
            ctx.lora_adapter_set(adapter, 1.0)
                .map_err(|e| format!("cannot apply the adapter to the embedding context: {e}"))?;
        }
        tracing::info!(
            kv_cells = s.kv_cells,
            batch = s.batch_tokens,
            seqs = EMBED_SEQS,
            pooling = ?s.pooling,
            whole_input = s.whole_input,
            "embedding context ready"
        );
        Ok((ctx, LlamaBatch::new(s.batch_tokens as usize, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0; 4];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 4]);
    }

    #[test]
    fn shorten_keeps_the_first_dims_renormalized() {
        let v = shorten(vec![1.0, 1.0, 5.0, 7.0], 2);
        assert_eq!(v.len(), 2);
        assert!((norm(&v) - 1.0).abs() < 1e-6);
        assert!((v[0] - v[1]).abs() < 1e-6);
    }

    #[test]
    fn mean_over_pieces_equals_mean_over_tokens() {
        // Tokens 1, 2, 3 | 10 in two pieces: the pieces' means are 2 and 10; the mean is 4.
        let mut acc = PoolAccumulator::new(Pooling::Mean);
        acc.add(&[2.0, -2.0], 3);
        acc.add(&[10.0, -10.0], 1);
        assert_eq!(acc.finish(), vec![4.0, -4.0]);
    }

    #[test]
    fn cls_keeps_the_first_piece_and_last_the_last() {
        let mut cls = PoolAccumulator::new(Pooling::Cls);
        let mut last = PoolAccumulator::new(Pooling::Last);
        for (piece, n) in [([1.0], 4), ([2.0], 4), ([3.0], 1)] {
            cls.add(&piece, n);
            last.add(&piece, n);
        }
        assert_eq!(cls.finish(), vec![1.0]);
        assert_eq!(last.finish(), vec![3.0]);
    }

    #[test]
    fn pooling_follows_the_gguf_and_defaults_to_mean() {
        assert_eq!(Pooling::from_gguf(None), Pooling::Mean);
        assert_eq!(Pooling::from_gguf(Some(0)), Pooling::Mean);
        assert_eq!(Pooling::from_gguf(Some(1)), Pooling::Mean);
        assert_eq!(Pooling::from_gguf(Some(2)), Pooling::Cls);
        assert_eq!(Pooling::from_gguf(Some(3)), Pooling::Last);
        assert_eq!(Pooling::from_gguf(Some(4)), Pooling::Mean);
    }

    #[test]
    fn batch_size_follows_the_logits_budget() {
        // 49152 entries x 8 bytes: 170 tokens fit 64 MiB, rounded down to 160.
        assert_eq!(embed_batch_tokens(49_152, 4096, 512, false), 160);
        // A 262144-entry vocabulary gets the floor.
        assert_eq!(embed_batch_tokens(262_144, 4096, 512, false), EMBED_MIN_BATCH);
        // A small vocabulary is capped by the server's batch size and by the context.
        assert_eq!(embed_batch_tokens(1000, 4096, 512, false), 512);
        assert_eq!(embed_batch_tokens(1000, 100, 512, false), 100);
        // Non-causal models take a whole slot's context per decode.
        assert_eq!(embed_batch_tokens(30_522, 2048, 512, true), 2048);
    }

    #[test]
    fn fair_share_alternates_by_time_not_by_turns() {
        let ms = Duration::from_millis;
        let mut share = FairShare::default();
        // Alone, embeddings always run.
        assert!(share.embed_now(false));
        share.embedded(ms(500));
        assert!(share.embed_now(false));
        // With a chat going, a 500 ms decode is followed by 500 ms of generation steps.
        share.embedded(ms(500));
        assert!(!share.embed_now(true));
        for _ in 0..49 {
            share.generated(ms(10), true);
            assert!(!share.embed_now(true));
        }
        share.generated(ms(10), true);
        assert!(share.embed_now(true));
        // Time the chat had alone earns embeddings no credit.
        share.generated(ms(5000), false);
        share.embedded(ms(100));
        assert!(!share.embed_now(true));
    }

    #[test]
    fn non_causal_models_need_whole_inputs() {
        assert!(needs_whole_input("bert", Some(false)));
        assert!(needs_whole_input("gemma-embedding", None));
        assert!(!needs_whole_input("llama", None));
        assert!(!needs_whole_input("qwen3", Some(true)));
    }
}
