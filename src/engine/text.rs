//! Turns a stream of token bytes into the text a client sees: whole UTF-8 characters only, and
//! never any part of a stop sequence.
//!
//! Pure code with no llama.cpp in it. `Utf8Stream` holds back the bytes of a character split
//! across tokens; `StopMatcher` holds back text that might be the start of a stop sequence until
//! it knows, so a stop sequence spread over several tokens is still caught and never shown.

/// Joins token pieces into valid UTF-8, holding back an incomplete trailing character.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds one token's bytes; returns the text that is now complete. Bytes that can never be
    /// valid UTF-8 become U+FFFD rather than being dropped or emitted broken.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 told us this prefix is valid.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Number of bytes held back. When generation ends they are the start of a character the
    /// model never finished (a limit cut it), and are dropped rather than sent broken.
    #[cfg(test)]
    pub fn held_back(&self) -> usize {
        self.pending.len()
    }
}

/// What the matcher decided about the text fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// Text safe to emit now; generation goes on.
    Continue(String),
    /// A stop sequence was found: emit this text (everything before the stop) and end.
    Stopped(String),
}

/// Finds stop sequences in streamed text, across token boundaries.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    /// The stop sequence found, once one is.
    matched: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            stops,
            held: String::new(),
            matched: None,
        }
    }

    pub fn push(&mut self, text: &str) -> StopScan {
        self.held.push_str(text);
        // The earliest stop wins: text after it was never meant to be produced.
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            self.matched = Some(stop.clone());
            let before = self.held[..at].to_string();
            self.held.clear();
            return StopScan::Stopped(before);
        }
        // Hold back the longest suffix that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopScan::Continue(emit)
    }

    /// The stop sequence that ended the text, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Text held back when generation ends without a stop: it was not a stop after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`, cut on
/// character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_character_split_across_tokens_is_held_back() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(s.push(b"price: "), "price: ");
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&euro[2..]), "€");
        assert_eq!(s.held_back(), 0);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.held_back(), 2, "an unfinished character waits");
    }

    #[test]
    fn stop_sequence_across_tokens_is_caught_and_not_emitted() {
        let mut m = StopMatcher::new(vec!["<END>".to_string()]);
        assert_eq!(m.push("hello <"), StopScan::Continue("hello ".to_string()));
        assert_eq!(m.push("EN"), StopScan::Continue(String::new()));
        assert_eq!(m.push("D> more"), StopScan::Stopped(String::new()));
    }

    #[test]
    fn false_start_of_a_stop_is_released() {
        let mut m = StopMatcher::new(vec!["<END>".to_string()]);
        assert_eq!(m.push("a <E"), StopScan::Continue("a ".to_string()));
        assert_eq!(m.push("X"), StopScan::Continue("<EX".to_string()));
        assert_eq!(m.push("<"), StopScan::Continue(String::new()));
        assert_eq!(m.finish(), "<");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["world".to_string(), "lo".to_string()]);
        assert_eq!(m.push("hello world"), StopScan::Stopped("hel".to_string()));
    }

    #[test]
    fn stop_with_multibyte_prefix_respects_char_boundaries() {
        let mut m = StopMatcher::new(vec!["€€".to_string()]);
        assert_eq!(m.push("x€"), StopScan::Continue("x".to_string()));
        assert_eq!(m.push("y"), StopScan::Continue("€y".to_string()));
    }

    #[test]
    fn no_stops_passes_everything() {
        let mut m = StopMatcher::new(vec![String::new()]);
        assert_eq!(m.push("abc"), StopScan::Continue("abc".to_string()));
    }
}
