//! Wrapping up a structured answer near its token limit, so a JSON answer that runs out of
//! budget still ends complete: where the answer is (inside a string, how many objects and
//! arrays are open) and, from that, whether the remaining budget still leaves room for the
//! model's own ending. Only then does the sampler add its closing bias. A little earlier, it
//! only discourages layout (newlines, indentation between values): the value stays the
//! model's, written more compactly, so a call that would just overrun its budget still fits.
//! At the very end the closing tokens are forced (whenever the grammar allows one), since a
//! bias alone loses to a model sure enough of its next key.
//!
//! Must not bias free text: an answer that may be text or a tool call (`tool_choice: auto`)
//! is followed only once it starts as a call (`{`); a text answer is never pushed toward
//! brackets. Pure logic: the bias tables themselves are built in `sampler`.

/// Tokens of budget beyond the bare minimum to close everything, before the closing bias
/// starts: the model's own ending (a last word, a closing quote) usually fits in them.
const SLACK: usize = 8;
/// Tokens beyond the bare minimum at which closing is no longer a preference but forced.
const FORCE_SLACK: usize = 1;
/// The same for the layout penalty, which changes no value.
const COMPACT_SLACK: usize = 16;

/// What the sampler should do for a structured answer near its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WrapUp {
    /// Prefer tokens without layout whitespace (never inside a string: that is content).
    Compact,
    /// Prefer tokens that close the open string, objects and arrays.
    Close,
    /// Take a closing token whenever the grammar allows one.
    Force,
}

/// What the answer has turned out to be so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Only whitespace yet, and the grammar allows text as well as JSON.
    Undecided,
    Json,
    Text,
}

/// Where a JSON answer is, lexically: inside a string or not (with a pending backslash), how
/// many objects and arrays are open, and whether a key is being written or waits for its
/// value (each costs tokens before anything can close).
#[derive(Debug, Clone, Copy)]
pub(super) struct JsonLexState {
    pub in_string: bool,
    escaped: bool,
    depth: usize,
    /// Bit `i`: the container at depth `i` is an object (the first 64 levels).
    objects: u64,
    /// The next string is a key (just after `{` or an object's `,`).
    expect_key: bool,
    /// The open string is a key.
    in_key: bool,
    /// A key is closed and its value not yet started.
    awaiting_value: bool,
    shape: Shape,
}

impl JsonLexState {
    /// `may_be_text`: the grammar allows a free-text answer as well as a JSON one (a tool
    /// call), so the answer counts as JSON only once it starts with `{`.
    pub(super) fn new(may_be_text: bool) -> JsonLexState {
        let shape = if may_be_text { Shape::Undecided } else { Shape::Json };
        JsonLexState { in_string: false, escaped: false, depth: 0, objects: 0, expect_key: false, in_key: false, awaiting_value: false, shape }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.shape == Shape::Undecided {
                if b.is_ascii_whitespace() {
                    continue;
                }
                self.shape = if b == b'{' { Shape::Json } else { Shape::Text };
            }
            if self.shape == Shape::Text {
                return;
            }
            if self.escaped {
                self.escaped = false;
            } else if self.in_string {
                match b {
                    b'\\' => self.escaped = true,
                    b'"' => {
                        self.in_string = false;
                        self.awaiting_value = self.in_key;
                        self.in_key = false;
                    }
                    _ => {}
                }
            } else {
                match b {
                    b'"' => {
                        self.in_string = true;
                        self.in_key = self.expect_key;
                        self.expect_key = false;
                        self.awaiting_value = false;
                    }
                    b'{' | b'[' => {
                        if self.depth < 64 {
                            self.objects = (self.objects & !(1 << self.depth)) | (u64::from(b == b'{') << self.depth);
                        }
                        self.depth += 1;
                        self.expect_key = b == b'{';
                        self.awaiting_value = false;
                    }
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        self.expect_key = false;
                        self.awaiting_value = false;
                    }
                    b',' => self.expect_key = self.depth > 0 && self.depth <= 64 && self.objects & (1 << (self.depth - 1)) != 0,
                    b':' => {}
                    _ if b.is_ascii_whitespace() => {}
                    // A number or a literal: a value, complete as soon as it starts.
                    _ => self.awaiting_value = false,
                }
            }
        }
    }

    /// Tokens the shortest ending needs at least: one to close the string, a colon and a
    /// value after a key, one per open bracket. `None` when nothing is open, or the answer is
    /// free text.
    fn closers_needed(self) -> Option<usize> {
        let needed = self.depth + usize::from(self.in_string) + 2 * usize::from(self.in_key || self.awaiting_value);
        (self.shape == Shape::Json && needed > 0).then_some(needed)
    }

    /// What to do with `left` tokens of budget: close (only inside a JSON value that must
    /// still be closed, once the budget is down to what closing needs plus a little slack),
    /// write compactly (a little earlier), or nothing.
    pub(super) fn wrap_up(&self, left: usize) -> Option<WrapUp> {
        let needed = self.closers_needed()?;
        if left <= needed + FORCE_SLACK {
            Some(WrapUp::Force)
        } else if left <= needed + SLACK {
            Some(WrapUp::Close)
        } else if left <= needed + COMPACT_SLACK && !self.in_string {
            Some(WrapUp::Compact)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(may_be_text: bool, text: &str) -> JsonLexState {
        let mut s = JsonLexState::new(may_be_text);
        s.feed(text.as_bytes());
        s
    }

    fn closes(s: &JsonLexState, left: usize) -> bool {
        matches!(s.wrap_up(left), Some(WrapUp::Close | WrapUp::Force))
    }

    #[test]
    fn a_text_answer_is_never_wrapped_up() {
        // With tools offered and the model answering in words, even at the last token.
        let s = fed(true, "  The weather in Paris is {sunny} and [warm]");
        assert!(!closes(&s, 0));
        assert!(!closes(&s, 1));
        assert_eq!(s.wrap_up(0), None);
        // The same bytes under a pure JSON grammar would be followed (a string is open).
        assert!(closes(&fed(false, "{\"a\": \"x"), 3));
    }

    #[test]
    fn a_call_is_followed_once_it_starts() {
        let s = fed(true, " {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par");
        assert!(s.in_string);
        assert_eq!(s.closers_needed(), Some(3));
        assert!(closes(&s, 11));
        assert!(!closes(&s, 12));
        // Inside a string only closing applies: its whitespace is content.
        assert_eq!(s.wrap_up(20), None);
        let s = fed(true, " {\"name\": \"get_weather\", \"arguments\": {");
        assert_eq!(s.wrap_up(10), Some(WrapUp::Close));
        assert_eq!(s.wrap_up(18), Some(WrapUp::Compact));
        assert_eq!(s.wrap_up(19), None);
    }

    #[test]
    fn a_budget_that_can_hold_the_answer_leaves_it_alone() {
        // At 32 tokens a fresh call is nowhere near needing to close: the string it opens
        // is not closed at once.
        let s = fed(false, "{\"city\": \"");
        assert!(s.in_string);
        assert!(!closes(&s, 30));
        assert!(closes(&s, 10));
        // Nothing open: nothing to wrap up.
        assert!(!closes(&fed(false, "{\"a\": [1, \"]\"]}"), 0));
        assert!(!closes(&fed(false, ""), 0));
    }

    #[test]
    fn escapes_and_brackets_in_strings_are_text() {
        let s = fed(false, r#"{"a": "say \"}\" ["#);
        assert!(s.in_string);
        assert_eq!(s.closers_needed(), Some(2));
    }

    #[test]
    fn a_key_costs_its_colon_and_a_value_before_anything_closes() {
        // Writing a key: close it, a colon, a value, then the object.
        assert_eq!(fed(false, r#"{"a": 1, "ke"#).closers_needed(), Some(4));
        // The key closed (with or without its colon), the value not started.
        assert_eq!(fed(false, r#"{"a""#).closers_needed(), Some(3));
        assert_eq!(fed(false, r#"{"a": "#).closers_needed(), Some(3));
        // A value started or written: only the closers.
        assert_eq!(fed(false, r#"{"a": 1"#).closers_needed(), Some(1));
        assert_eq!(fed(false, r#"{"a": "x"#).closers_needed(), Some(2));
        // Strings in an array are values, and an object in an array has keys again.
        assert_eq!(fed(false, r#"{"a": ["x", "y"#).closers_needed(), Some(3));
        assert_eq!(fed(false, r#"{"a": [{"k"#).closers_needed(), Some(6));
        assert_eq!(fed(false, r#"{"a": [{"k": 2}, {"#).closers_needed(), Some(3));
        // The last tokens force the ending; a little earlier it is only preferred.
        let s = fed(false, r#"{"a": 1"#);
        assert_eq!(s.wrap_up(2), Some(WrapUp::Force));
        assert_eq!(s.wrap_up(3), Some(WrapUp::Close));
    }
}
