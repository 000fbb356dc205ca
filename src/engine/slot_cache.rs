//! What each slot's llama.cpp sequence holds between requests, for the worker: the prompt
//! tokens its KV cache covers, the prefixes saved from slots that were taken over (a
//! `PrefixStore` of llama.cpp sequence states), and those kept on disk from earlier loads
//! (`DiskPrefixes`), where all of them go when the worker ends. Owns the invariant that a free
//! slot's cached tokens are exactly the positions its sequence holds; it never decodes.

use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::disk_prefixes::DiskPrefixes;
use super::exact;
use super::prefix::{self, PrefixStore};

pub(super) fn clear_seq(ctx: &mut LlamaContext, seq: usize) {
    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
}


/// What each slot's sequence holds between requests, and the prefixes saved from slots that
/// were taken over. Keeps the invariant that a free slot's `cached` tokens are exactly the
/// positions its sequence holds in the KV cache (or it is empty and so is the sequence).
pub(super) struct Prefixes {
    cached: Vec<Vec<LlamaToken>>,
    /// Per slot: how far from position 0 its sequence was computed in tiled batches (`exact`).
    tiled: Vec<usize>,
    /// Exact reuse: `Some(batch size)`, prompts being read in chunks aligned to it.
    exact: Option<usize>,
    store: PrefixStore<LlamaToken, SeqState>,
    /// Whether the store's bound was set from a measured state size yet.
    sized: bool,
    /// The model's sliding-window size (0 when it has none).
    n_swa: u32,
    /// KV cells of the whole context (all slots).
    n_ctx_total: u32,
    /// The budget's cap on the store (`LoadSettings::prefix_store_limit`).
    store_limit: u64,
    /// Prefixes saved by earlier loads of this model, and where this one's go at the end.
    disk: Option<DiskPrefixes>,
}

impl Prefixes {
    /// `reuse`: the prefix reuse mode and the batch size that exact reuse aligns prompts to.
    pub(super) fn new(model: &LlamaModel, slots: usize, n_ctx_total: u32, store_limit: u64, disk: Option<DiskPrefixes>, reuse: (exact::Reuse, usize)) -> Prefixes {
        let arch = model.meta_val_str("general.architecture").unwrap_or_default();
        let n_swa = model
            .meta_val_str(&format!("{arch}.attention.sliding_window"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Prefixes {
            cached: vec![Vec::new(); slots],
            tiled: vec![0; slots],
            // A recurrent state cannot be cut back to its tiled part: such models reuse fast.
            exact: (reuse.0.exact_for(u64::from(n_swa)) && !model.is_recurrent() && !model.is_hybrid()).then_some(reuse.1),
            store: PrefixStore::new(store_limit),
            sized: false,
            n_swa,
            n_ctx_total,
            store_limit,
            disk,
        }
    }

    /// A request left slot `seq` with `tokens` in its sequence.
    pub(super) fn release(&mut self, seq: usize, tokens: Vec<LlamaToken>) {
        self.cached[seq] = tokens;
    }

    /// Whether the prefix store and the disk are used: not with exact reuse on a sliding-window
    /// model, whose restored states are not what a fresh read computes (`exact::Reuse`).
    fn stores(&self) -> bool {
        self.exact.is_none() || self.n_swa == 0
    }

    /// Slot `seq`'s sequence can no longer be trusted: empty it.
    pub(super) fn forget(&mut self, ctx: &mut LlamaContext, seq: usize) {
        clear_seq(ctx, seq);
        self.cached[seq].clear();
        self.tiled[seq] = 0;
    }

    /// Exact reuse: the batch size prompts are read in chunks aligned to.
    pub(super) fn exact(&self) -> Option<usize> {
        self.exact
    }

    /// Exact reuse, with the worker idle: re-reads in one tiled batch the end of a free slot's
    /// sequence that was not computed in tiled batches (an answer decoded one token at a time),
    /// so that the conversation's next turn can keep it. What doesn't fit in one batch is
    /// dropped from the slot's cache. False when no slot has anything to re-read.
    pub(super) fn retile_step(&mut self, ctx: &mut LlamaContext, batch: &mut LlamaBatch) -> bool {
        let Some(batch_size) = self.exact else { return false };
        // At least TILED tokens, so the batch takes the tiled path.
        let from = |s: usize| self.tiled[s].min(self.cached[s].len() - exact::TILED);
        // A slot whose window before that start is gone is left as it is (its next turn keeps
        // what it can).
        let Some(seq) = (0..self.cached.len()).find(|&s| {
            self.cached[s].len() > self.tiled[s].max(exact::TILED - 1) && prefix::window_intact(from(s), ctx.kv_cache_seq_pos_min(s as i32), self.n_swa)
        }) else {
            return false;
        };
        let (len, from) = (self.cached[seq].len(), from(seq));
        let to = (from + batch_size).min(len);
        if self.trim(ctx, seq, len, from) != from {
            self.cached[seq].clear();
            return true;
        }
        batch.clear();
        for (i, &token) in self.cached[seq][from..to].iter().enumerate() {
            let pos = from + i;
            if batch.add(token, pos as i32, &[seq as i32], pos + 1 == to).is_err() {
                break;
            }
        }
        let read = batch.n_tokens() as usize;
        if read < exact::TILED || ctx.decode(batch).is_err() {
            tracing::debug!(slot = seq, "could not re-read a cached answer; dropping the slot's cache");
            self.forget(ctx, seq);
            return true;
        }
        self.cached[seq].truncate(from + read);
        self.fed(seq, from, from + read, read);
        tracing::debug!(slot = seq, from, to = from + read, "re-read a cached answer in a tiled batch (exact reuse)");
        true
    }

    /// Slot `seq` had positions `[from, to)` decoded in a batch of `batch_tokens` tokens.
    pub(super) fn fed(&mut self, seq: usize, from: usize, to: usize, batch_tokens: usize) {
        self.tiled[seq] = exact::advance(self.tiled[seq], from, to, batch_tokens);
    }

    /// Picks one of the `free` slots for `prompt` and prepares its sequence: keeps the longest
    /// usable cached prefix (from the slot, the store, or the disk; on a tie the nearest),
    /// removes the rest. Returns the slot and how many prompt tokens are already in its cache.
    pub(super) fn assign(&mut self, ctx: &mut LlamaContext, free: &[usize], prompt: &[LlamaToken]) -> Option<(usize, usize)> {
        let candidates: Vec<(usize, &[LlamaToken])> = free.iter().map(|&s| (s, self.cached[s].as_slice())).collect();
        let (seq, common) = prefix::pick_slot(&candidates, prompt)?;
        let mut held = std::mem::take(&mut self.cached[seq]);
        // Exact reuse: only the slot's own tiled positions are known to be what a fresh read
        // computes (the store and the disk hold nothing else).
        let usable = if self.exact.is_some() { common.min(self.tiled[seq]) } else { common };
        let mut keep = self.keep(usable, prompt.len());
        if !self.stores() {
            return Some((seq, self.trim(ctx, seq, held.len(), keep)));
        }
        let on_disk = self.disk.as_ref().and_then(|d| d.best(prompt)).filter(|&(_, c)| c > usable);
        let from_store = self.store.take_best(prompt, on_disk.map_or(usable, |(_, c)| c - 1));
        if from_store.is_some() || on_disk.is_some() {
            if held.len() >= prefix::MIN_SAVED_TOKENS {
                self.save(ctx, seq, held);
            }
            clear_seq(ctx, seq);
            let restored = match (from_store, on_disk) {
                (Some((tokens, state, shared)), _) => match ctx.state_seq_set(&state, seq as i32) {
                    Ok(()) => Some((tokens, shared)),
                    Err(e) => {
                        tracing::warn!("could not restore a saved prefix: {e}");
                        None
                    }
                },
                (None, Some((i, shared))) => {
                    let max_tokens = self.n_ctx_total as usize;
                    self.disk.as_mut().and_then(|d| d.restore(ctx, seq, i, max_tokens)).map(|tokens| (tokens, shared))
                }
                (None, None) => None,
            };
            (held, keep) = match restored {
                Some((tokens, shared)) => (tokens, self.keep(shared, prompt.len())),
                None => (Vec::new(), 0),
            };
            // With exact reuse a saved state holds tiled positions only (`save_tiled`); without
            // it, nothing is known of how it was computed.
            self.tiled[seq] = if self.exact.is_some() { held.len() } else { 0 };
        } else if prefix::worth_saving(held.len(), keep) {
            self.save(ctx, seq, held.clone());
        }
        Some((seq, self.trim(ctx, seq, held.len(), keep)))
    }

    /// How many of a prompt of `n` tokens' positions a cached prefix sharing `usable` of them
    /// can keep: with exact reuse, cut where a fresh read would resume (`exact::exact_keep`).
    fn keep(&self, usable: usize, n: usize) -> usize {
        match self.exact {
            Some(batch) => exact::exact_keep(usable, n, batch),
            None => prefix::reusable(usable, n),
        }
    }

    /// With exact reuse, cuts slot `seq`'s sequence (holding `tokens`) to its tiled positions
    /// before it is saved, so that the store and the disk hold only KV that a fresh read
    /// computes the same way; returns the tokens it still holds.
    fn save_tiled(&mut self, ctx: &mut LlamaContext, seq: usize, mut tokens: Vec<LlamaToken>) -> Vec<LlamaToken> {
        if self.exact.is_some() && self.tiled[seq] < tokens.len() {
            let kept = self.trim(ctx, seq, tokens.len(), self.tiled[seq]);
            tokens.truncate(kept);
        }
        tokens
    }

    /// The worker is ending: what the slots and the store hold goes to disk (when configured),
    /// entries of 64 tokens or more, then every model's entries are held to the disk bound.
    /// With exact reuse, only the tiled part of a slot: an answer not yet re-read while idle is
    /// not re-read now, so an unload never waits for a decode (the next turn reads it again).
    pub(super) fn persist(&mut self, ctx: &mut LlamaContext) {
        if self.disk.is_none() || !self.stores() {
            return;
        }
        let started = std::time::Instant::now();
        for seq in 0..self.cached.len() {
            let tokens = std::mem::take(&mut self.cached[seq]);
            let tokens = self.save_tiled(ctx, seq, tokens);
            if tokens.len() >= prefix::MIN_SAVED_TOKENS {
                if let Some(disk) = self.disk.as_mut() {
                    disk.save(ctx, seq, &tokens);
                }
            }
        }
        let Some(disk) = self.disk.as_mut() else { return };
        ctx.clear_kv_cache();
        // A stored state goes back into a sequence to be written in llama.cpp's file format.
        for (tokens, state) in self.store.drain() {
            if ctx.state_seq_set(&state, 0).is_ok() {
                disk.save(ctx, 0, &tokens);
            }
            clear_seq(ctx, 0);
        }
        disk.enforce_limit();
        tracing::debug!(entries = disk.len(), elapsed_ms = started.elapsed().as_millis() as u64, "prefixes saved to disk");
    }

    /// Cuts slot `seq`'s sequence (holding `held` positions) to its first `keep`; returns what
    /// it kept: 0 after clearing it when the cut is impossible (a sliding window that no longer
    /// covers the kept end, or a recurrent state, which cannot roll back).
    fn trim(&mut self, ctx: &mut LlamaContext, seq: usize, held: usize, keep: usize) -> usize {
        self.tiled[seq] = self.tiled[seq].min(keep);
        if keep == 0 {
            clear_seq(ctx, seq);
            self.tiled[seq] = 0;
            return 0;
        }
        let id = seq as i32;
        let complete = usize::try_from(ctx.kv_cache_seq_pos_max(id)).is_ok_and(|max| max + 1 >= keep)
            && prefix::window_intact(keep, ctx.kv_cache_seq_pos_min(id), self.n_swa);
        let cut = complete
            && (keep == held || matches!(ctx.clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None), Ok(true)));
        if cut {
            keep
        } else {
            tracing::debug!(slot = seq, keep, "cached prefix not reusable here; reading the whole prompt");
            clear_seq(ctx, seq);
            self.tiled[seq] = 0;
            0
        }
    }

    /// Frees the cells of the free slot holding the most cached tokens, saving them to the
    /// store first if worth it. False when no free slot holds any.
    pub(super) fn evict_one(&mut self, ctx: &mut LlamaContext) -> bool {
        let Some(seq) = (0..self.cached.len()).filter(|&s| !self.cached[s].is_empty()).max_by_key(|&s| self.cached[s].len()) else {
            return false;
        };
        let held = std::mem::take(&mut self.cached[seq]);
        if held.len() >= prefix::MIN_SAVED_TOKENS {
            self.save(ctx, seq, held);
        }
        clear_seq(ctx, seq);
        self.tiled[seq] = 0;
        true
    }

    /// Removes slot `seq`'s positions from `keep` on (guessed tokens that did not hold). False
    /// when the rest is not usable any more (a sliding window that no longer covers its end)
    /// and the sequence was emptied instead.
    pub(super) fn roll_back(&mut self, ctx: &mut LlamaContext, seq: usize, keep: usize) -> bool {
        self.trim(ctx, seq, usize::MAX, keep) == keep
    }

    /// Saves slot `seq`'s sequence (holding `tokens`) into the store; with exact reuse, only
    /// its tiled positions, and the sequence is cut to them.
    fn save(&mut self, ctx: &mut LlamaContext, seq: usize, tokens: Vec<LlamaToken>) {
        if tokens.is_empty() || self.store.limit() == 0 || !self.stores() {
            return;
        }
        let tokens = self.save_tiled(ctx, seq, tokens);
        if tokens.len() < prefix::MIN_SAVED_TOKENS {
            return;
        }
        match ctx.state_seq_get(seq as i32, LlamaStateSeqFlags::empty()) {
            Ok(state) => {
                let bytes = state.byte_len() as u64;
                if !self.sized {
                    let per_token = bytes / tokens.len() as u64;
                    self.store.set_limit(prefix::prefix_store_bytes(per_token * u64::from(self.n_ctx_total), self.store_limit));
                    self.sized = true;
                }
                self.store.insert(tokens, state, bytes);
            }
            Err(e) => tracing::warn!("could not save a cached prefix: {e}"),
        }
    }
}
