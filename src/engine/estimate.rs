//! How much RAM a model instance will take, from its GGUF metadata alone (no tensors loaded).
//!
//! total = weights (tensor bytes by type) + KV cache (every layer keeps K and V in f16 for each
//! of the `num_ctx` cells of the pool all slots share; llama.cpp sizes sliding-window layers in
//! full by default)
//! plus overhead (llama.cpp's vocabulary tables, logits and compute buffers, and hearth's own
//! per-model state) + the prefix store (`prefix::prefix_store_bytes`). The embedding context
//! (`engine::embed`: one slot's KV cells, and per token of its batch the logits llama.cpp keeps
//! twice plus the graph's activations) is apart from the total: it is made on a model's first
//! embed request, and the resource manager counts it then (`ModelManager::count_embedding`),
//! before the context exists. The overhead constants were fitted to measured RSS
//! growth on the two test models at num_ctx 2048-8192 x 4 slots (see the resource-manager
//! issue's note), the embedding ones likewise after a first embed request; pure code.

use crate::engine::embed::{embed_batch_tokens, needs_whole_input};
use crate::engine::LoadSettings;
use crate::store::gguf::{GgufInfo, GgufValue};

/// Fixed per-model overhead: llama.cpp context state, thread stacks, hearth's worker.
const FIXED_OVERHEAD: u64 = 16 << 20;
/// Per vocabulary entry: llama.cpp's token tables and the sampler's candidate buffers.
const PER_VOCAB_ENTRY: u64 = 196;
/// KV cache element size (f16).
const KV_ELEMENT: u64 = 2;
/// The embedding context's fixed part: its graph, scheduler and buffers' bookkeeping.
const EMBED_FIXED: u64 = 4 << 20;
/// f32 vectors of the model's width per token of an embedding batch, in the compute graph.
const EMBED_ACTIVATIONS: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub overhead: u64,
    /// The embedding context (KV cells and compute), made and counted on the first embed
    /// request: not in `total`.
    pub embedding: u64,
    /// The most the worker's store of saved prompt prefixes may hold.
    pub prefix_store: u64,
}

impl Estimate {
    /// What a load counts against the budget.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.overhead + self.prefix_store
    }
}

/// The context per slot llama.cpp will allocate: the request's, capped by the training context.
pub fn effective_ctx(info: &GgufInfo, num_ctx: u32) -> u32 {
    match info.arch_u64("context_length") {
        Some(train) if train > 0 => num_ctx.min(u32::try_from(train).unwrap_or(u32::MAX)),
        _ => num_ctx,
    }
}

/// Estimates an instance of `info` loaded with `settings`.
pub fn estimate(info: &GgufInfo, settings: &LoadSettings) -> Estimate {
    // Tensor data is what gets mapped (converted, if asked) or repacked.
    let weights = crate::engine::convert::weight_bytes(info, settings.weights);
    let layers = info.arch_u64("block_count").unwrap_or(0);
    let heads = info.arch_u64("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = info.arch_u64("attention.head_count_kv").unwrap_or(heads);
    let embd = info.arch_u64("embedding_length").unwrap_or(0);
    let head_k = info.arch_u64("attention.key_length").unwrap_or(embd / heads);
    let head_v = info.arch_u64("attention.value_length").unwrap_or(embd / heads);
    let slot_ctx = effective_ctx(info, settings.num_ctx);
    let per_cell = layers * kv_heads * (head_k + head_v) * KV_ELEMENT;
    let kv_cache = per_cell * u64::from(slot_ctx);
    let overhead = FIXED_OVERHEAD + info.vocab_size() * PER_VOCAB_ENTRY;
    let causal = match info.get(&format!("{}.attention.causal", info.architecture())) {
        Some(GgufValue::Bool(b)) => Some(*b),
        _ => None,
    };
    let whole_input = needs_whole_input(info.architecture(), causal);
    let embed_batch = u64::from(embed_batch_tokens(info.vocab_size(), slot_ctx, settings.batch_size, whole_input));
    let embedding = EMBED_FIXED
        + per_cell * u64::from(slot_ctx)
        + embed_batch * 4 * (2 * info.vocab_size() + EMBED_ACTIVATIONS * embd);
    Estimate {
        weights,
        kv_cache,
        overhead,
        embedding,
        prefix_store: crate::engine::prefix::prefix_store_bytes(kv_cache, settings.prefix_store_limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::gguf::TensorInfo;
    use std::collections::BTreeMap;

    fn info() -> GgufInfo {
        let mut metadata = BTreeMap::new();
        let mut put = |k: &str, v: u64| {
            metadata.insert(k.to_string(), GgufValue::Uint(v));
        };
        put("llama.block_count", 30);
        put("llama.attention.head_count", 9);
        put("llama.attention.head_count_kv", 3);
        put("llama.embedding_length", 576);
        put("llama.context_length", 8192);
        metadata.insert("general.architecture".into(), GgufValue::Str("llama".into()));
        metadata.insert("tokenizer.ggml.tokens".into(), GgufValue::LongArray { elem_type: 8, len: 49152 });
        GgufInfo {
            version: 3,
            metadata,
            tensors: vec![TensorInfo {
                name: "w".into(),
                dims: vec![576, 1024],
                ggml_type: 3, // Q4_1: 20 bytes per 32 weights
                offset: 0,
                nbytes: 576 * 1024 / 32 * 20,
            }],
            file_size: 1 << 30,
            data_start: 0,
        }
    }

    fn settings(num_ctx: u32, parallel: u32) -> LoadSettings {
        LoadSettings {
            num_ctx,
            parallel,
            threads: 2,
            threads_batch: 2,
            batch_size: 512,
            weights: Default::default(),
            speculative: true,
            prefix_reuse: crate::engine::exact::Reuse::Fast,
            prefix_store_limit: 256 << 20,
        }
    }

    #[test]
    fn weights_come_from_tensor_types() {
        assert_eq!(estimate(&info(), &settings(2048, 4)).weights, 576 * 1024 / 32 * 20);
        let q8 = LoadSettings { weights: crate::engine::convert::Weights::Q8_0, ..settings(2048, 4) };
        assert_eq!(estimate(&info(), &q8).weights, 576 * 1024 / 32 * 34, "converted to Q8_0: 34 bytes per 32");
    }

    #[test]
    fn kv_is_one_pool_of_num_ctx_cells_whatever_the_slots() {
        // 30 layers x 3 kv heads x (64 + 64) dims x 2 bytes per cell.
        let per_cell = 30 * 3 * 128 * 2;
        assert_eq!(estimate(&info(), &settings(2048, 4)).kv_cache, per_cell * 2048);
        assert_eq!(estimate(&info(), &settings(2048, 1)).kv_cache, per_cell * 2048);
        assert_eq!(estimate(&info(), &settings(4096, 1)).kv_cache, per_cell * 4096);
    }

    #[test]
    fn context_is_capped_by_training_context() {
        assert_eq!(effective_ctx(&info(), 100_000), 8192);
        assert_eq!(estimate(&info(), &settings(100_000, 1)), estimate(&info(), &settings(8192, 1)));
    }

    #[test]
    fn overhead_grows_with_vocabulary() {
        let e = estimate(&info(), &settings(2048, 4));
        assert_eq!(e.overhead, FIXED_OVERHEAD + 49152 * PER_VOCAB_ENTRY);
        assert_eq!(e.total(), e.weights + e.kv_cache + e.overhead + e.prefix_store);
    }

    #[test]
    fn embedding_context_is_one_slot_of_kv_plus_its_batch() {
        let per_cell = 30 * 3 * 128 * 2;
        // 49152 vocabulary entries: 160 tokens per embedding decode.
        let compute = 160 * 4 * (2 * 49152 + EMBED_ACTIVATIONS * 576);
        let e = estimate(&info(), &settings(2048, 4));
        assert_eq!(e.embedding, EMBED_FIXED + per_cell * 2048 + compute);
        // One slot's cells whatever the number of slots.
        assert_eq!(estimate(&info(), &settings(2048, 1)).embedding, e.embedding);
        assert_eq!(estimate(&info(), &settings(8192, 4)).embedding, EMBED_FIXED + per_cell * 8192 + compute);
    }

    #[test]
    fn non_causal_models_embed_a_whole_slot_per_decode() {
        let mut i = info();
        i.metadata.insert("llama.attention.causal".into(), GgufValue::Bool(false));
        let per_cell = 30 * 3 * 128 * 2;
        let compute = 512 * 4 * (2 * 49152 + EMBED_ACTIVATIONS * 576);
        assert_eq!(estimate(&i, &settings(512, 4)).embedding, EMBED_FIXED + per_cell * 512 + compute);
    }
}
