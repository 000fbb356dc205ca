//! One request holding a slot (one llama.cpp sequence) in the worker: its tokens and how many
//! are in the KV cache, its sampler, stop matching, speculative guesses and accounting; how a
//! sampled token is handled (`step`) and how a guess is made (`add_draft`) and checked
//! (`verify`). The worker (`worker.rs`) schedules the batch; this file never decodes.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::lookup::{self, DraftControl};
use super::text::{StopMatcher, StopScan, Utf8Stream};
use super::worker::Job;
use super::wrapup::WrapUp;
use super::{sampler, Completion, DoneReason, EngineError, Event, TokenLogprob};
use crate::spec::options::{PredictLimit, SamplingOptions};

/// A request holding a slot (one llama.cpp sequence).
pub(super) struct Active {
    pub(super) events: UnboundedSender<Event>,
    pub(super) options: SamplingOptions,
    pub(super) sampler: sampler::TokenSampler,
    /// The sequence's tokens: prompt, then output. `history[..n_past]` is in the KV cache.
    pub(super) history: Vec<LlamaToken>,
    pub(super) n_past: usize,
    /// The context this request may use.
    pub(super) n_ctx: usize,
    pub(super) prompt_tokens: usize,
    /// Prompt tokens whose KV came from the slot's cache or the prefix store, not decoded.
    pub(super) cached_tokens: usize,
    pub(super) generated: u32,
    /// Where a structured answer is, to wrap it up properly near its token limit.
    pub(super) json: super::wrapup::JsonLexState,
    /// Where this sequence's logits are in the current batch; guessed tokens' follow.
    pub(super) logits_idx: Option<i32>,
    /// Tokens guessed to follow `history` (prompt lookup), decoded in the current batch.
    pub(super) draft: Vec<LlamaToken>,
    /// `None` when this sequence does not guess (speculative decoding off, or a model whose
    /// state can't be rolled back).
    pub(super) drafting: Option<DraftControl>,
    /// Guessed tokens decoded and accepted, for the log.
    pub(super) drafted: usize,
    pub(super) accepted: usize,
    /// `n_past` before the current batch, to take it back if the batch finds no room.
    pub(super) fed_from: usize,
    /// Waiting for room in the KV pool: its cells were given up, and it reads its history
    /// again once another request has finished.
    pub(super) suspended: bool,
    utf8: Utf8Stream,
    pub(super) stop: StopMatcher,
    pub(super) started: Instant,
    pub(super) first_token_at: Option<Instant>,
}

impl Active {
    /// Fails (after telling the client) when the request's grammar does not compile.
    pub(super) fn new(job: Job, model: &LlamaModel, n_ctx_slot: u32, speculate: bool) -> Option<Active> {
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
            fed_from: 0,
            suspended: false,
            utf8: Utf8Stream::default(),
            started: Instant::now(),
            first_token_at: None,
        })
    }

    /// How many more tokens this request may generate: its `num_predict` (at most its
    /// context's size, so the context shift cannot run forever), or the room left in its
    /// context.
    pub(super) fn tokens_left(&self) -> usize {
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
    pub(super) fn unfed(&self) -> usize {
        self.history.len() - self.n_past
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(Event::Text(text));
        }
    }

    /// The tokens whose KV is in this request's sequence: what its slot offers the next prompt.
    pub(super) fn in_cache(&self) -> Vec<LlamaToken> {
        self.history[..self.n_past].to_vec()
    }

    /// Flushes held-back text and reports the end of generation.
    pub(super) fn finish(mut self, reason: DoneReason) {
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
    pub(super) fn make_room(&mut self) -> bool {
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

/// Samples sequence `a`'s next token from the logits at batch index `idx`, then, while the
/// sampled token is the one guessed next (`a.draft`), the token after it from the guessed
/// token's logits, and so on: the tokens plain decoding would have produced one step at a
/// time, drawn from the same sampler in the same order. The guessed tokens that held are then
/// in `history[..n_past]`; the guess is recorded and cleared. Returns why generation ends, if
/// it does, and how many guessed tokens did not hold (still in the KV cache after `n_past`).
pub(super) fn verify(a: &mut Active, ctx: &LlamaContext, model: &LlamaModel, idx: i32, closers: &mut Option<sampler::WrapUpBias>) -> Result<(Option<DoneReason>, usize), String> {
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
    if let Some(control) = a.drafting.as_mut() {
        control.record(draft.len(), held);
    }
    a.drafted += draft.len();
    a.accepted += held;
    Ok((done, draft.len() - held))
}

/// Samples one token for `a` from the logits at batch index `idx` (biased toward closing a
/// structured answer near its token limit) and reports its log-probability when asked.
fn sample(a: &mut Active, ctx: &LlamaContext, model: &LlamaModel, idx: i32, closers: &mut Option<sampler::WrapUpBias>) -> Result<LlamaToken, String> {
    let wrap_up = if a.sampler.constrained() { a.json.wrap_up(a.tokens_left()) } else { None };
    if wrap_up.is_some() && closers.is_none() {
        *closers = Some(sampler::wrap_up_bias(model));
    }
    let bias = closers.as_ref().and_then(|b| match wrap_up? {
        WrapUp::Close | WrapUp::Force if a.json.in_string => Some(b.in_string.as_slice()),
        WrapUp::Close | WrapUp::Force => Some(b.outside.as_slice()),
        WrapUp::Compact => Some(b.compact.as_slice()),
    });
    let bias = bias.map(|b| (b, if wrap_up == Some(WrapUp::Force) { sampler::WRAP_UP_FORCE } else { 1.0 }));
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
pub(super) const SPECULATE_MAX_STREAMS: usize = 2;

/// Puts a guess at what follows sequence `a` into the batch after its last token, each with its
/// logits, as many tokens as its `DraftControl` wants and its limits, its context and the
/// batch's `room` allow. Returns the tokens added.
pub(super) fn add_draft(batch: &mut LlamaBatch, a: &mut Active, seq: usize, room: usize) -> usize {
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
pub(super) fn step(a: &mut Active, model: &LlamaModel, token: LlamaToken) -> Option<DoneReason> {
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
