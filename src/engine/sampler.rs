//! Builds a llama.cpp sampler chain from validated `SamplingOptions`, in llama.cpp's own order:
//! penalties, top-k, typical, top-p, min-p, temperature, then a seeded draw (or greedy at
//! temperature 0).

use std::hash::{BuildHasher, Hasher};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use super::options::SamplingOptions;

pub(super) fn build(model: &LlamaModel, o: &SamplingOptions, n_ctx: u32) -> LlamaSampler {
    let mut chain = Vec::new();
    let last_n = if o.repeat_last_n < 0 { n_ctx as i32 } else { o.repeat_last_n };
    let penalised = o.repeat_penalty != 1.0 || o.frequency_penalty != 0.0 || o.presence_penalty != 0.0;
    if penalised && last_n > 0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            last_n,
            o.repeat_penalty,
            o.frequency_penalty,
            o.presence_penalty,
        ));
    }
    if o.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if o.top_k > 0 {
            chain.push(LlamaSampler::top_k(o.top_k));
        }
        if o.typical_p < 1.0 {
            chain.push(LlamaSampler::typical(o.typical_p, 1));
        }
        if o.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(o.top_p, 1));
        }
        if o.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(o.min_p, 1));
        }
        chain.push(LlamaSampler::temp(o.temperature));
        chain.push(LlamaSampler::dist(o.seed.unwrap_or_else(random_seed)));
    }
    LlamaSampler::chain_simple(chain)
}

fn random_seed() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}
