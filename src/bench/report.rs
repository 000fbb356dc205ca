//! A benchmark's results: the serialized report (field names are the JSON contract documented
//! in `bench`) and its text table. Formatting only: nothing here measures or prints.

use std::fmt::Write;

use serde::Serialize;

use super::stats::Summary;
use super::Plan;
use crate::engine::LoadSettings;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub target: String,
    pub api: &'static str,
    pub version: &'static str,
    pub settings: Option<Settings>,
    pub plan: Plan,
    pub load_seconds: Option<f64>,
    pub wall_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    pub prefill: PrefillResult,
    pub decode: DecodeResult,
    pub concurrency: Vec<LevelResult>,
}

/// How an in-process model was loaded.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub threads: i32,
    pub parallel: u32,
    pub context_length: u32,
    pub batch_size: u32,
    /// `--convert-weights`: none or q8_0.
    pub convert_weights: &'static str,
    /// `--speculative`: lookup or off.
    pub speculative: &'static str,
}

impl From<&LoadSettings> for Settings {
    fn from(s: &LoadSettings) -> Settings {
        Settings {
            threads: s.threads,
            parallel: s.parallel,
            context_length: s.num_ctx,
            batch_size: s.batch_size,
            convert_weights: s.weights.as_str(),
            speculative: if s.speculative { "lookup" } else { "off" },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillResult {
    pub runs: usize,
    pub prompt_tokens: u32,
    pub tokens_per_second: f64,
    pub ttft_ms: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub runs: usize,
    pub generated_tokens: u32,
    pub tokens_per_second: f64,
    pub ttft_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
}

/// One concurrency level of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub concurrency: u32,
    pub requests: u32,
    pub errors: usize,
    pub first_error: Option<String>,
    pub generated_tokens: u64,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub requests_per_second: f64,
    pub e2e_ms: Option<Summary>,
    pub ttft_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
}

/// `p50/p95/p99` of a summary, or a dash.
fn triple(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.0}/{:.0}/{:.0}", s.p50, s.p95, s.p99),
        None => "-".to_string(),
    }
}

fn triple_fine(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1}/{:.1}/{:.1}", s.p50, s.p95, s.p99),
        None => "-".to_string(),
    }
}

fn p50(s: Option<Summary>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{:.0} ms", s.p50))
}

impl Report {
    /// The report as a terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "hearth bench {} ({}, {} API, hearth {})", self.model, self.target, self.api, self.version)?;
        if let Some(s) = &self.settings {
            writeln!(
                out,
                "threads {}, parallel {}, context {}, batch {}, convert weights {}",
                s.threads, s.parallel, s.context_length, s.batch_size, s.convert_weights
            )?;
        }
        let load = self.load_seconds.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"));
        let rss = self.peak_rss_bytes.map_or_else(|| "-".to_string(), |b| format!("{} MiB", b >> 20));
        writeln!(out, "load {load}, peak RSS {rss}, wall {:.1} s; rates are medians of {} run(s)", self.wall_seconds, self.prefill.runs)?;
        writeln!(out)?;
        writeln!(out, "{:<10} {:>8} {:>10} {:>10} {:>22}", "phase", "tokens", "tok/s", "TTFT p50", "ITL p50/p95/p99 ms")?;
        writeln!(
            out,
            "{:<10} {:>8} {:>10.1} {:>10} {:>22}",
            "prefill",
            self.prefill.prompt_tokens,
            self.prefill.tokens_per_second,
            p50(self.prefill.ttft_ms),
            "-"
        )?;
        writeln!(
            out,
            "{:<10} {:>8} {:>10.1} {:>10} {:>22}",
            "decode",
            self.decode.generated_tokens,
            self.decode.tokens_per_second,
            p50(self.decode.ttft_ms),
            triple_fine(self.decode.itl_ms)
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:>4} {:>5} {:>6} {:>8} {:>7} {:>18} {:>18} {:>18}",
            "conc", "reqs", "errors", "tok/s", "req/s", "e2e p50/p95/p99 ms", "TTFT p50/p95/p99", "ITL p50/p95/p99"
        )?;
        for l in &self.concurrency {
            writeln!(
                out,
                "{:>4} {:>5} {:>6} {:>8.1} {:>7.2} {:>18} {:>18} {:>18}",
                l.concurrency,
                l.requests,
                l.errors,
                l.tokens_per_second,
                l.requests_per_second,
                triple(l.e2e_ms),
                triple(l.ttft_ms),
                triple_fine(l.itl_ms)
            )?;
        }
        if let Some(e) = self.concurrency.iter().find_map(|l| l.first_error.as_deref()) {
            writeln!(out, "first error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn example() -> Report {
        let s = |base: f64| Summary::of(&[base, base * 1.5, base * 2.0]);
        let level = |c: u32, tps: f64| LevelResult {
            concurrency: c,
            requests: 8.max(c),
            errors: 0,
            first_error: None,
            generated_tokens: 512,
            wall_seconds: 512.0 / tps,
            tokens_per_second: tps,
            requests_per_second: 1.0,
            e2e_ms: s(400.0 * f64::from(c)),
            ttft_ms: s(20.0),
            itl_ms: s(8.0),
        };
        Report {
            model: "smollm2:135m".into(),
            target: "in-process".into(),
            api: "service",
            version: crate::VERSION,
            settings: Some(Settings { threads: 2, parallel: 16, context_length: 2048, batch_size: 512, convert_weights: "none", speculative: "lookup" }),
            plan: Plan::full("smollm2:135m"),
            load_seconds: Some(0.4),
            wall_seconds: 60.0,
            peak_rss_bytes: Some(300 << 20),
            prefill: PrefillResult { runs: 3, prompt_tokens: 520, tokens_per_second: 1500.0, ttft_ms: s(350.0) },
            decode: DecodeResult { runs: 3, generated_tokens: 128, tokens_per_second: 110.0, ttft_ms: s(15.0), itl_ms: s(9.0) },
            concurrency: vec![level(1, 100.0), level(2, 160.0), level(4, 220.0), level(8, 260.0), level(16, 280.0)],
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(example()).expect("serialize");
        for k in ["model", "target", "api", "version", "settings", "plan", "load_seconds", "wall_seconds", "peak_rss_bytes", "prefill", "decode", "concurrency"] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["plan"]["concurrency"], serde_json::json!([1, 2, 4, 8, 16]));
        assert!(v["plan"].get("prefill_prompt").is_none(), "prompts stay out of the report");
        assert!(v["prefill"]["tokens_per_second"].as_f64().is_some_and(|x| x > 0.0));
        assert!(v["decode"]["itl_ms"]["p99"].as_f64().is_some());
        let level = &v["concurrency"][4];
        for k in ["concurrency", "requests", "errors", "first_error", "generated_tokens", "wall_seconds", "tokens_per_second", "requests_per_second", "e2e_ms", "ttft_ms", "itl_ms"] {
            assert!(level.get(k).is_some(), "missing {k} in {level}");
        }
        for k in ["count", "mean", "min", "p50", "p95", "p99", "max"] {
            assert!(level["e2e_ms"].get(k).is_some(), "missing {k}");
        }
        assert_eq!(level["concurrency"], 16);
    }

    #[test]
    fn table_lists_every_phase_and_level() {
        let t = example().table();
        assert!(t.contains("prefill") && t.contains("1500.0"), "{t}");
        assert!(t.contains("decode") && t.contains("110.0"), "{t}");
        for tps in ["100.0", "160.0", "220.0", "260.0", "280.0"] {
            assert!(t.contains(tps), "missing level {tps}: {t}");
        }
        assert!(t.contains("300 MiB"), "{t}");
        assert!(!t.contains("first error"));
    }
}
