//! Prompt-lookup drafting for speculative decoding, without a second model: when the last few
//! tokens of a sequence occurred before in it (a quote from a document, code being edited, a
//! name repeated), the tokens that followed then are a good guess for what follows now. The
//! worker decodes the guess together with the sequence's next token in one batch and keeps
//! the guessed tokens its own sampler would have picked (`sequence::verify`), so the answer is
//! the one plain decoding gives (to the last bits of llama.cpp's kernels: README "Speculative
//! decoding").
//!
//! Pure data over token slices; it never sees the context. A wrong guess costs the extra
//! tokens' share of a decode step, so `DraftControl` drafts more while guesses hold, fewer when
//! they fail, and stops guessing for a growing number of steps after guesses that mostly fail.

/// Reads the `speculative` setting: `lookup` (guess from the context) or `off`.
pub fn parse_mode(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "lookup" => Ok(true),
        "off" | "none" => Ok(false),
        other => Err(format!("unknown speculative decoding mode {other:?}: use lookup or off")),
    }
}

/// The longest and shortest run of trailing tokens looked up; longer runs are tried first
/// (a longer match is a better guess). Two tokens matched often enough in free text to cost
/// SmolLM2 9% of its decode on a story (against 4% with three) while gaining less on copies
/// (`benches/speculative.sh`, 2-vCPU Xeon: README "Speculative decoding").
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 3;
/// The shortest guess worth a place in a batch.
const MIN_DRAFT: usize = 2;

/// The most tokens guessed at once, and the first guess's length.
pub const MAX_DRAFT: usize = 16;
const FIRST_DRAFT: usize = 4;
/// Steps without guessing after `n` guesses in a row that all failed: 2^n, at most this.
const MAX_PAUSE: u32 = 64;

/// Up to `max` tokens that followed the latest earlier occurrence of `history`'s last n tokens
/// (n from `MAX_NGRAM` down to `MIN_NGRAM`); empty when none occurred.
pub fn propose<T: PartialEq + Copy>(history: &[T], max: usize) -> Vec<T> {
    if max == 0 {
        return Vec::new();
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if history.len() <= n {
            continue;
        }
        let tail = &history[history.len() - n..];
        // The latest occurrence that is not the tail itself and has a token after it.
        let found = (0..history.len() - n).rev().find(|&start| &history[start..start + n] == tail);
        if let Some(start) = found {
            let from = start + n;
            let to = (from + max).min(history.len());
            return history[from..to].to_vec();
        }
    }
    Vec::new()
}

/// One sequence's guessing policy: how long a guess to make, from how the last ones fared.
#[derive(Debug, Clone)]
pub struct DraftControl {
    len: usize,
    /// Guesses in a row of which less than half held.
    failures: u32,
    /// Steps left before guessing again.
    pause: u32,
}

impl Default for DraftControl {
    fn default() -> Self {
        DraftControl { len: FIRST_DRAFT, failures: 0, pause: 0 }
    }
}

impl DraftControl {
    /// How many tokens to guess at this step (0: decode plainly). Counts a paused step.
    pub fn want(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.len
    }

    /// `accepted` of the `drafted` guessed tokens held.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        // Each guessed token costs a share of a step whether it holds or not (more, deep into
        // a long context, where its attention reads every cell): a guess that mostly fails
        // is a loss, so it counts as a failure.
        if accepted * 2 < drafted {
            self.failures += 1;
            self.pause = (1u32 << self.failures.min(6)).min(MAX_PAUSE);
            self.len = (accepted + 1).max(MIN_DRAFT).min(self.len / 2).max(MIN_DRAFT);
        } else {
            self.failures = 0;
            self.len = if accepted == drafted { (self.len * 2).min(MAX_DRAFT) } else { (accepted + 1).max(MIN_DRAFT) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_tail() {
        // "1 2 3" occurred twice before; the later one is followed by 7 8.
        let h = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 0, 1, 2, 3];
        assert_eq!(propose(&h, 4), vec![7, 8, 0, 1]);
        let h = [5, 1, 2, 3, 6, 6, 9, 1, 2, 3];
        assert_eq!(propose(&h, 2), vec![6, 6]);
        // A 4-token match wins over a later 3-token one.
        let h = [1, 2, 3, 4, 10, 11, 2, 3, 4, 20, 1, 2, 3, 4];
        assert_eq!(propose(&h, 2), vec![10, 11]);
        // The guess stops where the history does.
        let h = [7, 8, 9, 7, 8, 9];
        assert_eq!(propose(&h, 5), vec![7, 8, 9]);
    }

    #[test]
    fn proposes_nothing_without_a_repeat_of_three_tokens() {
        assert!(propose(&[1, 2, 3, 4, 5, 1], 4).is_empty());
        assert!(propose(&[1, 2, 9, 1, 2], 4).is_empty());
        assert!(propose::<i32>(&[], 4).is_empty());
        assert!(propose(&[1, 2], 4).is_empty());
        assert!(propose(&[1, 2, 3, 1, 2, 3], 0).is_empty());
    }

    #[test]
    fn guesses_grow_while_they_hold_and_pause_longer_after_each_failure() {
        let mut c = DraftControl::default();
        assert_eq!(c.want(), FIRST_DRAFT);
        c.record(4, 4);
        assert_eq!(c.want(), 8);
        c.record(8, 8);
        c.record(16, 16);
        assert_eq!(c.want(), MAX_DRAFT);
        // Half or more held: one more than held next time.
        c.record(16, 9);
        assert_eq!(c.want(), 10);
        // Less than half held: a pause, and a guess no longer than what held.
        c.record(10, 4);
        assert_eq!((c.want(), c.want(), c.want()), (0, 0, 5));
        c.record(4, 2);
        assert_eq!(c.want(), 3);
        c.record(3, 0);
        assert_eq!((c.want(), c.want(), c.want()), (0, 0, 2));
        // A second failure in a row pauses twice as long.
        c.record(2, 0);
        assert_eq!((0..4).map(|_| c.want()).collect::<Vec<_>>(), vec![0, 0, 0, 0]);
        assert_eq!(c.want(), 2);
        for _ in 0..10 {
            c.record(2, 0);
        }
        assert_eq!(c.pause, MAX_PAUSE);
        // One that holds resets the pauses.
        c.pause = 0;
        c.record(2, 1);
        assert_eq!(c.want(), 2);
        c.record(2, 0);
        assert_eq!(c.pause, 2);
    }
}
