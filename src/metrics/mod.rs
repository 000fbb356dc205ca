//! Prometheus metrics: one `Metrics` handle owning its own registry, the counters and histograms
//! the request path records into, and the two renderings a scrape asks for (Prometheus text and a
//! JSON summary with percentiles estimated from the histogram buckets).
//!
//! It owns no state of the server: gauges about loaded models, RAM and the cache are set from a
//! `Snapshot` the caller passes at scrape time, so a stale gauge cannot outlive its model. It must
//! not label anything with unbounded values (raw paths, prompts, client-chosen strings): models
//! come from the store, routes from the matched route pattern, kinds and results from literals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::Metric;
use prometheus::{CounterVec, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::{json, Map, Value};

/// Request latency to response headers: sub-millisecond answers (`/api/version`) up to a
/// cold model load behind a long prompt.
const REQUEST_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Generation timings: a cached one-token answer up to a long streamed completion.
const GENERATION_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The label for requests that carried no model (listing routes, errors before resolution).
const NO_MODEL: &str = "none";

/// Prices for the `hearth_estimated_cost_total` counter, per 1000 tokens (prompt + generated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    pub default_per_1k_tokens: f64,
    pub per_model: HashMap<String, f64>,
}

impl Pricing {
    /// Estimated cost of one generation. A negative or non-finite price counts as free: a counter
    /// can only grow, and a bad price must not poison the series.
    pub fn cost(&self, model: &str, tokens: u64) -> f64 {
        let price = self.per_model.get(model).copied().unwrap_or(self.default_per_1k_tokens);
        if !(price.is_finite() && price > 0.0) {
            return 0.0;
        }
        tokens as f64 / 1000.0 * price
    }
}

/// What the server holds at scrape time; the gauges are set from it and from nothing else.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (model name, bytes it holds, requests queued or running on it).
    pub loaded: Vec<(String, u64, usize)>,
    pub ram_budget: u64,
    pub ram_used: u64,
    /// `None` when no cache is configured: the cache gauges are then absent rather than zero.
    pub cache_entries: Option<u64>,
    pub cache_bytes: Option<u64>,
}

/// The metrics handle: cheap to clone, shared by the middleware, the handlers and the scrape route.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    started: Instant,
    pricing: RwLock<Pricing>,
    /// Two concurrent scrapes each reset and refill the snapshot gauges; serialising them keeps
    /// each rendering consistent with its own snapshot.
    scrape: Mutex<()>,
    /// The last ten minutes in buckets, for charts.
    recent: Mutex<recent::Recent>,

    requests: IntCounterVec,
    request_duration: HistogramVec,
    generation_duration: HistogramVec,
    ttft: HistogramVec,
    prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    draft_tokens: IntCounterVec,
    cache_requests: IntCounterVec,
    // Label-less vecs, so that "no cache" can be an absent series instead of a misleading 0.
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
    queue_depth: IntGaugeVec,
    loaded_models: IntGauge,
    model_bytes: IntGaugeVec,
    ram_budget: IntGauge,
    ram_used: IntGauge,
    errors: IntCounterVec,
    cost: CounterVec,
    uptime: Gauge,
    // Per API key; key names come from the config, so the label set is bounded.
    key_requests: IntCounterVec,
    key_tokens: IntCounterVec,
    key_cost: CounterVec,
    // Per route and target; both come from the config, so the label sets are bounded.
    route_requests: IntCounterVec,
    route_fallbacks: IntCounterVec,
    route_latency: HistogramVec,
    route_ttft: HistogramVec,
    route_tokens: IntCounterVec,
    route_cost: CounterVec,
}

impl Metrics {
    pub fn new(pricing: Pricing) -> Metrics {
        // Every name, label and bucket list below is a constant; registration can only fail if
        // this file is wrong, which the unit tests catch.
        let inner = Inner::build(pricing).expect("constant metric definitions register in a fresh registry");
        Metrics { inner: Arc::new(inner) }
    }

    /// Replaces the prices (config reload); costs already counted stay as they were.
    pub fn set_pricing(&self, pricing: Pricing) {
        *self.inner.pricing.write().unwrap_or_else(PoisonError::into_inner) = pricing;
    }

    /// One HTTP request, at the time its response headers were ready.
    pub fn record_request(&self, route: &str, model: &str, status: u16, latency: Duration) {
        let status = status.to_string();
        self.inner.requests.with_label_values(&[route, model_label(model), &status]).inc();
        self.inner.request_duration.with_label_values(&[route]).observe(latency.as_secs_f64());
        if model_label(model) != NO_MODEL {
            self.recent().request(self.inner.started.elapsed().as_secs());
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, recent::Recent> {
        self.inner.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One finished generation (streamed or not), with its token counts and timings.
    pub fn record_generation(&self, model: &str, prompt_tokens: u64, generated_tokens: u64, ttft: Option<Duration>, total: Duration) {
        let inner = &self.inner;
        let label = [model_label(model)];
        inner.prompt_tokens.with_label_values(&label).inc_by(prompt_tokens);
        inner.generated_tokens.with_label_values(&label).inc_by(generated_tokens);
        self.recent().tokens(inner.started.elapsed().as_secs(), generated_tokens);
        if let Some(ttft) = ttft {
            inner.ttft.with_label_values(&label).observe(ttft.as_secs_f64());
        }
        inner.generation_duration.with_label_values(&label).observe(total.as_secs_f64());
        let cost = inner.pricing.read().unwrap_or_else(PoisonError::into_inner).cost(model, prompt_tokens.saturating_add(generated_tokens));
        inner.cost.with_label_values(&label).inc_by(cost);
    }

    /// A generation's speculative guesses: `drafted` tokens, of which `accepted` were kept.
    pub fn record_drafts(&self, model: &str, drafted: u64, accepted: u64) {
        if drafted == 0 {
            return;
        }
        let model = model_label(model);
        self.inner.draft_tokens.with_label_values(&[model, "accepted"]).inc_by(accepted);
        self.inner.draft_tokens.with_label_values(&[model, "rejected"]).inc_by(drafted.saturating_sub(accepted));
    }

    /// One finished embedding request: its input tokens and their cost (no generation
    /// histograms: nothing was generated).
    pub fn record_embedding(&self, model: &str, prompt_tokens: u64) {
        let inner = &self.inner;
        let label = [model_label(model)];
        inner.prompt_tokens.with_label_values(&label).inc_by(prompt_tokens);
        let cost = inner.pricing.read().unwrap_or_else(PoisonError::into_inner).cost(model, prompt_tokens);
        inner.cost.with_label_values(&label).inc_by(cost);
    }

    /// A request with an API key was admitted or refused by the key's rate limits.
    pub fn record_key_request(&self, key: &str, result: &'static str) {
        self.inner.key_requests.with_label_values(&[key, result]).inc();
    }

    /// Tokens a key used on `model`; returns their estimated cost (for the key's own usage).
    pub fn record_key_usage(&self, key: &str, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let inner = &self.inner;
        inner.key_tokens.with_label_values(&[key, "prompt"]).inc_by(prompt_tokens);
        inner.key_tokens.with_label_values(&[key, "completion"]).inc_by(completion_tokens);
        let cost = inner.pricing.read().unwrap_or_else(PoisonError::into_inner).cost(model, prompt_tokens.saturating_add(completion_tokens));
        inner.key_cost.with_label_values(&[key]).inc_by(cost);
        cost
    }

    /// An attempt on a route's target that did not answer: `result` is "skipped" or the
    /// failure's kind.
    pub fn record_route(&self, route: &str, target: &str, result: &str) {
        self.inner.route_requests.with_label_values(&[route, target, result]).inc();
    }

    /// A route moved on from `target` to its next one.
    pub fn record_fallback(&self, route: &str, target: &str) {
        self.inner.route_fallbacks.with_label_values(&[route, target]).inc();
    }

    /// An answer a route's target finished.
    pub fn record_route_answer(&self, route: &str, target: &str, s: &crate::routing::stats::Served) {
        let inner = &self.inner;
        let labels = [route, target];
        inner.route_requests.with_label_values(&[route, target, "ok"]).inc();
        inner.route_latency.with_label_values(&labels).observe(s.latency.as_secs_f64());
        if let Some(t) = s.ttft {
            inner.route_ttft.with_label_values(&labels).observe(t.as_secs_f64());
        }
        inner.route_tokens.with_label_values(&[route, target, "input"]).inc_by(s.input_tokens);
        inner.route_tokens.with_label_values(&[route, target, "output"]).inc_by(s.output_tokens);
        if s.cost.is_finite() && s.cost > 0.0 {
            inner.route_cost.with_label_values(&labels).inc_by(s.cost);
        }
    }

    /// One cache lookup; `result` is "hit", "miss" or "unavailable".
    pub fn record_cache(&self, result: &str) {
        self.inner.cache_requests.with_label_values(&[result]).inc();
    }

    /// One failed request or operation; `kind` is a short snake_case literal.
    pub fn record_error(&self, kind: &str) {
        self.inner.errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition format (0.0.4), with the snapshot's gauges.
    pub fn render_prometheus(&self, snap: &Snapshot) -> String {
        let inner = &self.inner;
        let _scrape = inner.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        inner.set_snapshot_gauges(snap);
        let families = inner.registry.gather();
        let mut out = Vec::new();
        // Encoding only fails on malformed families, which a registry never gathers; a partial
        // page is still better than failing the scrape.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The same numbers as JSON, with p50/p90/p99 (seconds) estimated from the buckets.
    pub fn render_json(&self, snap: &Snapshot) -> Value {
        let inner = &self.inner;

        let requests: Vec<Value> = series(&inner.requests)
            .iter()
            .map(|m| {
                json!({
                    "route": label(m, "route"),
                    "model": label(m, "model"),
                    "status": label(m, "status").parse::<u16>().ok(),
                    "count": m.get_counter().get_value() as u64,
                })
            })
            .collect();

        let mut latency = Map::new();
        for m in &series(&inner.request_duration) {
            latency.insert(label(m, "route").to_owned(), percentiles(m));
        }

        let mut generation: Map<String, Value> = Map::new();
        let mut entry = |m: &Metric, key: &str, value: Value| {
            let model = label(m, "model").to_owned();
            if let Value::Object(fields) = generation.entry(model).or_insert_with(|| json!({})) {
                fields.insert(key.to_owned(), value);
            }
        };
        for m in &series(&inner.generation_duration) {
            entry(m, "count", json!(m.get_histogram().get_sample_count()));
            entry(m, "duration", percentiles(m));
        }
        for m in &series(&inner.ttft) {
            entry(m, "ttft", percentiles(m));
        }
        for m in &series(&inner.prompt_tokens) {
            entry(m, "prompt_tokens", json!(m.get_counter().get_value() as u64));
        }
        for m in &series(&inner.generated_tokens) {
            entry(m, "generated_tokens", json!(m.get_counter().get_value() as u64));
        }
        for m in &series(&inner.cost) {
            entry(m, "estimated_cost", json!(m.get_counter().get_value()));
        }

        let mut cache = Map::new();
        for result in ["hit", "miss", "unavailable"] {
            cache.insert(result.to_owned(), json!(0));
        }
        for m in &series(&inner.cache_requests) {
            cache.insert(label(m, "result").to_owned(), json!(m.get_counter().get_value() as u64));
        }
        cache.insert("entries".to_owned(), json!(snap.cache_entries));
        cache.insert("bytes".to_owned(), json!(snap.cache_bytes));

        let mut errors = Map::new();
        for m in &series(&inner.errors) {
            errors.insert(label(m, "kind").to_owned(), json!(m.get_counter().get_value() as u64));
        }

        let models: Vec<Value> = snap
            .loaded
            .iter()
            .map(|(name, bytes, queue)| json!({ "name": name, "bytes": bytes, "queue_depth": queue }))
            .collect();

        json!({
            "version": crate::VERSION,
            "uptime_seconds": inner.started.elapsed().as_secs_f64(),
            "requests": requests,
            "recent": self.recent().view(inner.started.elapsed().as_secs()),
            "latency": latency,
            "generation": generation,
            "cache": cache,
            "errors": errors,
            "loaded_models": snap.loaded.len(),
            "models": models,
            "ram": { "budget": snap.ram_budget, "used": snap.ram_used },
        })
    }
}

impl Inner {
    fn build(pricing: Pricing) -> prometheus::Result<Inner> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str, label: &str, buckets: &[f64]| -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &[label])?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };

        let inner = Inner {
            requests: counter("hearth_requests_total", "HTTP requests answered, by matched route, model and status.", &["route", "model", "status"])?,
            request_duration: histogram("hearth_request_duration_seconds", "Time from request to response headers.", "route", REQUEST_BUCKETS)?,
            generation_duration: histogram("hearth_generation_duration_seconds", "End-to-end time of a generation, streaming included.", "model", GENERATION_BUCKETS)?,
            ttft: histogram("hearth_time_to_first_token_seconds", "Time from request to the first generated token.", "model", GENERATION_BUCKETS)?,
            prompt_tokens: counter("hearth_prompt_tokens_total", "Prompt tokens processed.", &["model"])?,
            generated_tokens: counter("hearth_generated_tokens_total", "Tokens generated.", &["model"])?,
            draft_tokens: counter("hearth_draft_tokens_total", "Tokens guessed ahead by speculative decoding, by result (accepted: the model agreed and they were kept; rejected).", &["model", "result"])?,
            cache_requests: counter("hearth_cache_requests_total", "Response-cache lookups by result (hit, miss, unavailable).", &["result"])?,
            cache_entries: gauge_vec("hearth_cache_entries", "Entries in the response cache.", &[])?,
            cache_bytes: gauge_vec("hearth_cache_bytes", "Bytes held by the response cache.", &[])?,
            queue_depth: gauge_vec("hearth_queue_depth", "Requests queued or running on a loaded model.", &["model"])?,
            loaded_models: gauge("hearth_loaded_models", "Models loaded in memory.")?,
            model_bytes: gauge_vec("hearth_model_bytes", "Bytes held by a loaded model.", &["model"])?,
            ram_budget: gauge("hearth_ram_budget_bytes", "RAM budget for loaded models.")?,
            ram_used: gauge("hearth_ram_used_bytes", "RAM held by loaded models.")?,
            errors: counter("hearth_errors_total", "Errors by kind.", &["kind"])?,
            cost: {
                let c = CounterVec::new(Opts::new("hearth_estimated_cost_total", "Estimated cost of generations from the configured price per 1000 tokens."), &["model"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            uptime: {
                let g = Gauge::new("hearth_uptime_seconds", "Seconds since the server started.")?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            key_requests: counter("hearth_key_requests_total", "Requests by API key, admitted or refused by its rate limits.", &["key", "result"])?,
            key_tokens: counter("hearth_key_tokens_total", "Tokens used by API key (prompt, completion).", &["key", "kind"])?,
            key_cost: {
                let c = CounterVec::new(Opts::new("hearth_key_cost_total", "Estimated cost by API key, from the configured prices."), &["key"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            route_requests: counter("hearth_route_requests_total", "Attempts on a route's targets, by result (ok, skipped, or the failure's kind).", &["route", "target", "result"])?,
            route_fallbacks: counter("hearth_route_fallbacks_total", "Failures after which a route tried its next target.", &["route", "target"])?,
            route_latency: {
                let h = HistogramVec::new(HistogramOpts::new("hearth_route_latency_seconds", "Time from a target's attempt to its answer's end.").buckets(GENERATION_BUCKETS.to_vec()), &["route", "target"])?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            route_ttft: {
                let h = HistogramVec::new(HistogramOpts::new("hearth_route_ttft_seconds", "Time from a target's attempt to its first token.").buckets(GENERATION_BUCKETS.to_vec()), &["route", "target"])?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            route_tokens: counter("hearth_route_tokens_total", "Tokens through a route's targets (input, output).", &["route", "target", "kind"])?,
            route_cost: {
                let c = CounterVec::new(Opts::new("hearth_route_cost_total", "Cost of a route's answers: providers' token prices, CPU time for local models."), &["route", "target"])?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            registry: registry.clone(),
            started: Instant::now(),
            pricing: RwLock::new(pricing),
            scrape: Mutex::new(()),
            recent: Mutex::new(recent::Recent::default()),
        };
        let build_info = IntGaugeVec::new(Opts::new("hearth_build_info", "Always 1; the version is the label."), &["version"])?;
        build_info.with_label_values(&[crate::VERSION]).set(1);
        registry.register(Box::new(build_info))?;
        Ok(inner)
    }

    fn set_snapshot_gauges(&self, snap: &Snapshot) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        // Reset first: a model unloaded since the last scrape must lose its series.
        self.queue_depth.reset();
        self.model_bytes.reset();
        for (model, bytes, queue) in &snap.loaded {
            self.model_bytes.with_label_values(&[model.as_str()]).set(saturating_i64(*bytes));
            self.queue_depth.with_label_values(&[model.as_str()]).set(saturating_i64(*queue as u64));
        }
        self.loaded_models.set(saturating_i64(snap.loaded.len() as u64));
        self.ram_budget.set(saturating_i64(snap.ram_budget));
        self.ram_used.set(saturating_i64(snap.ram_used));
        for (vec, value) in [(&self.cache_entries, snap.cache_entries), (&self.cache_bytes, snap.cache_bytes)] {
            vec.reset();
            if let Some(v) = value {
                vec.with_label_values::<&str>(&[]).set(saturating_i64(v));
            }
        }
    }
}

/// Estimates the `q` quantile (0..=1) from cumulative histogram buckets sorted by upper bound,
/// interpolating linearly inside the bucket that holds the rank, as Prometheus'
/// `histogram_quantile` does. The first bucket starts at 0 (durations are never negative). A
/// rank landing in the `+Inf` bucket answers the largest finite bound, the best that is known.
/// `None` when there are no observations, `q` is out of range, or nothing finite bounds the answer.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below): (Option<f64>, u64) = (None, 0);
    for &(upper, cumulative) in buckets {
        // Skipping empty buckets makes q=0 answer the start of the first non-empty one.
        if cumulative > below && cumulative as f64 >= rank {
            if upper.is_infinite() {
                return lower;
            }
            let start = match lower {
                Some(lower) => lower,
                None if upper > 0.0 => 0.0,
                None => return Some(upper),
            };
            let fraction = (rank - below as f64) / (cumulative - below) as f64;
            return Some(start + (upper - start) * fraction.clamp(0.0, 1.0));
        }
        lower = Some(upper);
        below = cumulative;
    }
    None
}

fn model_label(model: &str) -> &str {
    if model.is_empty() {
        NO_MODEL
    } else {
        model
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The series of one metric vec, as gathered now.
fn series(collector: &impl Collector) -> Vec<Metric> {
    collector.collect().into_iter().flat_map(|mut family| family.take_metric()).collect()
}

fn label<'a>(m: &'a Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

/// `{"count", "p50", "p90", "p99"}` of one histogram series, in seconds.
fn percentiles(m: &Metric) -> Value {
    let h = m.get_histogram();
    let mut buckets: Vec<(f64, u64)> = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
    // The gathered buckets stop at the last finite bound; the total is the implicit +Inf bucket.
    buckets.push((f64::INFINITY, h.get_sample_count()));
    json!({
        "count": h.get_sample_count(),
        "p50": quantile(&buckets, 0.5),
        "p90": quantile(&buckets, 0.9),
        "p99": quantile(&buckets, 0.99),
    })
}

mod recent;
#[cfg(test)]
mod tests;
