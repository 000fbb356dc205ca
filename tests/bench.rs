//! `hearth bench`: the quick plan in-process and against a running server over both APIs.
//! Timings on a shared machine are noise: these check the report's shape and that every
//! phase measured something, never how fast.

use std::process::Command;

use serde_json::Value;

use crate::support::{hearth, Server, SMOL};

fn bench(args: &[&str]) -> Value {
    let out = hearth().arg("bench").args(args).output().expect("run hearth bench");
    assert!(out.status.success(), "hearth bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"))
}

fn positive(v: &Value, path: &str) -> f64 {
    let x = path.split('.').fold(v, |v, k| &v[k]).as_f64().unwrap_or(f64::NAN);
    assert!(x > 0.0, "{path} should be a positive number in {v}");
    x
}

/// Every phase measured something, and the sweep ran the levels asked for without errors.
fn check_report(r: &Value, levels: &[u64]) {
    assert_eq!(r["model"], SMOL);
    assert!(positive(r, "prefill.prompt_tokens") > 100.0, "the quick prefill prompt is ~128 tokens: {r}");
    positive(r, "prefill.tokens_per_second");
    positive(r, "prefill.ttft_ms.p50");
    assert!(positive(r, "decode.generated_tokens") >= 2.0);
    positive(r, "decode.tokens_per_second");
    positive(r, "decode.itl_ms.p50");
    positive(r, "decode.ttft_ms.p50");
    let sweep = r["concurrency"].as_array().expect("concurrency levels");
    let got: Vec<u64> = sweep.iter().filter_map(|l| l["concurrency"].as_u64()).collect();
    assert_eq!(got, levels);
    for l in sweep {
        assert_eq!(l["errors"], 0, "{l}");
        positive(l, "tokens_per_second");
        positive(l, "requests_per_second");
        let e2e = &l["e2e_ms"];
        assert!(positive(e2e, "p50") <= positive(e2e, "p95") && positive(e2e, "p95") <= positive(e2e, "p99"), "{e2e}");
        assert!(positive(l, "ttft_ms.p50") <= positive(e2e, "max"), "{l}");
    }
}

fn python() -> String {
    std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[test]
fn bench_quick_in_process_reports_every_phase_and_a_chart() {
    let dir = std::env::temp_dir().join(format!("hearth-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let svg = dir.join("bench.svg");
    let r = bench(&[SMOL, "--quick", "--json", "--svg", svg.to_str().expect("utf8 path")]);
    check_report(&r, &[1, 2]);
    assert_eq!(r["target"], "in-process");
    positive(&r, "peak_rss_bytes");
    positive(&r, "load_seconds");
    assert_eq!(r["settings"]["parallel"], 2, "slots default to the highest level: {r}");

    // A browser's XML parser must accept the chart, and it holds all four series.
    let check = "import sys, xml.etree.ElementTree as E\n\
                 root = E.parse(sys.argv[1]).getroot()\n\
                 assert root.tag.endswith('svg'), root.tag\n\
                 series = {g.get('data-series') for g in root.iter() if g.get('data-series')}\n\
                 assert series == {'throughput', 'p50', 'p95', 'p99'}, series\n\
                 print('all ok')";
    let out = Command::new(python()).args(["-c", check]).arg(&svg).output().expect("run python");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all ok"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_drives_a_running_server_over_both_apis() {
    let s = Server::start();
    let url = format!("http://{}", s.addr);
    let r = bench(&[SMOL, "--url", &url, "--quick", "--json"]);
    check_report(&r, &[1, 2]);
    assert_eq!((r["target"].as_str(), r["api"].as_str()), (Some(url.as_str()), Some("ollama")));
    assert!(r["peak_rss_bytes"].is_null() && r["settings"].is_null(), "no --pid, no numbers about the server: {r}");

    let r = bench(&[SMOL, "--url", &url, "--api", "openai", "--quick", "--json", "--concurrency", "1,3"]);
    check_report(&r, &[1, 3]);
    assert_eq!(r["api"], "openai");
    assert!(s.alive());
}

#[test]
fn bench_refuses_bad_input_with_an_exit_code() {
    let out = hearth().args(["bench", "no-such-model", "--quick"]).output().expect("bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hearth().args(["bench", SMOL, "--api", "openai"]).output().expect("bench");
    assert!(!out.status.success(), "--api needs --url");
    let out = hearth().args(["bench", SMOL, "--concurrency", "0"]).output().expect("bench");
    assert!(!out.status.success());
}

#[test]
fn decode_score_times_a_short_generation_by_name_only() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = hearth::store::ModelStore::new(crate::support::models_dir());
        let manager = hearth::commands::manager(store, &hearth::cli::EngineArgs::default()).expect("manager");
        let service = hearth::service::Service::local(manager);
        let score = service.decode_score(SMOL, 16).await.expect("score");
        assert!(score.tokens_per_second.is_some_and(|r| r > 0.0), "{score:?}");
        assert!((2..=16).contains(&score.generated_tokens), "{score:?}");
        assert!(score.prompt_tokens > 0 && score.ttft.is_some_and(|t| !t.is_zero()), "{score:?}");
        // The route that calls this serves the network: a file path is not a model name there.
        let path = crate::support::model_path(SMOL);
        let by_path = service.decode_score(path.to_str().expect("utf8 path"), 4).await;
        assert!(by_path.is_err(), "a .gguf path must not resolve for a network caller");
    });
}
