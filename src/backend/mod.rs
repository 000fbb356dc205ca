//! The seam between the service and whatever produces tokens (TGI's `Backend`).
//!
//! A `Backend` estimates and loads models; a loaded model is a `ModelInstance`, which turns an
//! assembled prompt (messages or a generate prompt, with the options already merged) into a
//! stream of typed `Event`s, and inputs into vectors. Rendering the chat template, tokenizing
//! and trimming history to the context happen behind the seam, because only the backend knows
//! its template and tokenizer: a backend that is another server takes the messages as they are.
//!
//! Implementations: `llama` (the llama.cpp engine, hearth's own), `remote` (a model on another
//! server: Ollama's API, OpenAI's, Anthropic's, or a fleet of hearth nodes) and `fake` (deterministic, for the tests of
//! the layers above; only under `cfg(test)`).
//! The resource manager holds instances only through this trait, so nothing above it knows
//! which one it has.
//!
//! Must not: hold service state (cache, personas, conversations) or know a wire format.

pub mod breaker;
#[cfg(test)]
pub mod fake;
pub mod llama;
pub mod remote;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc::UnboundedReceiver;

pub use crate::engine::{Completion, EngineError, Event, LoadSettings, TokenLogprob};
use crate::engine::grammar::ToolRequest;
use crate::spec::options::{OptionPatch, SamplingOptions};
use crate::spec::template::TemplateMessage;
use crate::store::ModelEntry;

/// How the prompt is made.
#[derive(Debug, Clone)]
pub enum PromptSpec {
    /// `/api/generate`: a prompt, optionally with a system message, a request template, raw
    /// mode, or the deprecated token `context` of an earlier answer.
    Generate {
        prompt: String,
        system: Option<String>,
        template: Option<String>,
        raw: bool,
        context: Vec<i32>,
    },
    /// `/api/chat`: a conversation rendered with the model's chat template, offering `tools`
    /// (OpenAI-style function objects) when there are any.
    Chat { messages: Vec<TemplateMessage>, tools: Vec<serde_json::Value> },
}

impl PromptSpec {
    /// An empty prompt or conversation only loads (or unloads) the model, as in Ollama.
    pub fn is_empty(&self) -> bool {
        match self {
            PromptSpec::Generate { prompt, context, .. } => prompt.is_empty() && context.is_empty(),
            PromptSpec::Chat { messages, .. } => messages.is_empty(),
        }
    }
}

/// The shape an answer must take, as the request asked for it. The local engine follows
/// `SamplingOptions::grammar` (made from this at the edge); a backend that is another server
/// passes this on in its own API's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    Json,
    /// JSON following this schema.
    Schema(serde_json::Value),
}

/// One generation, ready for a model: the prompt as the service assembled it, and the options
/// merged and validated.
#[derive(Debug, Clone)]
pub struct GenerateJob {
    pub prompt: PromptSpec,
    /// Chat messages that may be left out, oldest first, so the prompt fits the context with
    /// room for the answer (a conversation's stored history).
    pub droppable: Range<usize>,
    pub options: SamplingOptions,
    /// The model's own system prompt and template (a Modelfile's SYSTEM and TEMPLATE).
    pub model_system: Option<String>,
    pub model_template: Option<String>,
    /// For a backend that is another server: the options as asked (model < persona <
    /// request, before hearth's defaults), so only what someone set is sent on.
    pub asked: OptionPatch,
    /// The tools offered and the choice (the local engine reads `options.grammar`).
    pub tools: Option<ToolRequest>,
    /// The output format asked for (the local engine reads `options.grammar`).
    pub format: Option<OutputFormat>,
}

/// A generation the model accepted: its events, in order, ending in `Done` or `Failed`.
#[derive(Debug)]
pub struct Submitted {
    pub events: UnboundedReceiver<Event>,
    /// Droppable messages left out so the prompt fits.
    pub dropped_messages: usize,
    /// Which server answered, when the instance chose among several (a fleet's node:
    /// `fleet@http://127.0.0.1:11502/smollm2:135m`).
    pub answered_by: Option<String>,
}

/// One input to embed: text, tokenized like a prompt (special tokens parsed, BOS added when the
/// model wants one), or token ids used as given (OpenAI accepts token arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<i32>),
}

/// Inputs to embed, each at most `limit` tokens (cut to fit when `truncate`, else refused).
#[derive(Debug, Clone)]
pub struct EmbedJob {
    pub inputs: Vec<EmbedInput>,
    pub truncate: bool,
    pub limit: u32,
}

/// The pooled vectors, one per input in order, not normalized, and the tokens embedded.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// Work on a model's tokenizer and template, without generating.
#[derive(Debug, Clone)]
pub enum TextWork {
    /// Text to token ids: with the model's BOS and other added tokens or without, with special
    /// tokens parsed or read as plain text.
    Tokenize { text: String, add_special: bool, parse_special: bool },
    /// Token ids back to text.
    Detokenize(Vec<i32>),
    /// The prompt a generation would get (its template applied, nothing trimmed), and its
    /// length in tokens.
    Render(Box<GenerateJob>),
}

/// What `TextWork` gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum TextAnswer {
    /// Token ids with their bytes.
    Tokens(Vec<(i32, Vec<u8>)>),
    Text(String),
    Prompt { text: String, tokens: usize },
}

/// Tokens kept free for the answer when trimming history: the request's `num_predict` when it
/// sets one, else a quarter of the context; never more than half of it.
pub fn answer_reserve(options: &SamplingOptions, limit: usize) -> usize {
    let wanted = match options.num_predict {
        crate::spec::options::PredictLimit::Tokens(n) => n as usize,
        crate::spec::options::PredictLimit::UntilContextFull => limit / 4,
    };
    wanted.min(limit / 2)
}

/// Leaves out the oldest droppable messages, one turn at a time, until `fits` accepts the rest
/// or nothing droppable is left; an answer never starts the history without its question.
/// Returns how many messages went. Every backend trims the same way; only `fits` differs.
pub fn trim_history<E>(messages: &mut Vec<TemplateMessage>, droppable: Range<usize>, mut fits: impl FnMut(&[TemplateMessage]) -> Result<bool, E>) -> Result<usize, E> {
    let mut dropped = 0;
    while !fits(messages)? && dropped < droppable.len() {
        let at = droppable.start;
        messages.remove(at);
        dropped += 1;
        if dropped < droppable.len() && messages.get(at).is_some_and(|m| m.role != "user") {
            messages.remove(at);
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// What produces tokens: loads models and says what loading one costs.
pub trait Backend: Send + Sync + 'static {
    /// Bytes of RAM an instance of `entry` loaded with `settings` would take. Blocking (it may
    /// read the model file): call from a blocking thread. The error says what is wrong with
    /// the model.
    fn estimate(&self, entry: &ModelEntry, settings: &LoadSettings) -> Result<u64, String>;

    /// Bytes an instance's embedding context adds once it first embeds (not in `estimate`: the
    /// context is made on the first embed request). Blocking, like `estimate`.
    fn embedding_estimate(&self, entry: &ModelEntry, settings: &LoadSettings) -> Result<u64, String>;

    /// Loads `entry`. Blocking: call from a blocking thread.
    fn load(&self, entry: &ModelEntry, settings: LoadSettings) -> Result<Arc<dyn ModelInstance>, EngineError>;
}

/// A loaded model. Dropping the last handle frees it (after its requests finish).
pub trait ModelInstance: Send + Sync + 'static {
    /// Context per parallel slot actually allocated.
    fn n_ctx_slot(&self) -> u32;
    /// Sequences served at once.
    fn parallel(&self) -> u32;
    fn load_duration(&self) -> Duration;
    /// False once the instance can no longer serve (its worker died): the resource manager
    /// drops it and the next request loads the model again.
    fn is_alive(&self) -> bool;
    /// Width of the vectors `embed` returns.
    fn n_embd(&self) -> usize;
    /// Renders, tokenizes and queues a generation. Fails before any output when the prompt
    /// can't be made or can't fit.
    fn generate(self: Arc<Self>, job: GenerateJob) -> BoxFuture<'static, Result<Submitted, EngineError>>;
    /// Embeds the inputs.
    fn embed(self: Arc<Self>, job: EmbedJob) -> BoxFuture<'static, Result<Embedded, EngineError>>;
    /// Tokenizes, detokenizes or renders a prompt. Only a model whose tokenizer is at hand
    /// can: another server's model can't.
    fn text(self: Arc<Self>, _work: TextWork) -> BoxFuture<'static, Result<TextAnswer, EngineError>> {
        Box::pin(async { Err(EngineError::Unsupported("this model is served by another server: its tokenizer and template are not available here".into())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str) -> TemplateMessage {
        TemplateMessage { role: role.into(), content: String::new() }
    }

    #[test]
    fn history_goes_a_whole_turn_at_a_time_and_stops_when_it_fits() {
        // system, then history u a u a, then the new question.
        let roles = ["system", "user", "assistant", "user", "assistant", "user"];
        let mut m: Vec<_> = roles.iter().map(|r| msg(r)).collect();
        let dropped = trim_history(&mut m, 1..5, |m| Ok::<_, ()>(m.len() <= 4)).expect("ok");
        assert_eq!(dropped, 2);
        assert_eq!(m.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant", "user"]);
        // Never past the droppable range, even when it still does not fit.
        let mut m: Vec<_> = roles.iter().map(|r| msg(r)).collect();
        assert_eq!(trim_history(&mut m, 1..5, |_| Ok::<_, ()>(false)).expect("ok"), 4);
        assert_eq!(m.len(), 2);
        // Nothing droppable: nothing goes.
        let mut m: Vec<_> = roles.iter().map(|r| msg(r)).collect();
        assert_eq!(trim_history(&mut m, 0..0, |_| Ok::<_, ()>(false)).expect("ok"), 0);
    }
}
