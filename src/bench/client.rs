//! One benchmark request against a target, timed from the client's side: in this process
//! through the service layer, or over HTTP with Ollama's NDJSON or OpenAI's SSE stream.
//!
//! Owns the request bodies and the stream parsing a benchmark needs, nothing more: it never
//! retries, never changes the target's state beyond loading the model, and reads only the
//! fields it times. Every request is greedy (temperature 0), raw (no chat template) and
//! bypasses hearth's response cache, so a repeated prompt is always computed again.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::BenchError;
use crate::api::ollama::GenerateRequest;
use crate::service::reply::{self, Piece};
use crate::service::{Caller, Generation, Outcome, Service};

/// Which HTTP API a `--url` target is driven through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /api/generate`, NDJSON; the final object carries the server's own timings.
    Ollama,
    /// `POST /v1/completions` with `stream: true` and `stream_options.include_usage`; only
    /// token counts come from the server, every duration is measured here.
    OpenAi,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Ollama => "ollama",
            Api::OpenAi => "openai",
        }
    }
}

/// What a benchmark runs against.
#[derive(Clone)]
pub enum Target {
    /// This process's service layer: `hearth bench MODEL` as the local user (names or .gguf
    /// paths), `decode_score` as the network (names only).
    Local { service: Service, caller: Caller },
    /// A running server (`hearth bench --url`).
    Http { base: String, api: Api, client: reqwest::Client },
}

impl Target {
    /// A server at `url` (`http://host:port`; a bare `host:port` gets `http://`).
    pub fn http(url: &str, api: Api, api_key: Option<&str>) -> Result<Target, BenchError> {
        let url = url.trim().trim_end_matches('/');
        let base = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
        // A fresh connection per request: servers close idle keep-alive connections on their
        // own schedule (llama-server after 5 s), and a request sent on one being closed fails.
        // On loopback a connect costs well under a millisecond, the same for every server.
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| BenchError::Invalid("the API key is not a valid header value".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Target::Http { base, api, client })
    }

    /// How reports name the target.
    pub fn describe(&self) -> (String, &'static str) {
        match self {
            Target::Local { .. } => ("in-process".to_string(), "service"),
            Target::Http { base, api, .. } => (base.clone(), api.as_str()),
        }
    }
}

/// One request's measurements. Durations are from just before the request was sent.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub e2e: Duration,
    /// When each non-empty piece of text arrived; a piece is one token but for a character
    /// split over several tokens, which arrives with its last.
    pub pieces: Vec<Duration>,
    pub prompt_tokens: Option<u32>,
    pub generated_tokens: Option<u32>,
    /// The server's own prompt and generation times, where its API reports them.
    pub prompt_eval: Option<Duration>,
    pub eval: Option<Duration>,
    pub load: Option<Duration>,
}

impl Sample {
    pub fn ttft(&self) -> Option<Duration> {
        self.pieces.first().copied()
    }

    /// Gaps between successive pieces, in milliseconds.
    pub fn itl_ms(&self) -> Vec<f64> {
        self.pieces.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect()
    }

    /// Tokens generated: the server's count, else the pieces seen.
    pub fn generated(&self) -> u32 {
        self.generated_tokens.unwrap_or(self.pieces.len() as u32)
    }

    /// Prompt tokens per second: the server's prompt time when it reports one, else the time
    /// to the first token (which then includes one decode step and the round trip).
    pub fn prefill_rate(&self) -> Option<f64> {
        let tokens = f64::from(self.prompt_tokens?);
        let time = self.prompt_eval.or_else(|| self.ttft()).unwrap_or(self.e2e);
        rate(tokens, time)
    }

    /// Generated tokens per second after the first (the first is the prompt's): the server's
    /// generation time when it reports one, else the span from the first piece to the last.
    pub fn decode_rate(&self) -> Option<f64> {
        let after_first = f64::from(self.generated().checked_sub(1).filter(|&n| n > 0)?);
        let span = match self.eval {
            Some(eval) => eval,
            None => *self.pieces.last()? - *self.pieces.first()?,
        };
        rate(after_first, span)
    }
}

fn rate(tokens: f64, time: Duration) -> Option<f64> {
    (!time.is_zero()).then(|| tokens / time.as_secs_f64())
}

/// Loads the model on the target (no generation) and returns how long the load took, where
/// the target says. The OpenAI API has no load request: a one-token generation stands in.
pub async fn load(target: &Target, model: &str) -> Result<Option<Duration>, BenchError> {
    match target {
        Target::Local { service, caller } => {
            let req = validate(json!({"model": model, "prompt": ""}))?;
            match service.start(req, *caller, Instant::now()).await? {
                Outcome::Loaded { load_duration, .. } => Ok(Some(load_duration)),
                Outcome::Generating(_) => Err(BenchError::Protocol("an empty prompt started a generation".into())),
            }
        }
        Target::Http { base, api: Api::Ollama, client } => {
            let resp = client.post(format!("{base}/api/generate")).json(&json!({"model": model, "prompt": "", "stream": false})).send().await?;
            let v: Value = checked(resp).await?.json().await?;
            Ok(v["load_duration"].as_u64().map(Duration::from_nanos))
        }
        Target::Http { api: Api::OpenAi, .. } => generate(target, model, "Hello", 1).await.map(|_| None),
    }
}

/// Generates up to `num_predict` tokens greedily from a raw `prompt` and times it.
pub async fn generate(target: &Target, model: &str, prompt: &str, num_predict: u32) -> Result<Sample, BenchError> {
    match target {
        Target::Local { service, caller } => local(service, *caller, model, prompt, num_predict).await,
        Target::Http { base, api: Api::Ollama, client } => {
            let body = json!({"model": model, "prompt": prompt, "raw": true, "stream": true, "use_cache": false,
                              "options": {"temperature": 0, "num_predict": num_predict}});
            let start = Instant::now();
            let resp = checked(client.post(format!("{base}/api/generate")).json(&body).send().await?).await?;
            let mut sample = Sample::default();
            read_lines(resp, |line| ollama_line(line, start, &mut sample)).await?;
            sample.e2e = start.elapsed();
            Ok(sample)
        }
        Target::Http { base, api: Api::OpenAi, client } => {
            let body = json!({"model": model, "prompt": prompt, "max_tokens": num_predict, "temperature": 0,
                              "stream": true, "stream_options": {"include_usage": true}, "use_cache": false});
            let start = Instant::now();
            let resp = checked(client.post(format!("{base}/v1/completions")).json(&body).send().await?).await?;
            let mut sample = Sample::default();
            read_lines(resp, |line| openai_line(line, start, &mut sample)).await?;
            sample.e2e = start.elapsed();
            Ok(sample)
        }
    }
}

fn validate(body: Value) -> Result<crate::service::ValidRequest, BenchError> {
    let req: GenerateRequest = serde_json::from_value(body).map_err(|e| BenchError::Invalid(e.to_string()))?;
    req.validate().map_err(|e| BenchError::Invalid(e.message))
}

async fn local(service: &Service, caller: Caller, model: &str, prompt: &str, num_predict: u32) -> Result<Sample, BenchError> {
    let req = validate(
        json!({"model": model, "prompt": prompt, "raw": true, "stream": true, "use_cache": false,
               "options": {"temperature": 0, "num_predict": num_predict}}),
    )?;
    let start = Instant::now();
    let Outcome::Generating(Generation { events, load_duration, .. }) = service.start(req, caller, start).await? else {
        return Err(BenchError::Protocol("the prompt only loaded the model".into()));
    };
    let mut sample = Sample { load: Some(load_duration), ..Sample::default() };
    let pieces = reply::pieces(events, None);
    futures::pin_mut!(pieces);
    loop {
        match pieces.next().await {
            Some(Piece::Text { text, .. }) if !text.is_empty() => sample.pieces.push(start.elapsed()),
            Some(Piece::Text { .. } | Piece::ToolCall { .. }) => {}
            Some(Piece::Done(c)) => {
                sample.prompt_tokens = Some(c.prompt_tokens);
                sample.prompt_eval = Some(c.prompt_eval);
                sample.generated_tokens = Some(c.eval_tokens);
                sample.eval = Some(c.eval);
                break;
            }
            Some(Piece::Failed(e)) => return Err(BenchError::Generation(e.to_string())),
            None => return Err(BenchError::Protocol("the generation ended without a final event".into())),
        }
    }
    sample.e2e = start.elapsed();
    Ok(sample)
}

/// The response if its status is a success, else its body as the error.
async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, BenchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or(body);
    Err(BenchError::Server { status: status.as_u16(), message })
}

/// Ollama's `{"error": "..."}` or OpenAI's `{"error": {"message": "..."}}`.
fn error_message(v: &Value) -> Option<String> {
    match &v["error"] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => Some(o.get("message").and_then(Value::as_str).unwrap_or("error").to_string()),
        _ => None,
    }
}

/// Feeds each line of a streamed body to `on_line` as it arrives; stops when it says done.
async fn read_lines(resp: reqwest::Response, mut on_line: impl FnMut(&str) -> Result<bool, BenchError>) -> Result<(), BenchError> {
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if !line.is_empty() && on_line(line)? {
                return Ok(());
            }
        }
    }
    let rest = String::from_utf8_lossy(&buf);
    if !rest.trim().is_empty() {
        on_line(rest.trim())?;
    }
    Ok(())
}

/// One NDJSON object of `/api/generate`; true once the final one is read.
fn ollama_line(line: &str, start: Instant, sample: &mut Sample) -> Result<bool, BenchError> {
    let v: Value = serde_json::from_str(line).map_err(|e| BenchError::Protocol(format!("not JSON ({e}): {line}")))?;
    if let Some(message) = error_message(&v) {
        return Err(BenchError::Generation(message));
    }
    if v["response"].as_str().is_some_and(|t| !t.is_empty()) {
        sample.pieces.push(start.elapsed());
    }
    if v["done"] != true {
        return Ok(false);
    }
    let count = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    let nanos = |k: &str| v[k].as_u64().map(Duration::from_nanos);
    sample.prompt_tokens = count("prompt_eval_count");
    sample.generated_tokens = count("eval_count");
    sample.prompt_eval = nanos("prompt_eval_duration");
    sample.eval = nanos("eval_duration");
    sample.load = nanos("load_duration");
    Ok(true)
}

/// One SSE line of `/v1/completions`; true at `data: [DONE]`.
fn openai_line(line: &str, start: Instant, sample: &mut Sample) -> Result<bool, BenchError> {
    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
        return Ok(false); // comments, `event:` and `id:` lines
    };
    if data == "[DONE]" {
        return Ok(true);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| BenchError::Protocol(format!("not JSON ({e}): {data}")))?;
    if let Some(message) = error_message(&v) {
        return Err(BenchError::Generation(message));
    }
    if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
        sample.pieces.push(start.elapsed());
    }
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        let count = |k: &str| usage[k].as_u64().and_then(|n| u32::try_from(n).ok());
        sample.prompt_tokens = count("prompt_tokens");
        sample.generated_tokens = count("completion_tokens");
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rates_prefer_the_servers_timings() {
        let s = Sample {
            e2e: ms(1000),
            pieces: vec![ms(100), ms(200), ms(300), ms(500)],
            prompt_tokens: Some(50),
            generated_tokens: Some(4),
            prompt_eval: Some(ms(50)),
            eval: Some(ms(300)),
            load: None,
        };
        assert_eq!(s.prefill_rate(), Some(1000.0));
        assert_eq!(s.decode_rate(), Some(10.0));
        assert_eq!(s.itl_ms(), vec![100.0, 100.0, 200.0]);
        assert_eq!(s.ttft(), Some(ms(100)));
    }

    #[test]
    fn rates_fall_back_to_client_timings() {
        let s = Sample { e2e: ms(1000), pieces: vec![ms(100), ms(200), ms(500)], prompt_tokens: Some(10), ..Sample::default() };
        assert_eq!(s.prefill_rate(), Some(100.0));
        // Two tokens after the first, over 400 ms.
        assert_eq!(s.decode_rate(), Some(5.0));
        let one = Sample { pieces: vec![ms(10)], generated_tokens: Some(1), ..Sample::default() };
        assert_eq!(one.decode_rate(), None);
    }

    #[test]
    fn ollama_stream_lines_are_read() {
        let start = Instant::now();
        let mut s = Sample::default();
        assert!(!ollama_line(r#"{"response":"Hi","done":false}"#, start, &mut s).expect("chunk"));
        assert!(!ollama_line(r#"{"response":"","done":false}"#, start, &mut s).expect("empty chunk"));
        let done = r#"{"response":"","done":true,"prompt_eval_count":7,"prompt_eval_duration":2000000,"eval_count":3,"eval_duration":4000000,"load_duration":5}"#;
        assert!(ollama_line(done, start, &mut s).expect("final"));
        assert_eq!(s.pieces.len(), 1);
        assert_eq!((s.prompt_tokens, s.generated_tokens), (Some(7), Some(3)));
        assert_eq!((s.prompt_eval, s.eval), (Some(ms(2)), Some(ms(4))));
        let err = ollama_line(r#"{"error":"boom"}"#, start, &mut s).expect_err("error line");
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn openai_stream_lines_are_read() {
        let start = Instant::now();
        let mut s = Sample::default();
        assert!(!openai_line(": keep-alive", start, &mut s).expect("comment"));
        assert!(!openai_line(r#"data: {"choices":[{"index":0,"text":"Hi"}]}"#, start, &mut s).expect("chunk"));
        assert!(!openai_line(r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#, start, &mut s).expect("usage"));
        assert!(openai_line("data: [DONE]", start, &mut s).expect("done"));
        assert_eq!(s.pieces.len(), 1);
        assert_eq!((s.prompt_tokens, s.generated_tokens), (Some(5), Some(2)));
        assert!(s.eval.is_none());
        let err = openai_line(r#"data: {"error":{"message":"busy"}}"#, start, &mut s).expect_err("error");
        assert!(err.to_string().contains("busy"));
    }

    #[test]
    fn bare_addresses_get_a_scheme() {
        let Ok(Target::Http { base, .. }) = Target::http("127.0.0.1:8080/", Api::OpenAi, None) else { panic!("http target") };
        assert_eq!(base, "http://127.0.0.1:8080");
    }
}
