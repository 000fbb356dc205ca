//! Prefix reuse bookkeeping: which free slot a new prompt should continue (the one whose cached
//! tokens share the longest prefix with it), and a RAM-bounded LRU store of prefixes saved from
//! slots that were taken over by an unrelated prompt.
//!
//! Pure data: the worker makes the llama.cpp calls (partial removal, state save and restore);
//! nothing here touches a context, so every choice is unit-tested. The store's bound counts
//! against the RAM budget through `prefix_store_bytes`.

/// The share of the RAM budget one model instance's prefix store may hold at most: 1/16 (on
/// a 2 GiB machine, about 100 MiB of a 1.6 GiB budget).
pub const PREFIX_STORE_BUDGET_SHARE: u64 = 16;

/// Cached tokens worth saving when a slot is taken over: shorter prefixes cost less to
/// re-read than a state copy (about 2 ms per 64 tokens on the test models at 2 threads).
pub const MIN_SAVED_TOKENS: usize = 64;

/// The most RAM one model instance's prefix store may hold, for an instance whose KV cache
/// (all slots) takes `kv_bytes`: as much as its KV cache, at most `limit` (a share of the RAM
/// budget, `LoadSettings::prefix_store_limit`). The resource manager adds this to the
/// instance's estimate; the worker bounds its store with the same function (measuring the KV
/// bytes per token from the first state it saves).
pub fn prefix_store_bytes(kv_bytes: u64, limit: u64) -> u64 {
    kv_bytes.min(limit)
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Picks the free slot for `prompt` among `(slot, cached tokens)`: the longest common prefix
/// wins; on a tie the slot holding fewer tokens, so longer caches stay for later turns (an
/// empty slot goes before evicting anything). Returns the slot and the common prefix length.
pub fn pick_slot<T: PartialEq>(free: &[(usize, &[T])], prompt: &[T]) -> Option<(usize, usize)> {
    free.iter()
        .map(|&(slot, cached)| (slot, common_prefix(cached, prompt), cached.len()))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.cmp(&a.0)))
        .map(|(slot, common, _)| (slot, common))
}

/// How many cached tokens a prompt can keep: its common prefix, less one when the whole prompt
/// is cached, because the last prompt token must be decoded again to have logits to sample.
pub fn reusable(common: usize, prompt_len: usize) -> usize {
    common.min(prompt_len.saturating_sub(1))
}

/// Whether a slot about to be cut from `held` to `keep` tokens should save its state first:
/// when it would lose at least `MIN_SAVED_TOKENS` and most of what it holds (a follow-up turn
/// that keeps most of the slot is not worth a copy of the whole sequence).
pub fn worth_saving(held: usize, keep: usize) -> bool {
    held.saturating_sub(keep) >= MIN_SAVED_TOKENS && keep < held / 2
}

/// Whether a sliding-window model can continue from position `keep` in a sequence whose
/// oldest cached position is `pos_min`: the window before `keep` must still be in the cache
/// (llama.cpp keeps every position from a sequence's minimum to its maximum).
pub fn window_intact(keep: usize, pos_min: i32, n_swa: u32) -> bool {
    if keep == 0 || n_swa == 0 {
        return true;
    }
    let needed_from = keep.saturating_sub(n_swa as usize);
    usize::try_from(pos_min).is_ok_and(|min| min <= needed_from)
}

struct Stored<T, S> {
    tokens: Vec<T>,
    state: S,
    bytes: u64,
    used_at: u64,
}

/// Saved sequence states keyed by their tokens, least recently stored evicted first, never
/// holding more than `limit` bytes.
pub struct PrefixStore<T, S> {
    limit: u64,
    used: u64,
    clock: u64,
    entries: Vec<Stored<T, S>>,
}

impl<T: PartialEq, S> PrefixStore<T, S> {
    pub fn new(limit: u64) -> PrefixStore<T, S> {
        PrefixStore { limit, used: 0, clock: 0, entries: Vec::new() }
    }

    /// Lowers or raises the bound, evicting at once what no longer fits.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
        self.evict_to(limit);
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    #[cfg(test)]
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Stores `state` (of `bytes`) for `tokens`. Entries that are a prefix of `tokens` go (the
    /// new one serves every prompt they would); nothing is stored when an entry already covers
    /// `tokens` or when `bytes` alone is over the bound. Returns whether it was stored.
    pub fn insert(&mut self, tokens: Vec<T>, state: S, bytes: u64) -> bool {
        if bytes > self.limit || self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return false;
        }
        let mut i = 0;
        while i < self.entries.len() {
            if tokens.starts_with(&self.entries[i].tokens) {
                self.remove(i);
            } else {
                i += 1;
            }
        }
        self.evict_to(self.limit - bytes);
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Stored { tokens, state, bytes, used_at: self.clock });
        true
    }

    /// Removes and returns the entry sharing the longest prefix with `prompt`, if that prefix
    /// is longer than `better_than` (what the prompt can already reuse elsewhere). The caller
    /// restores it into a slot, which then holds it, so it leaves the store.
    pub fn take_best(&mut self, prompt: &[T], better_than: usize) -> Option<(Vec<T>, S, usize)> {
        let (i, common) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .max_by_key(|&(_, c)| c)?;
        if common <= better_than {
            return None;
        }
        let e = self.remove(i);
        Some((e.tokens, e.state, common))
    }

    /// Empties the store, returning every entry's tokens and state.
    pub fn drain(&mut self) -> Vec<(Vec<T>, S)> {
        self.used = 0;
        self.entries.drain(..).map(|e| (e.tokens, e.state)).collect()
    }

    fn remove(&mut self, i: usize) -> Stored<T, S> {
        let e = self.entries.swap_remove(i);
        self.used -= e.bytes;
        e
    }

    fn evict_to(&mut self, target: u64) {
        while self.used > target {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used_at).map(|(i, _)| i) else {
                break;
            };
            self.remove(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_with_the_longest_shared_prefix_wins() {
        let a = [1, 2, 3, 4];
        let b = [1, 2, 9];
        let c: [i32; 0] = [];
        let free: Vec<(usize, &[i32])> = vec![(0, &b), (1, &a), (2, &c)];
        assert_eq!(pick_slot(&free, &[1, 2, 3, 4, 5, 6]), Some((1, 4)));
        assert_eq!(pick_slot(&free, &[1, 2, 9, 9]), Some((0, 3)));
    }

    #[test]
    fn an_unrelated_prompt_takes_the_emptiest_slot() {
        let a = [1, 2, 3, 4];
        let b = [5, 6];
        let c: [i32; 0] = [];
        assert_eq!(pick_slot(&[(0, &a[..]), (1, &c[..]), (2, &b[..])], &[7, 8]), Some((1, 0)));
        assert_eq!(pick_slot(&[(0, &a[..]), (2, &b[..])], &[7, 8]), Some((2, 0)));
        assert_eq!(pick_slot::<i32>(&[], &[7, 8]), None);
    }

    #[test]
    fn the_last_prompt_token_is_always_decoded_again() {
        assert_eq!(reusable(10, 10), 9);
        assert_eq!(reusable(10, 25), 10);
        assert_eq!(reusable(4, 4), 3);
        assert_eq!(reusable(0, 1), 0);
        assert_eq!(reusable(0, 0), 0);
    }

    #[test]
    fn only_a_mostly_lost_long_cache_is_saved() {
        assert!(worth_saving(1000, 0));
        assert!(worth_saving(1000, 400));
        assert!(!worth_saving(1000, 600), "a follow-up turn keeps most of it");
        assert!(!worth_saving(63, 0), "too short to be worth a copy");
        assert!(worth_saving(64, 0));
    }

    #[test]
    fn a_sliding_window_needs_its_span_before_the_kept_prefix() {
        assert!(window_intact(1000, 0, 512));
        assert!(window_intact(1000, 488, 512));
        assert!(!window_intact(1000, 489, 512));
        assert!(window_intact(100, 0, 512));
        assert!(!window_intact(100, 1, 512));
        assert!(window_intact(100, 50, 0), "no sliding window: every kept position is in the cache");
        assert!(!window_intact(100, -1, 512), "an empty sequence holds nothing to keep");
        assert!(window_intact(0, -1, 512));
    }

    #[test]
    fn the_store_returns_the_best_prefix_once() {
        let mut s: PrefixStore<i32, &str> = PrefixStore::new(100);
        assert!(s.insert(vec![1, 2, 3], "a", 10));
        assert!(s.insert(vec![4, 5, 6, 7], "b", 10));
        assert_eq!(s.take_best(&[4, 5, 6, 9], 3), None, "not better than what a slot offers");
        assert_eq!(s.take_best(&[4, 5, 6, 9], 1), Some((vec![4, 5, 6, 7], "b", 3)));
        assert_eq!(s.take_best(&[4, 5, 6, 9], 1), None, "taken entries leave the store");
        assert_eq!(s.used_bytes(), 10);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_store_evicts_the_oldest_to_stay_within_its_bound() {
        let mut s: PrefixStore<i32, u8> = PrefixStore::new(25);
        assert!(s.insert(vec![1], 1, 10));
        assert!(s.insert(vec![2], 2, 10));
        assert!(s.insert(vec![3], 3, 10));
        assert_eq!(s.used_bytes(), 20);
        assert!(s.take_best(&[1], 0).is_none(), "the oldest went first");
        assert!(!s.insert(vec![4], 4, 26), "larger than the whole bound");
        s.set_limit(10);
        assert_eq!(s.len(), 1);
        assert_eq!(s.take_best(&[3], 0).map(|e| e.1), Some(3));
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn a_longer_prefix_replaces_the_entries_it_covers() {
        let mut s: PrefixStore<i32, u8> = PrefixStore::new(100);
        assert!(s.insert(vec![1, 2], 1, 10));
        assert!(s.insert(vec![1, 2, 3, 4], 2, 20));
        assert_eq!(s.len(), 1);
        assert_eq!(s.used_bytes(), 20);
        assert!(!s.insert(vec![1, 2, 3], 3, 10), "already covered");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_bound_follows_the_kv_cache_size() {
        assert_eq!(prefix_store_bytes(10 << 20, 100 << 20), 10 << 20);
        assert_eq!(prefix_store_bytes(4 << 30, 100 << 20), 100 << 20);
    }
}
