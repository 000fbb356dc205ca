//! `--convert-weights q8_0` on the real models: the conversion happens, the RAM estimate counts
//! the larger weights (and covers what the process really takes), and the greedy answer is the
//! file's, except where the file's two best tokens are close (Q8_0 rounds the 4-bit weights'
//! values differently; measured mean KL divergence 0.006 between the two on SmolLM2).

use serde_json::{json, Value};

use crate::prefix::{assert_greedy_close, chat, opening};
use crate::support::{hearth, temp_dir, Server, GEMMA, SMOL};

/// Nats between the file's two best tokens below which the converted model may pick either.
const NEAR_TIE: f64 = 1.0;

fn estimate(s: &Server, model: &str) -> Value {
    let r = s.post("/api/show", &json!({"model": model}));
    assert_eq!(r.status(), 200);
    r.json::<Value>().expect("json")["ram_estimate"].clone()
}

fn converted_model_answers_like_the_file(model: &str) {
    let plain = Server::start_with(&["--parallel", "1"]);
    let converted = Server::start_with(&["--parallel", "1", "--convert-weights", "q8_0"]);
    let (a, b) = (estimate(&plain, model), estimate(&converted, model));
    assert_eq!((a["convert_weights"].as_str(), b["convert_weights"].as_str()), (Some("none"), Some("q8_0")));
    let weights = |e: &Value| e["weights"].as_u64().expect("weights");
    let growth = weights(&b) as f64 / weights(&a) as f64;
    assert!(growth > 1.05 && growth < 2.0, "{model}: converted weights {} vs {} bytes", weights(&b), weights(&a));

    let messages = opening();
    let fresh = chat(&plain, model, &messages);
    let answer = chat(&converted, model, &messages);
    assert_eq!(converted.log_count("converted the weights"), 1, "{model}: the conversion ran once");
    assert_eq!(plain.log_count("converted the weights"), 0);
    assert_greedy_close(model, &answer, &fresh, NEAR_TIE);

    // What the conversion costs in memory is what the estimate says it costs, or less.
    let extra_rss = converted.rss().saturating_sub(plain.rss());
    let extra_estimate = b["total"].as_u64().expect("total") - a["total"].as_u64().expect("total");
    assert!(
        extra_rss <= extra_estimate + (24 << 20),
        "{model}: the converted server takes {} MiB more than the plain one, the estimate says {} MiB",
        extra_rss >> 20,
        extra_estimate >> 20
    );
}

#[test]
fn converted_smollm2_answers_like_the_file() {
    converted_model_answers_like_the_file(SMOL);
}

#[test]
fn converted_gemma3_answers_like_the_file() {
    converted_model_answers_like_the_file(GEMMA);
}

#[test]
fn a_bad_conversion_is_refused_by_flag_and_by_file() {
    let out = hearth().args(["serve", "--port", "0", "--convert-weights", "q4_0"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none or q8_0"), "{err}");

    let config = temp_dir("convert").join("hearth.yaml");
    std::fs::write(&config, "engine:\n  parallel: 2\n  convert_weights: q9\n").expect("write");
    let out = hearth().args(["config", "check", config.to_str().expect("path")]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("convert_weights") && err.contains(":3"), "{err}");
}
