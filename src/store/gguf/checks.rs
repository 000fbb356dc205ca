//! The metadata checks: keys that must be there with the right types, tokenizer tables that
//! agree with each other, and hyper-parameters within ranges llama.cpp can hold.

use super::*;

/// A hyper-parameter range check: `{arch}.{suffix}` must be an integer in `min..=max` (or,
/// when `per_layer`, an array of at most 512 such integers).
pub(super) struct HparamRange {
    pub(super) suffix: &'static str,
    min: u64,
    max: u64,
    pub(super) per_layer: bool,
}

/// Ranges generous enough for every model llama.cpp supports; they exist to keep absurd values
/// (which llama.cpp turns into out-of-bounds writes or huge allocations) out, not to judge
/// models. Zero is allowed where some architectures write it (Mamba has no attention heads).
pub(super) const HPARAMS: &[HparamRange] = &[
    HparamRange {
        suffix: "block_count",
        min: 1,
        max: MAX_LAYERS,
        per_layer: false,
    },
    HparamRange {
        suffix: "context_length",
        min: 1,
        max: 1 << 24,
        per_layer: false,
    },
    HparamRange {
        suffix: "embedding_length",
        min: 1,
        max: 1 << 20,
        per_layer: false,
    },
    HparamRange {
        suffix: "feed_forward_length",
        min: 0,
        max: 1 << 20,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.head_count",
        min: 0,
        max: 16_384,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.head_count_kv",
        min: 0,
        max: 16_384,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.key_length",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "attention.value_length",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "rope.dimension_count",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "expert_count",
        min: 0,
        max: MAX_EXPERTS,
        per_layer: false,
    },
    HparamRange {
        suffix: "expert_used_count",
        min: 0,
        max: MAX_EXPERTS,
        per_layer: false,
    },
    HparamRange {
        suffix: "vocab_size",
        min: 0,
        max: MAX_VOCAB,
        per_layer: false,
    },
];

impl Meta<'_> {
    pub(super) fn declared(&self, key: &str) -> Option<Declared> {
        self.declared.get(key).copied()
    }

    /// `general.alignment`: absent (32), or a u32 power of two no larger than 1 MiB.
    pub(super) fn alignment(&self) -> Result<u64, GgufError> {
        const KEY: &str = "general.alignment";
        let Some(decl) = self.declared(KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        if decl.vtype != vt::U32 {
            return Err(invalid(format!("{KEY} must be a u32, not {}", type_name(decl))));
        }
        let a = self.values.get(KEY).and_then(GgufValue::as_u64).unwrap_or(0);
        if !a.is_power_of_two() || a > MAX_ALIGNMENT {
            return Err(invalid(format!(
                "{KEY} {a} must be a power of two no larger than {MAX_ALIGNMENT}"
            )));
        }
        Ok(a)
    }

    pub(super) fn check_general(&self) -> Result<(), GgufError> {
        for key in ["general.architecture", "general.type"] {
            if let Some(decl) = self.declared(key) {
                if decl.vtype != vt::STRING {
                    return Err(invalid(format!("{key} must be a string, not {}", type_name(decl))));
                }
            }
        }
        Ok(())
    }

    /// The tokenizer arrays have the types llama.cpp reads them as (it casts their data
    /// blindly), matching lengths, and the special token ids index into the vocabulary.
    pub(super) fn check_tokenizer(&self) -> Result<(), GgufError> {
        let vocab = match self.declared("tokenizer.ggml.tokens") {
            None => None,
            Some(Declared {
                array: Some((vt::STRING, n)),
                ..
            }) => {
                if !(1..=MAX_VOCAB).contains(&n) {
                    return Err(invalid(format!(
                        "tokenizer.ggml.tokens has {n} tokens (1..={MAX_VOCAB} allowed)"
                    )));
                }
                Some(n)
            }
            Some(decl) => {
                return Err(invalid(format!(
                    "tokenizer.ggml.tokens must be an array of strings, not {}",
                    type_name(decl)
                )))
            }
        };
        for (key, elem) in [
            ("tokenizer.ggml.scores", vt::F32),
            ("tokenizer.ggml.token_type", vt::I32),
        ] {
            let Some(decl) = self.declared(key) else { continue };
            match (decl.array, vocab) {
                (Some((e, n)), Some(v)) if e == elem && n == v => {}
                (Some((e, n)), Some(v)) if e == elem => {
                    return Err(invalid(format!(
                        "{key} has {n} entries but the vocabulary has {v} tokens"
                    )));
                }
                (Some((e, _)), None) if e == elem => {
                    return Err(invalid(format!("{key} without tokenizer.ggml.tokens")));
                }
                _ => {
                    return Err(invalid(format!(
                        "{key} must be an array of {}, not {}",
                        vt::name(elem),
                        type_name(decl)
                    )))
                }
            }
        }
        if let Some(decl) = self.declared("tokenizer.ggml.merges") {
            if !matches!(decl.array, Some((vt::STRING, _))) {
                return Err(invalid(format!(
                    "tokenizer.ggml.merges must be an array of strings, not {}",
                    type_name(decl)
                )));
            }
        }
        let ids = self
            .values
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id"));
        for (key, value) in ids {
            let is_int = self.declared(key).is_some_and(|d| vt::is_integer(d.vtype));
            let id = value.as_u64().filter(|_| is_int);
            match (id, vocab) {
                (None, _) => {
                    return Err(invalid(format!(
                        "{key} must be a non-negative integer, not {}",
                        describe(value)
                    )));
                }
                (Some(id), Some(v)) if id >= v => {
                    return Err(invalid(format!("{key} {id} is not below the vocabulary size {v}")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Range checks on the architecture's hyper-parameters (`HPARAMS`).
    pub(super) fn check_hparams(&self) -> Result<(), GgufError> {
        let Some(arch) = self.values.get("general.architecture").and_then(GgufValue::as_str) else {
            return Ok(());
        };
        let mut found = HashMap::new();
        for h in HPARAMS {
            let key = format!("{arch}.{}", h.suffix);
            let (Some(value), Some(decl)) = (self.values.get(&key), self.declared(&key)) else {
                continue;
            };
            let values: Vec<&GgufValue> = match (value, decl.array) {
                (GgufValue::Array(items), Some((elem, _))) if h.per_layer && vt::is_integer(elem) => {
                    items.iter().collect()
                }
                (_, Some((_, n))) if h.per_layer && n > MAX_LAYERS => {
                    return Err(invalid(format!(
                        "{key} has {n} per-layer values (at most {MAX_LAYERS})"
                    )));
                }
                (_, None) if vt::is_integer(decl.vtype) => vec![value],
                _ => {
                    let want = if h.per_layer {
                        "an integer or an array of integers"
                    } else {
                        "an integer"
                    };
                    return Err(invalid(format!("{key} must be {want}, not {}", type_name(decl))));
                }
            };
            for v in values {
                match v.as_u64() {
                    Some(n) if (h.min..=h.max).contains(&n) => {
                        found.insert(h.suffix, n);
                    }
                    _ => {
                        return Err(invalid(format!(
                            "{key} is {}, outside {}..={}",
                            describe(v),
                            h.min,
                            h.max
                        )))
                    }
                }
            }
        }
        if let (Some(used), Some(count)) = (found.get("expert_used_count"), found.get("expert_count")) {
            if used > count {
                return Err(invalid(format!(
                    "{arch}.expert_used_count {used} is larger than {arch}.expert_count {count}"
                )));
            }
        }
        Ok(())
    }
}

pub(super) fn type_name(decl: Declared) -> String {
    match decl.array {
        Some((elem, n)) => format!("an array of {n} {}", vt::name(elem)),
        None => vt::name(decl.vtype).to_string(),
    }
}

pub(super) fn describe(v: &GgufValue) -> String {
    match v {
        GgufValue::Int(n) => n.to_string(),
        GgufValue::Uint(n) => n.to_string(),
        GgufValue::Float(f) => format!("the float {f}"),
        GgufValue::Bool(b) => format!("the bool {b}"),
        GgufValue::Str(_) => "a string".to_string(),
        GgufValue::Array(_) | GgufValue::LongArray { .. } => "an array".to_string(),
    }
}
