use super::*;

/// The value of the first sample of `name` whose labels include every `k="v"` in `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

fn snapshot(loaded: &[(&str, u64, usize)]) -> Snapshot {
    Snapshot {
        loaded: loaded.iter().map(|(m, b, q)| (m.to_string(), *b, *q)).collect(),
        ram_budget: 8 << 30,
        ram_used: 3 << 30,
        cache_entries: Some(12),
        cache_bytes: Some(3400),
    }
}

#[test]
fn counters_move_after_record_calls() {
    let metrics = Metrics::new(Pricing::default());
    let before = metrics.render_prometheus(&Snapshot::default());
    assert_eq!(sample(&before, "hearth_requests_total", &[("route", "/api/chat")]), None);

    metrics.record_request("/api/chat", "qwen:0.5b", 200, Duration::from_millis(30));
    metrics.record_request("/api/chat", "qwen:0.5b", 200, Duration::from_millis(50));
    metrics.record_request("/api/tags", "", 200, Duration::from_micros(300));
    metrics.record_generation("qwen:0.5b", 12, 30, Some(Duration::from_millis(20)), Duration::from_secs(1));
    metrics.record_drafts("qwen:0.5b", 10, 7);
    metrics.record_drafts("qwen:0.5b", 0, 0);
    metrics.record_cache("hit");
    metrics.record_cache("miss");
    metrics.record_cache("miss");
    metrics.record_error("busy");

    let text = metrics.render_prometheus(&Snapshot::default());
    let chat = [("route", "/api/chat"), ("model", "qwen:0.5b"), ("status", "200")];
    assert_eq!(sample(&text, "hearth_requests_total", &chat), Some(2.0));
    assert_eq!(sample(&text, "hearth_requests_total", &[("route", "/api/tags"), ("model", "none")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_request_duration_seconds_count", &[("route", "/api/chat")]), Some(2.0));
    assert_eq!(sample(&text, "hearth_request_duration_seconds_bucket", &[("route", "/api/chat"), ("le", "0.025")]), Some(0.0));
    assert_eq!(sample(&text, "hearth_request_duration_seconds_bucket", &[("route", "/api/chat"), ("le", "0.05")]), Some(2.0));
    assert_eq!(sample(&text, "hearth_prompt_tokens_total", &[("model", "qwen:0.5b")]), Some(12.0));
    assert_eq!(sample(&text, "hearth_generated_tokens_total", &[("model", "qwen:0.5b")]), Some(30.0));
    assert_eq!(sample(&text, "hearth_time_to_first_token_seconds_count", &[("model", "qwen:0.5b")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_generation_duration_seconds_sum", &[("model", "qwen:0.5b")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_draft_tokens_total", &[("model", "qwen:0.5b"), ("result", "accepted")]), Some(7.0));
    assert_eq!(sample(&text, "hearth_draft_tokens_total", &[("model", "qwen:0.5b"), ("result", "rejected")]), Some(3.0));
    assert_eq!(sample(&text, "hearth_cache_requests_total", &[("result", "miss")]), Some(2.0));
    assert_eq!(sample(&text, "hearth_cache_requests_total", &[("result", "hit")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_errors_total", &[("kind", "busy")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_build_info", &[("version", crate::VERSION)]), Some(1.0));
    assert!(sample(&text, "hearth_uptime_seconds", &[]).is_some());
}

#[test]
fn a_generation_without_ttft_records_no_ttft_sample() {
    let metrics = Metrics::new(Pricing::default());
    metrics.record_generation("m", 1, 0, None, Duration::from_millis(5));
    let text = metrics.render_prometheus(&Snapshot::default());
    assert_eq!(sample(&text, "hearth_generation_duration_seconds_count", &[("model", "m")]), Some(1.0));
    assert_eq!(sample(&text, "hearth_time_to_first_token_seconds_count", &[("model", "m")]), None);
}

#[test]
fn gauges_of_unloaded_models_disappear() {
    let metrics = Metrics::new(Pricing::default());
    let first = metrics.render_prometheus(&snapshot(&[("a", 100, 2), ("b", 200, 0)]));
    assert_eq!(sample(&first, "hearth_model_bytes", &[("model", "a")]), Some(100.0));
    assert_eq!(sample(&first, "hearth_queue_depth", &[("model", "a")]), Some(2.0));
    assert_eq!(sample(&first, "hearth_model_bytes", &[("model", "b")]), Some(200.0));
    assert_eq!(sample(&first, "hearth_loaded_models", &[]), Some(2.0));
    assert_eq!(sample(&first, "hearth_ram_budget_bytes", &[]), Some((8u64 << 30) as f64));
    assert_eq!(sample(&first, "hearth_ram_used_bytes", &[]), Some((3u64 << 30) as f64));
    assert_eq!(sample(&first, "hearth_cache_entries", &[]), Some(12.0));
    assert_eq!(sample(&first, "hearth_cache_bytes", &[]), Some(3400.0));

    let second = metrics.render_prometheus(&Snapshot {
        cache_entries: None,
        cache_bytes: None,
        ..snapshot(&[("b", 250, 1)])
    });
    assert_eq!(sample(&second, "hearth_model_bytes", &[("model", "a")]), None);
    assert_eq!(sample(&second, "hearth_queue_depth", &[("model", "a")]), None);
    assert_eq!(sample(&second, "hearth_model_bytes", &[("model", "b")]), Some(250.0));
    assert_eq!(sample(&second, "hearth_queue_depth", &[("model", "b")]), Some(1.0));
    assert_eq!(sample(&second, "hearth_loaded_models", &[]), Some(1.0));
    assert_eq!(sample(&second, "hearth_cache_entries", &[]), None, "no cache: absent, not zero");
    assert_eq!(sample(&second, "hearth_cache_bytes", &[]), None);

    let json = metrics.render_json(&snapshot(&[("b", 250, 1)]));
    assert_eq!(json["models"], json!([{ "name": "b", "bytes": 250, "queue_depth": 1 }]));
    assert_eq!(json["loaded_models"], json!(1));
}

#[test]
fn cost_is_tokens_per_thousand_times_the_model_price() {
    let pricing = Pricing {
        default_per_1k_tokens: 0.5,
        per_model: HashMap::from([("big".to_owned(), 2.0), ("broken".to_owned(), -1.0)]),
    };
    assert_eq!(pricing.cost("big", 1500), 3.0);
    assert_eq!(pricing.cost("other", 1000), 0.5);
    assert_eq!(pricing.cost("broken", 1000), 0.0);
    assert_eq!(Pricing::default().cost("big", 1000), 0.0);

    let metrics = Metrics::new(pricing);
    metrics.record_generation("big", 1000, 500, None, Duration::from_secs(1));
    metrics.record_generation("big", 250, 250, None, Duration::from_secs(1));
    metrics.set_pricing(Pricing {
        default_per_1k_tokens: 0.0,
        per_model: HashMap::from([("big".to_owned(), 10.0)]),
    });
    metrics.record_generation("big", 100, 0, None, Duration::from_secs(1));
    let text = metrics.render_prometheus(&Snapshot::default());
    // 1.5k tokens at 2.0 + 0.5k at 2.0 + 0.1k at 10.0 (after the reload).
    assert_eq!(sample(&text, "hearth_estimated_cost_total", &[("model", "big")]), Some(5.0));
    let json = metrics.render_json(&Snapshot::default());
    assert_eq!(json["generation"]["big"]["estimated_cost"], json!(5.0));
}

#[test]
fn json_carries_the_same_numbers() {
    let metrics = Metrics::new(Pricing::default());
    for ms in [1, 2, 3, 4, 40] {
        metrics.record_request("/api/generate", "m", 200, Duration::from_millis(ms));
    }
    metrics.record_request("/api/generate", "m", 503, Duration::from_millis(1));
    metrics.record_generation("m", 10, 20, Some(Duration::from_millis(3)), Duration::from_millis(700));
    metrics.record_cache("hit");
    metrics.record_error("bad_request");
    let json = metrics.render_json(&snapshot(&[]));

    let requests = json["requests"].as_array().expect("requests is a list");
    assert!(requests.contains(&json!({ "route": "/api/generate", "model": "m", "status": 200, "count": 5 })));
    assert!(requests.contains(&json!({ "route": "/api/generate", "model": "m", "status": 503, "count": 1 })));
    let latency = &json["latency"]["/api/generate"];
    assert_eq!(latency["count"], json!(6));
    let p50 = latency["p50"].as_f64().expect("p50 is a number");
    assert!((0.001..=0.005).contains(&p50), "p50 {p50}");
    let p99 = latency["p99"].as_f64().expect("p99 is a number");
    assert!((0.025..=0.05).contains(&p99), "p99 {p99}");

    let generation = &json["generation"]["m"];
    assert_eq!(generation["count"], json!(1));
    assert_eq!(generation["prompt_tokens"], json!(10));
    assert_eq!(generation["generated_tokens"], json!(20));
    assert_eq!(generation["ttft"]["count"], json!(1));
    assert_eq!(generation["duration"]["count"], json!(1));
    assert_eq!(json["cache"], json!({ "hit": 1, "miss": 0, "unavailable": 0, "entries": 12, "bytes": 3400 }));
    assert_eq!(json["errors"], json!({ "bad_request": 1 }));
    assert_eq!(json["ram"], json!({ "budget": 8u64 << 30, "used": 3u64 << 30 }));
}

#[test]
fn quantile_of_no_observations_is_none() {
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[(0.1, 0), (1.0, 0), (f64::INFINITY, 0)], 0.5), None);
}

#[test]
fn quantile_rejects_out_of_range_q() {
    let buckets = [(1.0, 4), (f64::INFINITY, 4)];
    assert_eq!(quantile(&buckets, -0.1), None);
    assert_eq!(quantile(&buckets, 1.5), None);
    assert_eq!(quantile(&buckets, f64::NAN), None);
}

#[test]
fn quantile_in_a_single_bucket_interpolates_from_zero() {
    assert_eq!(quantile(&[(1.0, 4)], 0.5), Some(0.5));
    assert_eq!(quantile(&[(1.0, 4)], 1.0), Some(1.0));
    assert_eq!(quantile(&[(2.0, 4)], 0.25), Some(0.5));
}

#[test]
fn quantile_interpolates_inside_the_bucket_holding_the_rank() {
    let buckets = [(0.1, 10), (0.2, 30), (0.4, 30), (f64::INFINITY, 30)];
    // Rank 15 is the 5th of the 20 observations in (0.1, 0.2].
    let p50 = quantile(&buckets, 0.5).expect("observations exist");
    assert!((p50 - 0.125).abs() < 1e-12, "p50 {p50}");
    assert_eq!(quantile(&buckets, 0.0), Some(0.0));
    // q=1 is the bound of the last non-empty bucket, not a later empty one nor +Inf.
    assert_eq!(quantile(&buckets, 1.0), Some(0.2));
}

#[test]
fn quantile_skips_leading_empty_buckets() {
    let buckets = [(0.1, 0), (0.2, 0), (0.4, 8), (f64::INFINITY, 8)];
    assert_eq!(quantile(&buckets, 0.0), Some(0.2));
    let p50 = quantile(&buckets, 0.5).expect("observations exist");
    assert!((p50 - 0.3).abs() < 1e-12, "p50 {p50}");
}

#[test]
fn quantile_in_the_inf_bucket_answers_the_largest_finite_bound() {
    assert_eq!(quantile(&[(1.0, 1), (f64::INFINITY, 10)], 0.9), Some(1.0));
    assert_eq!(quantile(&[(f64::INFINITY, 5)], 0.5), None);
}
