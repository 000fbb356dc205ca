//! A short greedy generation's speed, for a quick verdict on a model (`/validate-model`):
//! `hearth bench`'s decode measurement, shortened, through the same request path as any
//! network request (a name, never a file path; the response cache bypassed).

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::reply::{self, Piece};
use super::{Caller, Outcome, PromptSpec, Service, ServiceError, ServiceOptions, ValidRequest};
use crate::backend::EngineError;
use crate::spec::options::OptionPatch;

/// The prompt decode speed is measured from (also `hearth bench`'s).
pub const DECODE_PROMPT: &str = "Once upon a time";

#[derive(Debug, Clone)]
pub struct DecodeScore {
    /// Generated tokens per second after the first (the engine's own timing); `None` when too
    /// few tokens came to time.
    pub tokens_per_second: Option<f64>,
    pub generated_tokens: u32,
    pub prompt_tokens: u32,
    pub ttft: Option<Duration>,
    /// How long loading took, zero when the model was already loaded.
    pub load: Duration,
}

fn raw_request(model: &str, prompt: &str, num_predict: u32) -> Result<ValidRequest, ServiceError> {
    let options = OptionPatch { temperature: Some(0.0), num_predict: Some(i64::from(num_predict)), ..OptionPatch::default() };
    Ok(ValidRequest {
        model: model.to_string(),
        prompt: PromptSpec::Generate { prompt: prompt.to_string(), system: None, template: None, raw: true, context: Vec::new() },
        tools: None,
        options,
        grammar: None,
        format: None,
        logprobs: None,
        keep_alive: None,
        stream: true,
        service: ServiceOptions { use_cache: Some(false), ..ServiceOptions::default() },
    })
}

impl Service {
    /// Loads `model`, then times one greedy generation of up to `tokens` tokens (at least 2).
    pub async fn decode_score(&self, model: &str, tokens: u32) -> Result<DecodeScore, ServiceError> {
        let load = match self.start(raw_request(model, "", 1)?, Caller::Network, Instant::now()).await? {
            Outcome::Loaded { load_duration, .. } => load_duration,
            Outcome::Generating(_) => return Err(ServiceError::Internal("an empty prompt started a generation".into())),
        };
        let started = Instant::now();
        let Outcome::Generating(g) = self.start(raw_request(model, DECODE_PROMPT, tokens.max(2))?, Caller::Network, started).await? else {
            return Err(ServiceError::Internal("the score's prompt only loaded the model".into()));
        };
        let pieces = reply::pieces(g.events, None);
        futures::pin_mut!(pieces);
        let mut ttft = None;
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Text { text, .. } if !text.is_empty() => {
                    ttft.get_or_insert_with(|| started.elapsed());
                }
                Piece::Text { .. } | Piece::ToolCall { .. } => {}
                Piece::Done(c) => {
                    let after_first = c.eval_tokens.saturating_sub(1);
                    let tokens_per_second = (after_first > 0 && !c.eval.is_zero()).then(|| f64::from(after_first) / c.eval.as_secs_f64());
                    return Ok(DecodeScore { tokens_per_second, generated_tokens: c.eval_tokens, prompt_tokens: c.prompt_tokens, ttft, load });
                }
                Piece::Failed(e) => return Err(e.into()),
            }
        }
        Err(EngineError::WorkerGone.into())
    }
}
