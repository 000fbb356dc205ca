//! Ollama's generation options: the raw map a request carries, and the validated
//! `SamplingOptions` the engine accepts.
//!
//! Parse, don't validate: an `options` object (from a request, a persona in the config file, a
//! stored profile or a Modelfile's parameters) becomes an `OptionPatch` once, each field checked
//! with a message naming it. Patches are laid over one another (model < persona < request) and
//! resolved to the `SamplingOptions` the engine takes, with Ollama's defaults, which cannot fail.

use serde::{Deserialize, Serialize};

/// Ollama's defaults (`api.DefaultOptions()`), except `num_ctx`, which the server decides.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
pub const DEFAULT_TOP_K: i32 = 40;
pub const DEFAULT_TOP_P: f32 = 0.9;
pub const DEFAULT_REPEAT_LAST_N: i32 = 64;
pub const DEFAULT_NUM_KEEP: i32 = 4;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("invalid option {field}: {reason}")]
pub struct OptionError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> OptionError {
    OptionError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `stop` may be one string or a list, as clients send both.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// The `options` object as sent: every field optional, unknown keys refused. Private: it only
/// exists to become an [`OptionPatch`].
// The options hearth decides itself are read only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    num_keep: Option<i64>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    min_p: Option<f64>,
    typical_p: Option<f64>,
    repeat_last_n: Option<i64>,
    temperature: Option<f64>,
    repeat_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    stop: Option<StopField>,
    num_ctx: Option<i64>,
    // Accepted for compatibility with Ollama clients, checked against their ranges, and
    // ignored: hearth decides these itself.
    num_batch: Option<i64>,
    num_gpu: Option<i64>,
    main_gpu: Option<i64>,
    num_thread: Option<i64>,
    use_mmap: Option<bool>,
    use_mlock: Option<bool>,
    numa: Option<bool>,
    low_vram: Option<bool>,
    vocab_only: Option<bool>,
    f16_kv: Option<bool>,
    logits_all: Option<bool>,
    penalize_newline: Option<bool>,
    mirostat: Option<i64>,
    mirostat_tau: Option<f64>,
    mirostat_eta: Option<f64>,
    tfs_z: Option<f64>,
}

/// Some of Ollama's options, each already checked against its range; `None` leaves the layer
/// below in place. A model's Modelfile parameters, a persona's options and a request's options
/// are each one patch, laid over one another ([`OptionPatch::over`]) and resolved once
/// ([`OptionPatch::resolve`]), which cannot fail. Numbers keep the wire's types so a patch
/// shown back (a stored profile, `/llm/configure`) reads as it was written.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct OptionPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_keep: Option<i64>,
    /// A negative seed is a fresh one per request (and overrides a fixed one below it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_last_n: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_ctx: Option<u32>,
    /// Ollama's request-level `truncate` (not an `options` key): cut a prompt too long for the
    /// context from the front instead of refusing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Ollama's request-level `shift`: `false` ends the answer when the context is full
    /// instead of shifting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<bool>,
}

/// How many tokens to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictLimit {
    /// Until end of generation or a full context (Ollama's -1 and -2).
    UntilContextFull,
    /// At most this many; the context is shifted to make room if needed.
    Tokens(u32),
}

/// Validated sampling and generation settings for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    pub repeat_penalty: f32,
    /// -1 means the whole context.
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `None` draws a fresh seed per request.
    pub seed: Option<u32>,
    pub num_predict: PredictLimit,
    pub stop: Vec<String>,
    /// The context this request may use; the engine refuses prompts that do not fit it.
    pub num_ctx: u32,
    /// Tokens kept at the start when the context is shifted; -1 keeps the whole prompt.
    pub num_keep: i32,
    /// A GBNF grammar the output must follow (structured output, tool calls); root `root`.
    pub grammar: Option<String>,
    /// Report each output token's log-probability and this many alternatives (`None`: off).
    pub logprobs: Option<u8>,
    /// Cut a too-long prompt from the front (off: refuse it).
    pub truncate: bool,
    /// Shift the context when it fills during the answer (off: end the answer there).
    pub shift: bool,
}

/// Most stop sequences a request may carry, and longest each may be.
const MAX_STOPS: usize = 16;
const MAX_STOP_LEN: usize = 256;
/// The largest context a request may ask for.
pub const MAX_NUM_CTX: i64 = 1 << 20;
/// Beyond these, sampling is noise; they bound what a request may ask.
const MAX_TEMPERATURE: f64 = 100.0;
const MAX_PENALTY: f64 = 100.0;

impl OptionPatch {
    /// Parses and checks an `options` JSON object (null is an empty patch).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, OptionError> {
        if value.is_null() {
            return Ok(Self::default());
        }
        let raw: RawOptions = serde_json::from_value(value.clone()).map_err(|e| {
            let msg = e.to_string();
            let field = msg.split('`').nth(1).unwrap_or("options").to_string();
            bad(&field, msg)
        })?;
        raw.check()
    }

    /// [`from_json`](Self::from_json) for a JSON map.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, OptionError> {
        Self::from_json(&serde_json::Value::Object(map.clone()))
    }

    /// `self` with `top` laid over it: fields set in `top` win.
    pub fn over(mut self, top: &OptionPatch) -> OptionPatch {
        macro_rules! take {
            ($($f:ident),*) => { $( if top.$f.is_some() { self.$f = top.$f.clone(); } )* };
        }
        take!(num_keep, seed, num_predict, top_k, top_p, min_p, typical_p, repeat_last_n,
              temperature, repeat_penalty, presence_penalty, frequency_penalty, stop, num_ctx, truncate, shift);
        self
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The settings this patch gives over Ollama's defaults; `default_num_ctx` applies when
    /// `num_ctx` is unset.
    pub fn resolve(&self, default_num_ctx: u32) -> SamplingOptions {
        let seed = match self.seed {
            None => None,
            Some(s) if s < 0 => None,
            // Seeds above u32 are folded, as llama.cpp's samplers take 32 bits.
            Some(s) => Some((s as u64 % (u64::from(u32::MAX) + 1)) as u32),
        };
        let num_predict = match self.num_predict.unwrap_or(-1) {
            n if n >= 0 => PredictLimit::Tokens(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => PredictLimit::UntilContextFull,
        };
        // Ranges were checked when the patch was made, so the casts below are exact.
        SamplingOptions {
            temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE as f64) as f32,
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K as i64) as i32,
            top_p: self.top_p.unwrap_or(DEFAULT_TOP_P as f64) as f32,
            min_p: self.min_p.unwrap_or(0.0) as f32,
            typical_p: self.typical_p.unwrap_or(1.0) as f32,
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0) as f32,
            repeat_last_n: self.repeat_last_n.unwrap_or(DEFAULT_REPEAT_LAST_N as i64) as i32,
            presence_penalty: self.presence_penalty.unwrap_or(0.0) as f32,
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0) as f32,
            seed,
            num_predict,
            stop: self.stop.clone().unwrap_or_default(),
            num_ctx: self.num_ctx.unwrap_or(default_num_ctx),
            num_keep: self.num_keep.unwrap_or(DEFAULT_NUM_KEEP as i64) as i32,
            grammar: None,
            logprobs: None,
            truncate: self.truncate.unwrap_or(false),
            shift: self.shift.unwrap_or(true),
        }
    }
}

impl RawOptions {
    /// Checks each field against Ollama's ranges, naming the first bad one.
    fn check(self) -> Result<OptionPatch, OptionError> {
        let temperature = within("temperature", self.temperature, 0.0, MAX_TEMPERATURE)?;
        if self.top_k.is_some_and(|k| !(0..=i32::MAX as i64).contains(&k)) {
            return Err(bad("top_k", "must be >= 0 (0 disables it)"));
        }
        let top_p = unit("top_p", self.top_p)?;
        let min_p = unit("min_p", self.min_p)?;
        let typical_p = unit("typical_p", self.typical_p)?;
        let repeat_penalty = within("repeat_penalty", self.repeat_penalty, 0.0, MAX_PENALTY)?;
        if repeat_penalty.is_some_and(|p| p <= 0.0) {
            return Err(bad("repeat_penalty", "must be > 0 (1.0 disables it)"));
        }
        if self.repeat_last_n.is_some_and(|n| !(-1..=MAX_NUM_CTX).contains(&n)) {
            return Err(bad("repeat_last_n", format!("must be from -1 (the whole context) to {MAX_NUM_CTX}")));
        }
        let presence_penalty = within("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)?;
        let frequency_penalty = within("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)?;
        if self.num_predict.is_some_and(|n| !(-2..=MAX_NUM_CTX).contains(&n)) {
            return Err(bad("num_predict", format!("must be from 0 to {MAX_NUM_CTX} (and is capped at the context), or -1 (until the context is full) or -2 (fill the context)")));
        }
        self.check_ignored()?;
        let stop = self.stop.map(|s| match s {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        });
        if let Some(stop) = &stop {
            if stop.len() > MAX_STOPS {
                return Err(bad("stop", format!("at most {MAX_STOPS} stop sequences")));
            }
            if stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
                return Err(bad("stop", format!("each stop sequence at most {MAX_STOP_LEN} bytes")));
            }
        }
        let num_ctx = match self.num_ctx {
            None => None,
            Some(n) if (1..=MAX_NUM_CTX).contains(&n) => Some(n as u32),
            Some(n) => return Err(bad("num_ctx", format!("{n} is out of range (1..={MAX_NUM_CTX})"))),
        };
        if self.num_keep.is_some_and(|n| !(-1..=MAX_NUM_CTX).contains(&n)) {
            return Err(bad("num_keep", format!("must be from -1 (the whole prompt) to {MAX_NUM_CTX}")));
        }
        Ok(OptionPatch {
            num_keep: self.num_keep,
            seed: self.seed,
            num_predict: self.num_predict,
            top_k: self.top_k,
            top_p,
            min_p,
            typical_p,
            repeat_last_n: self.repeat_last_n,
            temperature,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            stop,
            num_ctx,
            truncate: None,
            shift: None,
        })
    }
}

impl RawOptions {
    /// The options hearth ignores still get their ranges, so a wild value is a clear 400.
    fn check_ignored(&self) -> Result<(), OptionError> {
        let ints: [(&str, Option<i64>, i64, i64); 5] = [
            ("num_batch", self.num_batch, 1, MAX_NUM_CTX),
            ("num_gpu", self.num_gpu, -1, 1 << 16),
            ("main_gpu", self.main_gpu, 0, 1 << 16),
            ("num_thread", self.num_thread, 0, 1 << 16),
            ("mirostat", self.mirostat, 0, 2),
        ];
        for (field, v, lo, hi) in ints {
            if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
                return Err(bad(field, format!("must be from {lo} to {hi}")));
            }
        }
        within("mirostat_tau", self.mirostat_tau, 0.0, 100.0)?;
        within("mirostat_eta", self.mirostat_eta, 0.0, 100.0)?;
        within("tfs_z", self.tfs_z, 0.0, 100.0)?;
        Ok(())
    }
}

/// A finite number from `lo` to `hi`.
fn within(field: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f64>, OptionError> {
    match finite(field, v)? {
        Some(v) if !(lo..=hi).contains(&v) => Err(bad(field, format!("must be from {lo} to {hi}"))),
        v => Ok(v),
    }
}

fn finite(field: &str, v: Option<f64>) -> Result<Option<f64>, OptionError> {
    match v {
        Some(v) if !v.is_finite() => Err(bad(field, "must be a finite number")),
        v => Ok(v),
    }
}

fn unit(field: &str, v: Option<f64>) -> Result<Option<f64>, OptionError> {
    match finite(field, v)? {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(bad(field, "must be between 0 and 1")),
        v => Ok(v),
    }
}

/// Parses a `key=value` option from the command line into the JSON an Ollama client would send.
/// Values that parse as JSON keep their type; anything else is a string.
pub fn parse_cli_option(kv: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("option {kv:?} is not key=value"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
    Ok((k.trim().to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(v: serde_json::Value) -> Result<SamplingOptions, OptionError> {
        Ok(OptionPatch::from_json(&v)?.resolve(4096))
    }

    #[test]
    fn every_number_has_a_range_named_in_its_error() {
        for (field, value) in [
            ("temperature", json!(1e308)),
            ("temperature", json!(-0.1)),
            ("num_predict", json!(1_000_000_000_000i64)),
            ("num_batch", json!(1u64 << 40)),
            ("num_thread", json!(-5)),
            ("repeat_last_n", json!(1i64 << 40)),
            ("num_keep", json!(1i64 << 40)),
            ("presence_penalty", json!(1e9)),
            ("mirostat", json!(7)),
            ("tfs_z", json!(-1.0)),
        ] {
            let e = validate(json!({ field: value })).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("from"), "{e}");
        }
        assert!(validate(json!({"use_mmap": "yes"})).is_err(), "a flag is a boolean");
        let ok = validate(json!({"num_batch": 512, "num_gpu": -1, "use_mmap": true, "temperature": 2, "num_predict": 100000})).expect("in range");
        assert_eq!(ok.num_predict, PredictLimit::Tokens(100_000));
    }

    #[test]
    fn defaults_match_ollama() {
        let o = validate(json!({})).expect("valid");
        assert_eq!(o.temperature, 0.8);
        assert_eq!(o.top_k, 40);
        assert_eq!(o.top_p, 0.9);
        assert_eq!(o.repeat_last_n, 64);
        assert_eq!(o.num_ctx, 4096);
        assert_eq!(o.num_predict, PredictLimit::UntilContextFull);
        assert_eq!(o.seed, None);
    }

    #[test]
    fn negative_num_ctx_is_refused_with_its_name() {
        let err = validate(json!({"num_ctx": -5})).expect_err("must fail");
        assert_eq!(err.field, "num_ctx");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(validate(json!({"top_p": 1.5})).is_err());
        assert!(validate(json!({"temperature": -1})).is_err());
        assert!(validate(json!({"num_predict": -3})).is_err());
        assert!(validate(json!({"repeat_penalty": 0})).is_err());
        assert!(validate(json!({"top_k": -1})).is_err());
    }

    #[test]
    fn unknown_option_is_refused_and_wrong_type_names_field() {
        let err = validate(json!({"temprature": 0.5})).expect_err("must fail");
        assert!(err.reason.contains("temprature"), "{err}");
        let err = validate(json!({"seed": "x"})).expect_err("must fail");
        assert!(err.reason.contains("invalid type"), "{err}");
    }

    #[test]
    fn stop_accepts_string_or_list() {
        assert_eq!(validate(json!({"stop": "x"})).expect("ok").stop, vec!["x"]);
        assert_eq!(validate(json!({"stop": ["a", "b"]})).expect("ok").stop, vec!["a", "b"]);
    }

    #[test]
    fn cli_options_keep_json_types() {
        assert_eq!(parse_cli_option("top_k=5"), Ok(("top_k".into(), json!(5))));
        assert_eq!(parse_cli_option("stop=END"), Ok(("stop".into(), json!("END"))));
        assert!(parse_cli_option("nonsense").is_err());
    }

    #[test]
    fn merge_prefers_the_overlay() {
        let base = OptionPatch::from_json(&json!({"top_k": 5, "seed": 1})).expect("ok");
        let over = OptionPatch::from_json(&json!({"seed": -1})).expect("ok");
        let m = base.clone().over(&over).resolve(512);
        assert_eq!((m.top_k, m.seed, m.num_ctx), (5, None, 512));
        assert_eq!(base.over(&OptionPatch::default()).resolve(512).seed, Some(1));
    }

    #[test]
    fn a_patch_shows_back_as_it_was_written() {
        let written = json!({"temperature": 0.7, "stop": ["END"], "num_ctx": 2048, "num_gpu": 1});
        let patch = OptionPatch::from_json(&written).expect("ok");
        assert_eq!(serde_json::to_value(&patch).expect("json"), json!({"temperature": 0.7, "stop": ["END"], "num_ctx": 2048}));
        assert!(OptionPatch::from_json(&serde_json::Value::Null).expect("ok").is_empty());
    }
}
