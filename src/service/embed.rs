//! Embeddings through the service: admitted, timed and counted like a generation, on a local
//! model (leased from the resource manager) or a provider's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{accounts, resolve, resolve_options, Caller, Service, ServiceError};
use crate::backend::{EmbedInput, EmbedJob, EngineError};
use crate::resources::{KeepAlive, ModelManager};
use crate::spec::options::OptionPatch;


/// An embedding request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidEmbedRequest {
    pub model: String,
    /// No inputs only loads the model, as in Ollama.
    pub inputs: Vec<EmbedInput>,
    /// Cut an input longer than the context to fit (Ollama's default) instead of refusing it.
    pub truncate: bool,
    /// Keep only the first N dimensions, normalized again; checked against the model's width.
    pub dimensions: Option<usize>,
    /// Scale each vector to unit length (`/api/embed`, `/v1/embeddings`); the legacy
    /// `/api/embeddings` returns the pooled vector as it is, like Ollama's.
    pub normalize: bool,
    /// Only `num_ctx` matters here (it picks the instance and the limit).
    pub options: OptionPatch,
    pub keep_alive: Option<KeepAlive>,
    /// The API key's account the tokens are counted on.
    pub account: Option<Arc<accounts::Account>>,
}

/// The vectors, one per input in order, with Ollama's accounting.
#[derive(Debug, Clone)]
pub struct EmbedResult {
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens embedded, after truncation.
    pub prompt_tokens: usize,
    pub load_duration: std::time::Duration,
    pub total_duration: std::time::Duration,
}

impl Service {
    /// Embeds every input with the model's pooled embeddings (one loaded instance serves
    /// generation and embeddings). Counted, bounded and timed like a generation:
    /// `max_concurrent_requests` admits it, `request_timeout` stops it, the metrics count it.
    pub async fn embed(&self, req: ValidEmbedRequest, caller: Caller) -> Result<EmbedResult, ServiceError> {
        let settings = self.settings();
        let _running = self.admit(settings.max_concurrent_requests)?;
        let model = req.model.clone();
        let account = req.account.clone();
        let started = Instant::now();
        let remote = self.router.table().remote(&req.model);
        let work = embed(&self.manager, remote, req, caller, started);
        let result = match settings.request_timeout {
            Some(limit) => match tokio::time::timeout_at(tokio::time::Instant::from_std(started) + limit, work).await {
                Ok(r) => r,
                Err(_) => {
                    self.metrics.record_error("timeout");
                    tracing::warn!(model = %model, "embedding stopped: past the request timeout of {limit:?}");
                    return Err(EngineError::TimedOut(limit).into());
                }
            },
            None => work.await,
        };
        if let Ok(r) = &result {
            self.metrics.record_embedding(&model, r.prompt_tokens as u64);
            if let Some(a) = &account {
                a.charge(&self.metrics, &model, r.prompt_tokens as u64, 0);
            }
            tracing::info!(model = %model, prompt_tokens = r.prompt_tokens, inputs = r.embeddings.len(), duration_ms = r.total_duration.as_millis() as u64, "embedding done");
        }
        result
    }
}

async fn embed(manager: &ModelManager, remote: Option<Arc<crate::backend::remote::RemoteModel>>, req: ValidEmbedRequest, caller: Caller, started: Instant) -> Result<EmbedResult, ServiceError> {
    if let Some(remote) = remote {
        // The provider sizes and truncates inputs itself; the vectors are shaped here as for a
        // local model.
        if req.inputs.is_empty() {
            return Ok(EmbedResult { embeddings: Vec::new(), prompt_tokens: 0, load_duration: Duration::ZERO, total_duration: started.elapsed() });
        }
        let embedded = crate::backend::ModelInstance::embed(remote, EmbedJob { inputs: req.inputs, truncate: req.truncate, limit: 0 }).await?;
        let embeddings = shape(embedded.vectors, req.dimensions, req.normalize)?;
        return Ok(EmbedResult { embeddings, prompt_tokens: embedded.prompt_tokens, load_duration: Duration::ZERO, total_duration: started.elapsed() });
    }
    let entry = resolve(manager, &req.model, caller).await?;
    let (options, explicit_num_ctx) = resolve_options(manager, &entry, None, &req.options)?;
    let num_ctx = options.num_ctx;
    let lease = manager.acquire(entry, explicit_num_ctx.then_some(num_ctx), req.keep_alive).await?;
    let load_duration = lease.load_duration;
    let done = |embeddings: Vec<Vec<f32>>, prompt_tokens: usize| EmbedResult {
        embeddings,
        prompt_tokens,
        load_duration,
        total_duration: started.elapsed(),
    };
    if req.inputs.is_empty() {
        return Ok(done(Vec::new(), 0));
    }
    // The embedding context is made on the first embed request: count it first.
    manager.count_embedding(&lease).await?;
    let n_embd = lease.model.n_embd();
    if let Some(requested) = req.dimensions.filter(|d| !(1..=n_embd).contains(d)) {
        return Err(EngineError::Dimensions { requested, n_embd }.into());
    }
    // Ollama's limit: the request's context, within what the instance holds.
    let limit = num_ctx.min(lease.model.n_ctx_slot());
    let job = EmbedJob { inputs: req.inputs, truncate: req.truncate, limit };
    let embedded = Arc::clone(&lease.model).embed(job).await?;
    let embeddings = shape(embedded.vectors, req.dimensions, req.normalize)?;
    Ok(done(embeddings, embedded.prompt_tokens))
}

/// Each vector cut to `dimensions` (and normalized again), or normalized when asked.
fn shape(vectors: Vec<Vec<f32>>, dimensions: Option<usize>, normalize: bool) -> Result<Vec<Vec<f32>>, ServiceError> {
    vectors
        .into_iter()
        .map(|mut v| match dimensions {
            Some(dims) if dims > v.len() => Err(EngineError::Dimensions { requested: dims, n_embd: v.len() }.into()),
            Some(dims) => Ok(crate::engine::embed::shorten(v, dims)),
            None => {
                if normalize {
                    crate::engine::embed::normalize(&mut v);
                }
                Ok(v)
            }
        })
        .collect()
}
