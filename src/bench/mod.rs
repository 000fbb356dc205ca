//! Benchmarks: how fast a model answers, measured from a client's side. `hearth bench` prints
//! what `run` returns; the `/validate-model` route and seed 003's benchmark suite call the
//! same code (`service::score`, `/validate-model`'s, is the short version).
//!
//! A run has three phases, each on greedy, raw, uncached requests (see `client`):
//! 1. **prefill**: a ~512-token prompt (~128 in the quick plan) with `num_predict` 1, `runs`
//!    times (each prompt starts differently, so no server-side prompt cache helps);
//! 2. **decode**: a short prompt with `decode_tokens` to generate, `runs` times;
//! 3. **concurrency sweep**: for each level N, N clients share `max(requests, N)` requests of
//!    `num_predict` tokens, each taking the next as soon as its last finishes.
//!
//! The JSON report (`Report`, stable field names; durations in milliseconds unless the name
//! says seconds; a field the target cannot measure is `null`):
//!
//! ```text
//! { model, target ("in-process" or the URL), api ("service" | "ollama" | "openai"), version,
//!   settings: {threads, parallel, context_length, batch_size, convert_weights} | null,
//!   plan: {runs, decode_tokens, concurrency: [N..], requests, num_predict},
//!   load_seconds, wall_seconds, peak_rss_bytes,
//!   prefill: {runs, prompt_tokens, tokens_per_second, ttft_ms: S},
//!   decode: {runs, generated_tokens, tokens_per_second, ttft_ms: S, itl_ms: S},
//!   concurrency: [{concurrency, requests, errors, first_error, generated_tokens, wall_seconds,
//!                  tokens_per_second, requests_per_second, e2e_ms: S, ttft_ms: S, itl_ms: S}] }
//! S = {count, mean, min, p50, p95, p99, max} | null
//! ```
//!
//! Rates are medians over runs; `prefill.tokens_per_second` is prompt tokens over the server's
//! prompt time (Ollama API, in-process) or over the time to first token (OpenAI API);
//! `decode.tokens_per_second` is the tokens after the first over the server's generation time,
//! or over the span from the first streamed token to the last. A sweep level's
//! `tokens_per_second` is every generated token over the level's wall time. Percentiles are
//! linear between ranks (`stats`). Timings depend on the machine's load: compare runs made on
//! the same quiet machine, and never assert them in tests.
//!
//! This module measures and reports; it never prints (the command owns the terminal) and never
//! changes a server beyond loading the model it measures.

pub mod client;
pub mod report;
pub mod stats;
pub mod svg;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use client::{Api, Sample, Target};
pub use report::{DecodeResult, LevelResult, PrefillResult, Report, Settings};

use crate::service::ServiceError;
use stats::{median, Summary};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("{phase}: the model generated too few tokens to time (it stopped at once)")]
    NoTokens { phase: &'static str },
    #[error("invalid benchmark plan: {0}")]
    Plan(String),
}

/// A prompt of about 8 tokens per item on both test models (SmolLM2 and Gemma 3 tokenizers):
/// 65 items make the ~512 tokens of benches/compare.py, so prefill numbers compare with
/// llama-bench's pp512.
pub fn prefill_prompt(items: usize) -> String {
    (0..items).map(|i| format!("item {i} is a number.")).collect::<Vec<_>>().join(" ")
}

/// The decode phase's prompt, as in benches/compare.py (tg128).
pub use crate::service::score::DECODE_PROMPT;

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub model: String,
    /// Repetitions of the prefill and of the decode phase.
    pub runs: u32,
    #[serde(skip)]
    pub prefill_prompt: String,
    #[serde(skip)]
    pub decode_prompt: String,
    /// Tokens to generate in the decode phase.
    pub decode_tokens: u32,
    /// Concurrency levels of the sweep.
    pub concurrency: Vec<u32>,
    /// Requests per level (at least the level's concurrency).
    pub requests: u32,
    /// Tokens to generate per sweep request.
    pub num_predict: u32,
}

impl Plan {
    /// The default run: 3 repetitions, tg128, levels 1, 2, 4, 8, 16 with 8+ requests of 64
    /// tokens each (about a minute for a 135M model on two cores).
    pub fn full(model: &str) -> Plan {
        Plan {
            model: model.to_string(),
            runs: 3,
            prefill_prompt: prefill_prompt(65),
            decode_prompt: DECODE_PROMPT.to_string(),
            decode_tokens: 128,
            concurrency: vec![1, 2, 4, 8, 16],
            requests: 8,
            num_predict: 64,
        }
    }

    /// A few seconds' check that everything runs (tests, smoke runs): numbers are rougher, and
    /// the prefill prompt is ~128 tokens.
    pub fn quick(model: &str) -> Plan {
        Plan {
            runs: 1,
            prefill_prompt: prefill_prompt(16),
            decode_tokens: 32,
            concurrency: vec![1, 2],
            requests: 2,
            num_predict: 16,
            ..Plan::full(model)
        }
    }

    pub fn requests_at(&self, concurrency: u32) -> u32 {
        self.requests.max(concurrency)
    }

    /// Every timed request of the run (for a progress bar).
    pub fn total_requests(&self) -> u64 {
        2 * u64::from(self.runs) + self.concurrency.iter().map(|&c| u64::from(self.requests_at(c))).sum::<u64>()
    }

    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Plan(m.to_string()));
        if self.model.trim().is_empty() {
            return bad("no model");
        }
        if self.runs == 0 || self.decode_tokens < 2 || self.num_predict == 0 || self.requests == 0 {
            return bad("runs, requests and num_predict must be at least 1, decode tokens at least 2");
        }
        if self.concurrency.is_empty() || self.concurrency.iter().any(|&c| !(1..=256).contains(&c)) {
            return bad("concurrency levels must be between 1 and 256");
        }
        Ok(())
    }

    /// The highest concurrency level (what an in-process run sizes its slots for).
    pub fn max_concurrency(&self) -> u32 {
        self.concurrency.iter().copied().max().unwrap_or(1)
    }
}

/// Where a run reports its progress; every method has a no-op default.
pub trait Progress: Sync {
    /// A phase begins ("loading", "prefill", "decode", "concurrency 4").
    fn phase(&self, _name: &str) {}
    /// One timed request finished (of `Plan::total_requests`).
    fn request_done(&self) {}
}

/// Runs the plan against the target: load and warm up, then the three phases.
pub async fn run(target: &Target, plan: &Plan, progress: &dyn Progress) -> Result<Report, BenchError> {
    plan.check()?;
    let started = Instant::now();
    progress.phase("loading");
    let load = client::load(target, &plan.model).await?;
    // One short generation first, so the first timed request pays no first-use costs.
    client::generate(target, &plan.model, "Hello", 4).await?;

    progress.phase("prefill");
    let mut prefill = Vec::new();
    for r in 0..plan.runs {
        let prompt = format!("Run {r}. {}", plan.prefill_prompt);
        prefill.push(client::generate(target, &plan.model, &prompt, 1).await?);
        progress.request_done();
    }
    let prefill = prefill_result(&prefill)?;

    progress.phase("decode");
    let mut decode = Vec::new();
    for r in 0..plan.runs {
        let prompt = if r == 0 { plan.decode_prompt.clone() } else { format!("{r}. {}", plan.decode_prompt) };
        decode.push(client::generate(target, &plan.model, &prompt, plan.decode_tokens).await?);
        progress.request_done();
    }
    let decode = decode_result(&decode)?;

    let mut levels = Vec::new();
    for &c in &plan.concurrency {
        progress.phase(&format!("concurrency {c}"));
        levels.push(level(target, plan, c, progress).await);
    }

    let (target_name, api) = target.describe();
    let (settings, peak_rss_bytes) = match target {
        Target::Local { service, .. } => (Some(Settings::from(service.manager.defaults())), peak_rss(None)),
        Target::Http { .. } => (None, None),
    };
    Ok(Report {
        model: plan.model.clone(),
        target: target_name,
        api,
        version: crate::VERSION,
        settings,
        plan: plan.clone(),
        load_seconds: load.map(|d| d.as_secs_f64()),
        wall_seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes,
        prefill,
        decode,
        concurrency: levels,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn prefill_result(samples: &[Sample]) -> Result<PrefillResult, BenchError> {
    let rates: Vec<f64> = samples.iter().filter_map(Sample::prefill_rate).collect();
    let ttft: Vec<f64> = samples.iter().filter_map(Sample::ttft).map(ms).collect();
    let tokens: Vec<f64> = samples.iter().filter_map(|s| s.prompt_tokens).map(f64::from).collect();
    Ok(PrefillResult {
        runs: samples.len(),
        prompt_tokens: median(&tokens).map_or(0, |t| t.round() as u32),
        tokens_per_second: median(&rates).ok_or(BenchError::NoTokens { phase: "prefill" })?,
        ttft_ms: Summary::of(&ttft),
    })
}

fn decode_result(samples: &[Sample]) -> Result<DecodeResult, BenchError> {
    let rates: Vec<f64> = samples.iter().filter_map(Sample::decode_rate).collect();
    let ttft: Vec<f64> = samples.iter().filter_map(Sample::ttft).map(ms).collect();
    let itl: Vec<f64> = samples.iter().flat_map(Sample::itl_ms).collect();
    let tokens: Vec<f64> = samples.iter().map(|s| f64::from(s.generated())).collect();
    Ok(DecodeResult {
        runs: samples.len(),
        generated_tokens: median(&tokens).map_or(0, |t| t.round() as u32),
        tokens_per_second: median(&rates).ok_or(BenchError::NoTokens { phase: "decode" })?,
        ttft_ms: Summary::of(&ttft),
        itl_ms: Summary::of(&itl),
    })
}

/// One sweep level: `c` clients share the level's requests. A failed request is counted and
/// the level goes on (an overloaded server answering 503 is a result, not a crash).
async fn level(target: &Target, plan: &Plan, c: u32, progress: &dyn Progress) -> LevelResult {
    let total = plan.requests_at(c);
    let next = AtomicU32::new(0);
    let started = Instant::now();
    // The clients are futures on this task rather than spawned tasks: each mostly waits on
    // its stream, and sharing the task lets them borrow the target and the progress.
    let clients = (0..c).map(|_| async {
        let mut results = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break results;
            }
            let prompt = format!("Story {c}-{i}. {}, in a small village by the sea,", plan.decode_prompt);
            results.push(client::generate(target, &plan.model, &prompt, plan.num_predict).await);
            progress.request_done();
        }
    });
    let results: Vec<Result<Sample, BenchError>> = futures::future::join_all(clients).await.into_iter().flatten().collect();
    let wall = started.elapsed();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let samples: Vec<Sample> = ok.into_iter().filter_map(Result::ok).collect();
    let first_error = failed.into_iter().find_map(Result::err).map(|e| e.to_string());
    let generated: u64 = samples.iter().map(|s| u64::from(s.generated())).sum();
    let secs = wall.as_secs_f64();
    let per_second = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    LevelResult {
        concurrency: c,
        requests: total,
        errors: total as usize - samples.len(),
        first_error,
        generated_tokens: generated,
        wall_seconds: secs,
        tokens_per_second: per_second(generated as f64),
        requests_per_second: per_second(samples.len() as f64),
        e2e_ms: Summary::of(&samples.iter().map(|s| ms(s.e2e)).collect::<Vec<_>>()),
        ttft_ms: Summary::of(&samples.iter().filter_map(Sample::ttft).map(ms).collect::<Vec<_>>()),
        itl_ms: Summary::of(&samples.iter().flat_map(Sample::itl_ms).collect::<Vec<_>>()),
    }
}

/// Peak resident memory (`VmHWM`) of a process, this one for `None`; `None` where /proc has
/// no answer (another OS, a process that is gone or not ours to read).
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    vm_hwm(&status)
}

fn vm_hwm(status: &str) -> Option<u64> {
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_check_their_numbers() {
        assert!(Plan::full("m").check().is_ok());
        assert!(Plan::quick("m").check().is_ok());
        assert!(Plan { concurrency: vec![], ..Plan::quick("m") }.check().is_err());
        assert!(Plan { concurrency: vec![0, 2], ..Plan::quick("m") }.check().is_err());
        assert!(Plan { runs: 0, ..Plan::quick("m") }.check().is_err());
        assert!(Plan::quick(" ").check().is_err());
    }

    #[test]
    fn every_level_runs_at_least_one_request_per_client() {
        let p = Plan::full("m");
        assert_eq!(p.requests_at(1), 8);
        assert_eq!(p.requests_at(16), 16);
        // 3 prefill + 3 decode + 8 + 8 + 8 + 8 + 16
        assert_eq!(p.total_requests(), 54);
        assert_eq!(p.max_concurrency(), 16);
    }

    #[test]
    fn peak_rss_reads_vm_hwm() {
        let status = "Name:\thearth\nVmPeak:\t  900 kB\nVmHWM:\t  1234 kB\nVmRSS:\t  1000 kB\n";
        assert_eq!(vm_hwm(status), Some(1234 * 1024));
        assert_eq!(vm_hwm("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss(None).is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn phase_results_take_medians() {
        let sample = |prompt_ms: u64, eval_ms: u64| Sample {
            e2e: Duration::from_millis(1000),
            pieces: vec![Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40)],
            prompt_tokens: Some(100),
            generated_tokens: Some(11),
            prompt_eval: Some(Duration::from_millis(prompt_ms)),
            eval: Some(Duration::from_millis(eval_ms)),
            load: None,
        };
        let samples = [sample(100, 100), sample(200, 1000), sample(50, 500)];
        let p = prefill_result(&samples).expect("prefill");
        assert_eq!((p.runs, p.prompt_tokens), (3, 100));
        assert!((p.tokens_per_second - 1000.0).abs() < 1e-9);
        let d = decode_result(&samples).expect("decode");
        assert!((d.tokens_per_second - 20.0).abs() < 1e-9);
        assert_eq!(d.itl_ms.expect("itl").count, 6);
        let silent = Sample { prompt_tokens: Some(5), generated_tokens: Some(1), pieces: vec![Duration::from_millis(5)], ..Sample::default() };
        assert!(matches!(decode_result(&[silent]), Err(BenchError::NoTokens { .. })));
    }
}
