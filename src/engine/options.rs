//! Ollama's generation options: the raw map a request carries, and the validated
//! `SamplingOptions` the engine accepts.
//!
//! Parse, don't validate: `RawOptions` mirrors the wire (every field optional, unknown keys
//! refused), `RawOptions::validate` turns it into `SamplingOptions` once, with Ollama's defaults
//! and a message naming the bad field. Nothing here touches llama.cpp.

use serde::Deserialize;

/// Ollama's defaults (`api.DefaultOptions()`), except `num_ctx`, which the server decides.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
pub const DEFAULT_TOP_K: i32 = 40;
pub const DEFAULT_TOP_P: f32 = 0.9;
pub const DEFAULT_REPEAT_LAST_N: i32 = 64;
pub const DEFAULT_NUM_KEEP: i32 = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
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
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// The `options` object of an Ollama request, as sent.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    pub num_keep: Option<i64>,
    pub seed: Option<i64>,
    pub num_predict: Option<i64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub typical_p: Option<f64>,
    pub repeat_last_n: Option<i64>,
    pub temperature: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<StopField>,
    pub num_ctx: Option<i64>,
    // Accepted for compatibility with Ollama clients; hearth decides these itself.
    pub num_batch: Option<serde_json::Value>,
    pub num_gpu: Option<serde_json::Value>,
    pub main_gpu: Option<serde_json::Value>,
    pub num_thread: Option<serde_json::Value>,
    pub use_mmap: Option<serde_json::Value>,
    pub use_mlock: Option<serde_json::Value>,
    pub numa: Option<serde_json::Value>,
    pub low_vram: Option<serde_json::Value>,
    pub vocab_only: Option<serde_json::Value>,
    pub f16_kv: Option<serde_json::Value>,
    pub logits_all: Option<serde_json::Value>,
    pub penalize_newline: Option<serde_json::Value>,
    pub mirostat: Option<serde_json::Value>,
    pub mirostat_tau: Option<serde_json::Value>,
    pub mirostat_eta: Option<serde_json::Value>,
    pub tfs_z: Option<serde_json::Value>,
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
}

/// Most stop sequences a request may carry, and longest each may be.
const MAX_STOPS: usize = 16;
const MAX_STOP_LEN: usize = 256;
/// The largest context a request may ask for.
pub const MAX_NUM_CTX: i64 = 1 << 20;

impl RawOptions {
    /// Parses an `options` JSON object.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, OptionError> {
        serde_json::from_value(value.clone()).map_err(|e| {
            let msg = e.to_string();
            let field = msg
                .split('`')
                .nth(1)
                .unwrap_or("options")
                .to_string();
            bad(&field, msg)
        })
    }

    /// Overlays `other` on `self`: fields set in `other` win.
    pub fn merged_with(mut self, other: &RawOptions) -> RawOptions {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f.clone(); } )* };
        }
        take!(num_keep, seed, num_predict, top_k, top_p, min_p, typical_p, repeat_last_n,
              temperature, repeat_penalty, presence_penalty, frequency_penalty, stop, num_ctx);
        self
    }

    /// Validates against Ollama's ranges; `default_num_ctx` applies when `num_ctx` is unset.
    pub fn validate(&self, default_num_ctx: u32) -> Result<SamplingOptions, OptionError> {
        let temperature = finite("temperature", self.temperature, DEFAULT_TEMPERATURE as f64)?;
        if temperature < 0.0 {
            return Err(bad("temperature", "must be >= 0"));
        }
        let top_k = self.top_k.unwrap_or(DEFAULT_TOP_K as i64);
        if !(0..=i32::MAX as i64).contains(&top_k) {
            return Err(bad("top_k", "must be >= 0 (0 disables it)"));
        }
        let top_p = unit("top_p", self.top_p, DEFAULT_TOP_P as f64)?;
        let min_p = unit("min_p", self.min_p, 0.0)?;
        let typical_p = unit("typical_p", self.typical_p, 1.0)?;
        let repeat_penalty = finite("repeat_penalty", self.repeat_penalty, 1.0)?;
        if repeat_penalty <= 0.0 {
            return Err(bad("repeat_penalty", "must be > 0 (1.0 disables it)"));
        }
        let repeat_last_n = self.repeat_last_n.unwrap_or(DEFAULT_REPEAT_LAST_N as i64);
        if !(-1..=i32::MAX as i64).contains(&repeat_last_n) {
            return Err(bad("repeat_last_n", "must be >= -1 (-1 means the whole context)"));
        }
        let presence_penalty = finite("presence_penalty", self.presence_penalty, 0.0)?;
        let frequency_penalty = finite("frequency_penalty", self.frequency_penalty, 0.0)?;
        let seed = match self.seed {
            None => None,
            Some(s) if s < 0 => None,
            // Seeds above u32 are folded, as llama.cpp's samplers take 32 bits.
            Some(s) => Some((s as u64 % (u64::from(u32::MAX) + 1)) as u32),
        };
        let num_predict = match self.num_predict.unwrap_or(-1) {
            -1 | -2 => PredictLimit::UntilContextFull,
            n if n >= 0 => PredictLimit::Tokens(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => return Err(bad("num_predict", "must be >= 0, or -1 (no limit) or -2 (fill the context)")),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(bad("stop", format!("at most {MAX_STOPS} stop sequences")));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return Err(bad("stop", format!("each stop sequence at most {MAX_STOP_LEN} bytes")));
        }
        let num_ctx = match self.num_ctx {
            None => default_num_ctx,
            Some(n) if (1..=MAX_NUM_CTX).contains(&n) => n as u32,
            Some(n) => return Err(bad("num_ctx", format!("{n} is out of range (1..={MAX_NUM_CTX})"))),
        };
        let num_keep = self.num_keep.unwrap_or(DEFAULT_NUM_KEEP as i64);
        if !(-1..=i32::MAX as i64).contains(&num_keep) {
            return Err(bad("num_keep", "must be >= -1"));
        }
        Ok(SamplingOptions {
            temperature: temperature as f32,
            top_k: top_k as i32,
            top_p: top_p as f32,
            min_p: min_p as f32,
            typical_p: typical_p as f32,
            repeat_penalty: repeat_penalty as f32,
            repeat_last_n: repeat_last_n as i32,
            presence_penalty: presence_penalty as f32,
            frequency_penalty: frequency_penalty as f32,
            seed,
            num_predict,
            stop,
            num_ctx,
            num_keep: num_keep as i32,
            grammar: None,
            logprobs: None,
        })
    }
}

fn finite(field: &str, v: Option<f64>, default: f64) -> Result<f64, OptionError> {
    let v = v.unwrap_or(default);
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(field, "must be a finite number"))
    }
}

fn unit(field: &str, v: Option<f64>, default: f64) -> Result<f64, OptionError> {
    let v = finite(field, v, default)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(bad(field, "must be between 0 and 1"))
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
        RawOptions::from_json(&v)?.validate(4096)
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
        let base = RawOptions::from_json(&json!({"top_k": 5, "seed": 1})).expect("ok");
        let over = RawOptions::from_json(&json!({"seed": 2})).expect("ok");
        let m = base.merged_with(&over).validate(512).expect("ok");
        assert_eq!((m.top_k, m.seed), (5, Some(2)));
    }
}
