//! Picks each next token. Builds a llama.cpp sampler chain from validated `SamplingOptions`, in
//! llama.cpp's own order: penalties, top-k, typical, top-p, min-p, temperature, then a seeded
//! draw (or greedy at temperature 0). Plain greedy decoding skips the chain and takes the argmax
//! of the logits directly: the same token, without copying the whole vocabulary each step.

use std::hash::{BuildHasher, Hasher};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::options::SamplingOptions;

pub(super) enum TokenSampler {
    Argmax,
    Chain(LlamaSampler),
}

impl TokenSampler {
    /// Samples from the logits at batch index `idx` and records the token in the sampler state.
    pub(super) fn sample(&mut self, ctx: &LlamaContext, idx: i32) -> LlamaToken {
        match self {
            TokenSampler::Argmax => {
                let logits = ctx.get_logits_ith(idx);
                // The first maximum, as llama.cpp's greedy sampler picks it.
                let best = logits
                    .iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best });
                LlamaToken(best.0 as i32)
            }
            TokenSampler::Chain(chain) => chain.sample(ctx, idx),
        }
    }

    /// Shows the sampler tokens it did not sample (the prompt), for repetition penalties.
    pub(super) fn accept_many(&mut self, tokens: &[LlamaToken]) {
        if let TokenSampler::Chain(chain) = self {
            chain.accept_many(tokens);
        }
    }
}

pub(super) fn build(model: &LlamaModel, o: &SamplingOptions, n_ctx: u32) -> TokenSampler {
    let mut chain = Vec::new();
    let last_n = if o.repeat_last_n < 0 { n_ctx as i32 } else { o.repeat_last_n };
    let penalised = o.repeat_penalty != 1.0 || o.frequency_penalty != 0.0 || o.presence_penalty != 0.0;
    if o.temperature <= 0.0 && !(penalised && last_n > 0) {
        return TokenSampler::Argmax;
    }
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
    TokenSampler::Chain(LlamaSampler::chain_simple(chain))
}

fn random_seed() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}
