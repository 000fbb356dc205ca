//! Models on another server, behind the same seam as the local engine: a `Provider` is one
//! configured server (Ollama's API, OpenAI's, or Anthropic's Messages API) or a fleet of
//! hearth nodes (`fleet`, which picks a node per request), and a
//! `RemoteModel` is one of its models as a `ModelInstance`. A job goes out in the provider's
//! API (`ollama`, `openai`, `anthropic` each build the request and read the answer's stream
//! back into `Event`s); the answer always streams from the upstream, whatever the client asked,
//! so every front end reads it the same way.
//!
//! `generate` returns only once the first piece of the answer has arrived: a failure before
//! that (no connection, a refusal, an error status, silence past `first_byte`) is an `Err`,
//! which a route may retry on another target; after it, failures end the stream with
//! `Failed`. A tool call comes back as the JSON text hearth's own engine writes for one, so
//! `service::reply` reads both the same way.
//!
//! Must not: log or show a provider's API key (it is read from the environment, sent in a
//! header and kept nowhere else), or follow redirects (a key must not go to another host).

mod anthropic;
pub mod fleet;
mod ollama;
mod openai;
#[cfg(test)]
mod tests;

// A tool call comes back as the text hearth's engine writes for one (`service::reply` reads it).
use crate::engine::grammar::call_text;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Semaphore;

use super::{EmbedJob, Embedded, EngineError, Event, GenerateJob, ModelInstance, Submitted};
use crate::spec::template::TemplateMessage;

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Ollama's API (Ollama itself, another hearth).
    Ollama,
    /// OpenAI's chat completions (llama-server, vLLM, LM Studio, a cloud API).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// A fleet of hearth nodes (`fleet`), each spoken to in Ollama's API.
    Hearth,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Hearth => "hearth",
        }
    }
}

/// How long each stage of a call to a provider may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From sending the request to the first piece of the answer (a model may have to load).
    pub first_byte: Duration,
    /// The whole answer; `None` leaves it to the server's `request_timeout`.
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(5), first_byte: Duration::from_secs(120), total: None }
    }
}

/// A provider as the config file describes it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    /// The server's base URL, without a trailing slash (`http://127.0.0.1:11500`,
    /// `https://api.openai.com`); API paths (`/api/chat`, `/v1/...`) are added to it.
    pub url: String,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    pub timeouts: Timeouts,
    /// Requests sent to it at once; one more is refused at once (429), so a route moves on.
    pub max_concurrent: usize,
    /// Dollars per 1000 input and output tokens.
    pub input_per_1k: f64,
    pub output_per_1k: f64,
    /// The models it serves; `None` asks the server (`/api/tags`, `/v1/models`) every
    /// `refresh`.
    pub models: Option<Vec<String>>,
    pub refresh: Duration,
    /// Check the server this often (`None`: no active checks; failures still open breakers).
    pub health_check: Option<Duration>,
    /// `max_tokens` sent to Anthropic's API when the request sets no `num_predict` (it is
    /// required there).
    pub max_tokens: u32,
    /// A fleet's nodes and policy (`kind: hearth`); `url` then lists the nodes, for display.
    pub fleet: Option<fleet::FleetSpec>,
}

/// The models a provider lists now, and how the last look went.
#[derive(Debug, Clone, Default)]
struct Listing {
    models: Vec<String>,
    error: Option<String>,
}

/// One configured server, shared by its models' instances.
pub struct Provider {
    pub spec: ProviderSpec,
    client: reqwest::Client,
    key: Option<String>,
    running: Arc<Semaphore>,
    listing: RwLock<Listing>,
    fleet: Option<Arc<fleet::Fleet>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("name", &self.spec.name).field("kind", &self.spec.kind).field("url", &self.spec.url).finish_non_exhaustive()
    }
}

impl Provider {
    /// Reads the API key from its environment variable (`env`), which must be set when named.
    pub fn new(spec: ProviderSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<Provider, String> {
        let key = match &spec.api_key_env {
            Some(var) => Some(env(var).filter(|k| !k.trim().is_empty()).ok_or_else(|| format!("provider {}: the environment variable {var} (api_key_env) is not set", spec.name))?),
            None => None,
        };
        Provider::build(spec, key)
    }

    /// A provider with its key already read (a fleet's node shares the fleet's).
    fn build(spec: ProviderSpec, key: Option<String>) -> Result<Provider, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(spec.timeouts.connect)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("provider {}: {e}", spec.name))?;
        let listing = Listing { models: spec.models.clone().unwrap_or_default(), error: None };
        let fleet = match &spec.fleet {
            Some(f) => Some(Arc::new(fleet::Fleet::new(&spec, f.clone(), key.clone())?)),
            None => None,
        };
        Ok(Provider { running: Arc::new(Semaphore::new(spec.max_concurrent)), spec, client, key, listing: RwLock::new(listing), fleet })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The models it serves, as last listed.
    pub fn models(&self) -> Vec<String> {
        self.listing.read().unwrap_or_else(std::sync::PoisonError::into_inner).models.clone()
    }

    /// Why the last listing failed, if it did.
    pub fn listing_error(&self) -> Option<String> {
        self.listing.read().unwrap_or_else(std::sync::PoisonError::into_inner).error.clone()
    }

    /// Requests running on it now.
    pub fn in_flight(&self) -> usize {
        self.spec.max_concurrent - self.running.available_permits()
    }

    /// `model` on this provider.
    pub fn model(self: &Arc<Self>, model: &str) -> Arc<RemoteModel> {
        Arc::new(RemoteModel { provider: Arc::clone(self), model: model.to_string() })
    }

    /// Asks the server for its models (unless the config lists them) and keeps the answer;
    /// a failure keeps the last list and is remembered for `/api/routes`.
    pub async fn refresh(&self) -> Result<(), String> {
        if self.spec.models.is_some() {
            return Ok(());
        }
        let result = self.list().await;
        let mut listing = self.listing.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Ok(models) => *listing = Listing { models: models.clone(), error: None },
            Err(e) => listing.error = Some(e.clone()),
        }
        result.map(|_| ())
    }

    /// One cheap call that says the server is up: its model list (a fleet checks each node).
    pub async fn check(&self) -> Result<(), String> {
        match &self.fleet {
            Some(f) => f.check().await,
            None => self.list().await.map(|_| ()),
        }
    }

    /// A fleet's policy and nodes, for `/api/routes`.
    pub fn fleet_view(&self) -> Option<Value> {
        self.fleet.as_ref().map(|f| f.view())
    }

    async fn list(&self) -> Result<Vec<String>, String> {
        if let Some(f) = &self.fleet {
            return f.list().await;
        }
        let (path, field, name) = match self.spec.kind {
            ProviderKind::Ollama | ProviderKind::Hearth => ("/api/tags", "models", "name"),
            ProviderKind::OpenAi | ProviderKind::Anthropic => ("/v1/models", "data", "id"),
        };
        let resp = self
            .authorized(self.client.get(format!("{}{path}", self.spec.url)))
            .timeout(self.spec.timeouts.first_byte)
            .send()
            .await
            .map_err(|e| format!("{path}: {}", describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{path}: HTTP {status}"));
        }
        let v: Value = resp.json().await.map_err(|e| format!("{path}: {e}"))?;
        let models = v[field].as_array().ok_or_else(|| format!("{path}: no `{field}` list in the answer"))?;
        Ok(models.iter().filter_map(|m| m[name].as_str().map(str::to_string)).collect())
    }

    /// The request with the provider's key in the header its API wants.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = match self.spec.kind {
            ProviderKind::Anthropic => req.header("anthropic-version", "2023-06-01"),
            _ => req,
        };
        match (&self.key, self.spec.kind) {
            (Some(k), ProviderKind::Anthropic) => req.header("x-api-key", k),
            (Some(k), _) => req.bearer_auth(k),
            (None, _) => req,
        }
    }

    fn fail(&self, status: u16, message: impl Into<String>) -> EngineError {
        EngineError::Upstream { target: self.spec.name.clone(), status, message: message.into() }
    }

    /// Sends `body` to `path` and checks the status; the error carries the upstream's message.
    async fn post(&self, path: &str, body: &Value, wait: Duration) -> Result<reqwest::Response, EngineError> {
        let send = self.authorized(self.client.post(format!("{}{path}", self.spec.url))).json(body).send();
        let resp = match tokio::time::timeout(wait, send).await {
            Err(_) => return Err(self.fail(504, format!("no answer within {wait:?} (timeouts.first_byte)"))),
            Ok(Err(e)) => return Err(self.fail(502, describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = tokio::time::timeout(Duration::from_secs(5), resp.text()).await.ok().and_then(Result::ok).unwrap_or_default();
        let message = upstream_message(&text).unwrap_or_else(|| format!("HTTP {status}"));
        // Its 4xx is the request's fault and says so; anything else is the server's.
        let ours = if status.is_client_error() { status.as_u16() } else { 502 };
        Err(self.fail(ours, format!("{message} (HTTP {})", status.as_u16())))
    }
}

/// The error message in an upstream's error body, whichever API's shape it has.
fn upstream_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let m = v["error"]["message"].as_str().or_else(|| v["error"].as_str()).or_else(|| v["message"].as_str())?;
    Some(m.chars().take(300).collect())
}

/// A reqwest error without its URL's query or anything else that may hold a secret.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_body() || e.is_decode() {
        "the answer broke off".into()
    } else {
        "request failed".into()
    }
}

/// A model on a provider.
#[derive(Debug)]
pub struct RemoteModel {
    provider: Arc<Provider>,
    model: String,
}

impl RemoteModel {
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
}

/// Reads an answer's stream: each line of the body becomes events; `end` finishes an answer
/// whose stream closed without its own ending.
trait Decoder: Send {
    fn line(&mut self, line: &str) -> Vec<Event>;
    fn end(&mut self) -> Vec<Event>;
}

fn ends(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Done(_) | Event::Failed(_)))
}

impl ModelInstance for RemoteModel {
    fn n_ctx_slot(&self) -> u32 {
        0
    }

    fn parallel(&self) -> u32 {
        self.provider.spec.max_concurrent as u32
    }

    fn load_duration(&self) -> Duration {
        Duration::ZERO
    }

    fn is_alive(&self) -> bool {
        true
    }

    fn n_embd(&self) -> usize {
        0
    }

    fn generate(self: Arc<Self>, job: GenerateJob) -> BoxFuture<'static, Result<Submitted, EngineError>> {
        async move {
            let p = &self.provider;
            let started = Instant::now();
            let permit = Arc::clone(&p.running)
                .try_acquire_owned()
                .map_err(|_| p.fail(429, format!("{} requests already running (max_concurrent)", p.spec.max_concurrent)))?;
            if let Some(f) = &p.fleet {
                return Arc::clone(f).generate(self.model.clone(), job, permit).await;
            }
            let (path, body, decoder): (&str, Value, Box<dyn Decoder>) = match p.spec.kind {
                ProviderKind::Ollama | ProviderKind::Hearth => ollama::request(&self.model, &job)?,
                ProviderKind::OpenAi => openai::request(&self.model, &job)?,
                ProviderKind::Anthropic => anthropic::request(&self.model, &job, p.spec.max_tokens)?,
            };
            let first_byte = p.spec.timeouts.first_byte;
            let deadline = tokio::time::Instant::from_std(started) + first_byte;
            let resp = p.post(path, &body, first_byte).await?;
            let mut reader = Reader { body: Box::pin(resp.bytes_stream()), decoder, buffer: Vec::new(), started, first: None, name: p.spec.name.clone() };
            // The first piece of the answer, within the first-byte limit: until then a failure
            // is the caller's to retry elsewhere.
            let first = loop {
                match tokio::time::timeout_at(deadline, reader.next()).await {
                    Err(_) => return Err(p.fail(504, format!("no answer within {first_byte:?} (timeouts.first_byte)"))),
                    Ok(Err(message)) => return Err(p.fail(502, message)),
                    Ok(Ok(events)) if events.is_empty() => continue,
                    Ok(Ok(events)) => break events,
                }
            };
            if let Some(Event::Failed(EngineError::Upstream { message, .. })) = first.first() {
                return Err(p.fail(502, message.clone()));
            }
            let (tx, events) = unbounded_channel();
            let total = p.spec.timeouts.total;
            let name = p.spec.name.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let finished = send(&tx, first);
                if !finished {
                    pump(&mut reader, &tx, total.map(|t| tokio::time::Instant::from_std(started) + t), &name).await;
                }
                // Read the body to its end, so the connection goes back to the pool for the
                // next request instead of being closed.
                if !tx.is_closed() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = reader.body.next().await {} }).await;
                }
            });
            Ok(Submitted { events, dropped_messages: 0, answered_by: None })
        }
        .boxed()
    }

    fn embed(self: Arc<Self>, job: EmbedJob) -> BoxFuture<'static, Result<Embedded, EngineError>> {
        async move {
            let p = &self.provider;
            let _permit = Arc::clone(&p.running)
                .try_acquire_owned()
                .map_err(|_| p.fail(429, format!("{} requests already running (max_concurrent)", p.spec.max_concurrent)))?;
            if let Some(f) = &p.fleet {
                return Arc::clone(f).embed(self.model.clone(), job).await;
            }
            let (path, body) = match p.spec.kind {
                ProviderKind::Ollama | ProviderKind::Hearth => ollama::embed_request(&self.model, &job)?,
                ProviderKind::OpenAi => openai::embed_request(&self.model, &job),
                ProviderKind::Anthropic => return Err(EngineError::Unsupported(format!("provider {} speaks Anthropic's API, which has no embeddings", p.spec.name))),
            };
            let wait = p.spec.timeouts.total.unwrap_or(p.spec.timeouts.first_byte);
            let resp = p.post(path, &body, wait).await?;
            let v: Value = tokio::time::timeout(wait, resp.json()).await.map_err(|_| p.fail(504, "the embeddings did not arrive in time"))?.map_err(|e| p.fail(502, describe(&e)))?;
            let read = match p.spec.kind {
                ProviderKind::Ollama | ProviderKind::Hearth => ollama::read_embeddings(&v),
                _ => openai::read_embeddings(&v),
            };
            let embedded = read.ok_or_else(|| p.fail(502, "the answer holds no embeddings"))?;
            if embedded.vectors.len() != job.inputs.len() {
                return Err(p.fail(502, format!("asked for {} embeddings, got {}", job.inputs.len(), embedded.vectors.len())));
            }
            Ok(embedded)
        }
        .boxed()
    }
}

/// Sends events on; true once the answer has ended (or nobody is listening).
fn send(tx: &UnboundedSender<Event>, events: Vec<Event>) -> bool {
    let end = ends(&events);
    for e in events {
        if tx.send(e).is_err() {
            return true;
        }
    }
    end
}

/// Streams the rest of the answer; the response (and with it the upstream's work) is dropped
/// as soon as the client is gone.
async fn pump(reader: &mut Reader, tx: &UnboundedSender<Event>, deadline: Option<tokio::time::Instant>, name: &str) {
    loop {
        let next = tokio::select! {
            biased;
            () = tx.closed() => return,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                let _ = tx.send(Event::Failed(EngineError::Upstream { target: name.to_string(), status: 504, message: "the answer ran past timeouts.total".into() }));
                return;
            }
            next = reader.next() => next,
        };
        match next {
            Ok(events) => {
                if send(tx, events) {
                    return;
                }
            }
            Err(message) => {
                let _ = tx.send(Event::Failed(EngineError::Upstream { target: name.to_string(), status: 502, message }));
                return;
            }
        }
    }
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The body split into lines for the decoder, with the answer's timing filled in.
struct Reader {
    body: Body,
    decoder: Box<dyn Decoder>,
    buffer: Vec<u8>,
    started: Instant,
    first: Option<Instant>,
    /// The provider's name, for the errors the decoder reports.
    name: String,
}

impl Reader {
    /// The events of the next chunk (possibly none); `Err` when the body broke off.
    async fn next(&mut self) -> Result<Vec<Event>, String> {
        let mut events = match self.body.next().await {
            Some(Ok(chunk)) => {
                self.buffer.extend_from_slice(&chunk);
                let mut events = Vec::new();
                while let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=at).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if !line.is_empty() {
                        events.extend(self.decoder.line(line));
                    }
                }
                events
            }
            Some(Err(e)) => return Err(describe(&e)),
            None => {
                let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).trim().to_string();
                let mut events = if rest.is_empty() { Vec::new() } else { self.decoder.line(&rest) };
                if !ends(&events) {
                    events.extend(self.decoder.end());
                }
                events
            }
        };
        if self.first.is_none() && events.iter().any(|e| matches!(e, Event::Text(_) | Event::Done(_))) {
            self.first = Some(Instant::now());
        }
        // Providers that report no timings get hearth's view: until the first piece, then
        // the rest.
        for e in &mut events {
            if let Event::Failed(EngineError::Upstream { target, .. }) = e {
                target.clone_from(&self.name);
            }
            if let Event::Done(c) = e {
                let first = self.first.unwrap_or_else(Instant::now);
                if c.prompt_eval.is_zero() {
                    c.prompt_eval = first - self.started;
                }
                if c.eval.is_zero() {
                    c.eval = first.elapsed();
                }
            }
        }
        Ok(events)
    }
}

// ---------------------------------------------------------------- shared by the translations

/// A chat message as APIs that link tool calls and results need it. hearth keeps an
/// assistant's tool call as the call's JSON text and a result as a `tool` message; the ids
/// that link them are made here.
#[derive(Debug, Clone, PartialEq)]
enum Turn {
    Say { role: String, content: String },
    Call { id: String, name: String, arguments: Value },
    Result { id: String, content: String },
}

fn turns(messages: &[TemplateMessage]) -> Vec<Turn> {
    let mut out = Vec::new();
    let mut calls = 0;
    let mut last_call = None;
    for m in messages {
        let call = (m.role == "assistant")
            .then(|| serde_json::from_str::<Value>(&m.content).ok())
            .flatten()
            .and_then(|v| Some((v.get("name")?.as_str()?.to_string(), v.get("arguments")?.clone())));
        match (m.role.as_str(), call) {
            (_, Some((name, arguments))) => {
                calls += 1;
                let id = format!("call_{calls}");
                last_call = Some(id.clone());
                out.push(Turn::Call { id, name, arguments });
            }
            ("tool", None) => out.push(Turn::Result { id: last_call.clone().unwrap_or_else(|| "call_0".into()), content: m.content.clone() }),
            (role, None) => out.push(Turn::Say { role: role.to_string(), content: m.content.clone() }),
        }
    }
    out
}

/// The finished answer's accounting, as much as the provider told.
fn done(length: bool, prompt_tokens: u64, eval_tokens: u64) -> Event {
    Event::Done(crate::engine::Completion {
        reason: if length { crate::engine::DoneReason::Length } else { crate::engine::DoneReason::Stop },
        prompt_tokens: prompt_tokens.min(u32::MAX as u64) as u32,
        cached_tokens: 0,
        prompt_eval: Duration::ZERO,
        eval_tokens: eval_tokens.min(u32::MAX as u64) as u32,
        eval: Duration::ZERO,
        context: Vec::new(),
        stop_sequence: None,
        draft_tokens: 0,
        draft_accepted: 0,
    })
}

fn failed(message: impl Into<String>) -> Event {
    Event::Failed(EngineError::Upstream { target: "upstream".into(), status: 502, message: message.into() })
}

/// Refuses what no provider can take: hearth's token contexts and log-probabilities.
fn refuse_local_only(job: &GenerateJob, provider_kind: ProviderKind) -> Result<(), EngineError> {
    if job.options.logprobs.is_some() {
        return Err(EngineError::Unsupported(format!("logprobs are not available from a provider model ({} API)", provider_kind.as_str())));
    }
    Ok(())
}
