//! Exact prefix reuse (`--prefix-reuse exact`): a cached prefix is reused only as far as its KV
//! is what a fresh prefill of the same prompt computes, bit for bit, so an answer depends on the
//! request alone, not on what the cache held.
//!
//! Why: llama.cpp's CPU kernels compute a token's K and V slightly differently in a batch of 64
//! tokens or more than in a smaller one: flash attention takes its tiled path (`GGML_FA_TILE_Q`)
//! instead of hearth's kernel for fewer rows, and K-quant weights llama.cpp's tiled kernels
//! instead of ggml's dot products (build.rs `SAME_PATH_EDITS`, which also make one token take the
//! same paths as a batch of up to 63). Within one path a token's result does not depend on the
//! other tokens in its batch or where the batch starts (measured: a server holding other
//! conversations' cells answers a prompt with the same log-probabilities as a new server), but
//! the paths differ in the last bits, and a greedy answer follows them where two tokens are
//! nearly tied. So a conversation's second turn that reused the first turn's cache (the answer
//! decoded one token at a time, the new message read in a batch of a few tokens) could answer
//! differently from the same messages sent to a server that read them afresh.
//!
//! When: `--prefix-reuse auto` (the default) reuses exactly on models without a sliding window
//! (`Reuse::exact_for`), where the prefix store and the disk keep only tiled KV and restore it
//! exactly; `exact` also on sliding-window models, without the store and the disk there.
//! Recurrent and hybrid models, whose state cannot be cut back, reuse fast in every mode.
//!
//! What: in exact mode the worker reads prompts in chunks that never cross a multiple of the
//! batch size, as a fresh prompt of N tokens is read: [0, B), [B, 2B), ..., [kB, N). Each slot
//! records how far from position 0 its sequence was computed in batches of `TILED` tokens or
//! more (`advance`), and a new prompt keeps at most that much of it, cut so that the chunk it
//! resumes in is read by the same path a fresh prefill reads it by (`exact_keep`). Tokens of an
//! answer, decoded one at a time, are read again in one tiled batch once the worker is idle
//! (`Prefixes::retile_step`), or with the next prompt if it comes first.
//!
//! Still inexact: requests decoded together (another stream's tokens change the batch, and so
//! the path, of everyone's), and the README says so.

/// `--prefix-reuse`: how a cached prefix is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reuse {
    /// Exact for models without a sliding window, fast for those with one (the default).
    #[default]
    Auto,
    Exact,
    Fast,
}

impl Reuse {
    pub fn parse(s: &str) -> Result<Reuse, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Reuse::Auto),
            "exact" => Ok(Reuse::Exact),
            "fast" => Ok(Reuse::Fast),
            other => Err(format!("unknown prefix reuse {other:?}: use auto, exact or fast")),
        }
    }

    /// Whether a model whose sliding window is `n_swa` tokens (0: none) reuses exactly. `auto`
    /// leaves sliding-window models fast: a saved state of theirs holds only the window, and
    /// restored into other KV cells it does not answer bit for bit as a fresh read (measured on
    /// Gemma 3 with a 1.1k-token history), so exact reuse would give up the prefix store and
    /// the disk (warm after an eviction or a restart) for them.
    pub fn exact_for(self, n_swa: u64) -> bool {
        match self {
            Reuse::Auto => n_swa == 0,
            Reuse::Exact => true,
            Reuse::Fast => false,
        }
    }
}

/// The fewest tokens in a batch for which flash attention takes its tiled path
/// (`GGML_FA_TILE_Q` in ggml-cpu), and K-quant weights llama.cpp's tiled kernels.
pub const TILED: usize = 64;

/// How many of a slot's cached positions a prompt of `n` tokens keeps, given that the first
/// `limit` of them (at most the common prefix) were computed in tiled batches, when prompts are
/// read in chunks aligned to `batch`: the chunk the prompt resumes in must be read as a fresh
/// prefill reads that chunk (tiled when it holds `TILED` tokens or more, else from its start),
/// and at least one prompt token is read, for its logits.
pub fn exact_keep(limit: usize, n: usize, batch: usize) -> usize {
    let r = limit.min(n.saturating_sub(1));
    let start = r / batch * batch;
    if r == start {
        return r;
    }
    let end = (start + batch).min(n);
    if end - start < TILED {
        // A fresh prefill reads this chunk in a small batch: read it whole, the same way.
        return start;
    }
    // Leave the resumed chunk at least TILED tokens, so it too is read by the tiled path.
    r.min(end - TILED)
}

/// How many prompt tokens the next chunk of a sequence at `from` takes, with `unfed` left and
/// `room` in the batch: never past the next multiple of `batch`.
pub fn aligned_take(from: usize, unfed: usize, room: usize, batch: usize) -> usize {
    unfed.min(room).min(batch - from % batch)
}

/// A slot whose positions `[0, tiled)` were computed in tiled batches has had `[from, to)`
/// decoded in a batch of `batch_tokens` tokens: how far its tiled positions reach now.
pub fn advance(tiled: usize, from: usize, to: usize, batch_tokens: usize) -> usize {
    if batch_tokens >= TILED && from <= tiled {
        to
    } else {
        tiled.min(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_exact_unless_the_model_has_a_sliding_window() {
        assert_eq!(Reuse::parse(" Exact "), Ok(Reuse::Exact));
        assert_eq!(Reuse::parse("auto"), Ok(Reuse::default()));
        assert!(Reuse::parse("exactly").is_err());
        assert!(Reuse::Auto.exact_for(0) && !Reuse::Auto.exact_for(512));
        assert!(Reuse::Exact.exact_for(512) && !Reuse::Fast.exact_for(0));
    }

    #[test]
    fn a_resumed_chunk_is_read_as_a_fresh_prefill_reads_it() {
        // Whole chunks and aligned points are kept as they are.
        assert_eq!(exact_keep(512, 700, 512), 512);
        assert_eq!(exact_keep(1024, 2000, 512), 1024);
        // The prompt's last token is always read again.
        assert_eq!(exact_keep(700, 700, 512), 636); // 699, then leave 64 tokens in [512, 700)
        // Resuming inside a chunk a fresh prefill reads tiled: at least 64 tokens are left in it.
        assert_eq!(exact_keep(600, 700, 512), 600);
        assert_eq!(exact_keep(650, 700, 512), 636);
        assert_eq!(exact_keep(1000, 1100, 512), 960); // 24 tokens left in [512, 1024) would be a small batch
        // A chunk a fresh prefill reads in a small batch is read whole.
        assert_eq!(exact_keep(530, 560, 512), 512);
        assert_eq!(exact_keep(540, 541, 512), 512);
        // Nothing tiled, nothing kept; a tiled start is kept and the rest of its chunk is tiled.
        assert_eq!(exact_keep(0, 700, 512), 0);
        assert_eq!(exact_keep(30, 700, 512), 30);
    }

    #[test]
    fn chunks_stop_at_multiples_of_the_batch() {
        assert_eq!(aligned_take(0, 1000, 512, 512), 512);
        assert_eq!(aligned_take(600, 1000, 512, 512), 424);
        assert_eq!(aligned_take(600, 10, 512, 512), 10);
        assert_eq!(aligned_take(600, 1000, 100, 512), 100);
    }

    #[test]
    fn only_tiled_batches_from_the_frontier_move_it() {
        assert_eq!(advance(0, 0, 512, 512), 512);
        assert_eq!(advance(512, 512, 600, 88), 600);
        // A small batch, or one token decoded, stops it where that batch began.
        assert_eq!(advance(600, 600, 620, 20), 600);
        assert_eq!(advance(600, 600, 601, 1), 600);
        // Past a gap nothing moves; positions read again lower it.
        assert_eq!(advance(600, 650, 800, 150), 600);
        assert_eq!(advance(600, 0, 30, 30), 0);
        assert_eq!(advance(600, 100, 300, 200), 300);
    }
}
