//! Picks each next token. Builds a llama.cpp sampler chain from validated `SamplingOptions`, in
//! llama.cpp's own order: penalties, top-k, typical, top-p, min-p, temperature, then a seeded
//! draw (or greedy at temperature 0). Plain greedy decoding skips the chain and takes the argmax
//! of the logits directly: the same token, without copying the whole vocabulary each step. A
//! grammar (structured output) sits outside the chain and filters the candidates, so only the
//! output, never the prompt, is held to it, and a refusal is an error rather than an abort.

use std::hash::{BuildHasher, Hasher};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use crate::spec::options::SamplingOptions;

pub(super) enum TokenSampler {
    Argmax,
    Chain(LlamaSampler),
    /// A chain under a grammar: only tokens the grammar allows can be drawn.
    Constrained { chain: LlamaSampler, grammar: LlamaSampler },
}

impl TokenSampler {
    /// Samples from the logits at batch index `idx` and records the token in the sampler state.
    /// Fails only if a grammar allows no token at all.
    ///
    /// `wrap_up` (for a grammar near the end of its token budget) adds its bias to each token's
    /// logit, favouring those that close strings, objects and arrays, so a structured answer
    /// ends complete rather than cut off; the bias is scaled by the paired factor.
    pub(super) fn sample(&mut self, ctx: &LlamaContext, idx: i32, wrap_up: Option<(&[f32], f32)>) -> Result<LlamaToken, String> {
        match self {
            TokenSampler::Argmax => Ok(argmax(ctx.get_logits_ith(idx))),
            TokenSampler::Chain(chain) => Ok(chain.sample(ctx, idx)),
            TokenSampler::Constrained { chain, grammar } if wrap_up.is_some() => {
                let (bias, scale) = wrap_up.unwrap_or_default();
                let mut all = LlamaTokenDataArray::from_iter(
                    ctx.candidates_ith(idx).map(|mut d| {
                        d.set_logit(d.logit() + scale * bias.get(d.id().0 as usize).copied().unwrap_or(0.0));
                        d
                    }),
                    false,
                );
                grammar.apply(&mut all);
                chain.apply(&mut all);
                let token = all
                    .selected_token()
                    .filter(|t| all.data.iter().any(|d| d.id() == *t && d.logit().is_finite()))
                    .ok_or_else(|| "the output format allows no further token".to_string())?;
                grammar.try_accept(token).map_err(|e| format!("the output format refused a token: {e}"))?;
                chain.accept(token);
                Ok(token)
            }
            TokenSampler::Constrained { chain, grammar } => {
                // Most tokens a model picks are ones the grammar allows: check the unconstrained
                // pick first, and filter the whole vocabulary only when it is refused.
                let mut all = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
                chain.apply(&mut all);
                let first = all.selected_token();
                let allowed = first.is_some_and(|t| {
                    let logit = ctx.get_logits_ith(idx).get(t.0 as usize).copied().unwrap_or(f32::NEG_INFINITY);
                    let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(t, logit, 0.0)], false);
                    grammar.apply(&mut one);
                    one.data.first().is_some_and(|d| d.logit().is_finite())
                });
                let token = match first {
                    Some(t) if allowed => t,
                    // Refused: the grammar filters the most likely tokens first, and the whole
                    // vocabulary only if it allows none of them (a grammar check per token is
                    // costly on a 262k vocabulary). The chain's own top-k would drop anything
                    // further down anyway.
                    _ => {
                        let mut top = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
                        if top.data.len() > GRAMMAR_SHORTLIST {
                            top.data.select_nth_unstable_by(GRAMMAR_SHORTLIST - 1, |a, b| b.logit().total_cmp(&a.logit()));
                            top.data.truncate(GRAMMAR_SHORTLIST);
                        }
                        match pick_allowed(top, grammar, chain) {
                            Some(t) => t,
                            None => {
                                let all = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
                                pick_allowed(all, grammar, chain).ok_or_else(|| "the output format allows no further token".to_string())?
                            }
                        }
                    }
                };
                grammar
                    .try_accept(token)
                    .map_err(|e| format!("the output format refused a token: {e}"))?;
                chain.accept(token);
                Ok(token)
            }
        }
    }

    /// Shows the sampler tokens it did not sample (the prompt), for repetition penalties. The
    /// grammar never sees them: it constrains only the output.
    pub(super) fn accept_many(&mut self, tokens: &[LlamaToken]) {
        match self {
            TokenSampler::Argmax => {}
            TokenSampler::Chain(chain) | TokenSampler::Constrained { chain, .. } => chain.accept_many(tokens),
        }
    }
}

/// Whether a sampler is held to a grammar (and so worth wrapping up).
impl TokenSampler {
    pub(super) fn constrained(&self) -> bool {
        matches!(self, TokenSampler::Constrained { .. })
    }
}

/// Per-token logit biases for wrapping up a JSON answer, one table for inside a string and
/// one for outside: inside, tokens that close the string (`"`, optionally followed by closing
/// brackets); outside, tokens made only of `}`, `]` and spaces, and against tokens that are
/// only whitespace (layout the budget can't afford). The grammar still decides what
/// is allowed; this only decides what is preferred.
pub(super) struct WrapUpBias {
    pub in_string: Vec<f32>,
    pub outside: Vec<f32>,
    /// Only against layout whitespace.
    pub compact: Vec<f32>,
}

const WRAP_UP_BIAS: f32 = 15.0;
/// The bias's scale in the last tokens: any closing token the grammar allows outweighs every
/// other (sampling temperatures included).
pub(super) const WRAP_UP_FORCE: f32 = 1000.0;

pub(super) fn wrap_up_bias(model: &LlamaModel) -> WrapUpBias {
    let vocab = model.vocab();
    let closing = |b: &u8| matches!(b, b'}' | b']' | b' ' | b'\n');
    let (mut in_string, mut outside, mut compact) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..model.n_vocab() {
        let piece = vocab.token_to_piece(LlamaToken(t), false, None);
        let closes_string = piece.first() == Some(&b'"') && piece[1..].iter().all(closing);
        let closes_value = !piece.is_empty() && piece.iter().all(closing) && piece.iter().any(|b| matches!(b, b'}' | b']'));
        // Layout (newlines, indentation) costs tokens a short budget needs for content.
        let layout = !piece.is_empty() && piece.iter().all(u8::is_ascii_whitespace);
        in_string.push(if closes_string { WRAP_UP_BIAS } else { 0.0 });
        outside.push(if closes_value { WRAP_UP_BIAS } else if layout { -WRAP_UP_BIAS } else { 0.0 });
        compact.push(if layout { -WRAP_UP_BIAS } else { 0.0 });
    }
    WrapUpBias { in_string, outside, compact }
}

/// How many of the most likely tokens the grammar checks before the whole vocabulary.
const GRAMMAR_SHORTLIST: usize = 256;

/// Filters `candidates` by the grammar, then lets the chain pick among what is left.
fn pick_allowed(mut candidates: LlamaTokenDataArray, grammar: &mut LlamaSampler, chain: &mut LlamaSampler) -> Option<LlamaToken> {
    grammar.apply(&mut candidates);
    if !candidates.data.iter().any(|d| d.logit().is_finite()) {
        return None;
    }
    chain.apply(&mut candidates);
    candidates
        .selected_token()
        .filter(|t| candidates.data.iter().any(|d| d.id() == *t && d.logit().is_finite()))
}

fn argmax(logits: &[f32]) -> LlamaToken {
    // The first maximum, as llama.cpp's greedy sampler picks it.
    let best = logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best });
    LlamaToken(best.0 as i32)
}

/// A token's log-probability under the model (softmax of the raw logits, before sampling), and
/// the `top` most likely tokens with theirs.
pub(super) fn logprobs(logits: &[f32], token: LlamaToken, top: usize) -> (f32, Vec<(LlamaToken, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let chosen = logits.get(token.0 as usize).map_or(f32::NEG_INFINITY, |l| l - log_sum);
    let mut best: Vec<(LlamaToken, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let pos = best.partition_point(|b| b.1 >= l);
                best.insert(pos, (LlamaToken(i as i32), l));
                best.truncate(top);
            }
        }
    }
    (chosen, best.into_iter().map(|(t, l)| (t, l - log_sum)).collect())
}

/// Builds the sampler for `o`; fails only when its grammar does not compile.
pub(super) fn build(model: &LlamaModel, o: &SamplingOptions, n_ctx: u32) -> Result<TokenSampler, String> {
    let mut chain = Vec::new();
    let last_n = if o.repeat_last_n < 0 { n_ctx as i32 } else { o.repeat_last_n };
    let penalised = o.repeat_penalty != 1.0 || o.frequency_penalty != 0.0 || o.presence_penalty != 0.0;
    if o.temperature <= 0.0 && !(penalised && last_n > 0) && o.grammar.is_none() {
        return Ok(TokenSampler::Argmax);
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
    let chain = LlamaSampler::chain_simple(chain);
    Ok(match &o.grammar {
        None => TokenSampler::Chain(chain),
        Some(g) => TokenSampler::Constrained {
            chain,
            grammar: LlamaSampler::grammar(model, g, "root").map_err(|e| format!("invalid grammar: {e}"))?,
        },
    })
}

fn random_seed() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}
