//! What a route's targets have done: requests, errors by kind, fallbacks, latency and time to
//! first token over the last answers, tokens, cost, and the feedback clients attached. Pure
//! counting; `Router` keeps one per (route, target) and shows them in `/api/routes`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

/// Samples kept for the percentiles.
const WINDOW: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// Failures after which the route tried the next target.
    pub fallbacks: u64,
    /// Times the target was passed over (breaker open, or no room to load it at once).
    pub skipped: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    latency: VecDeque<f64>,
    ttft: VecDeque<f64>,
    feedback_count: u64,
    feedback_sum: f64,
    scored: u64,
    labels: BTreeMap<String, u64>,
}

/// One finished answer as a target served it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
}

fn push(window: &mut VecDeque<f64>, v: f64) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(v);
}

impl Stats {
    pub fn success(&mut self, s: &Served) {
        push(&mut self.latency, s.latency.as_secs_f64() * 1000.0);
        if let Some(t) = s.ttft {
            push(&mut self.ttft, t.as_secs_f64() * 1000.0);
        }
        self.input_tokens += s.input_tokens;
        self.output_tokens += s.output_tokens;
        if s.cost.is_finite() && s.cost > 0.0 {
            self.cost += s.cost;
        }
    }

    pub fn error(&mut self, kind: &'static str) {
        self.errors += 1;
        *self.errors_by_kind.entry(kind).or_default() += 1;
    }

    pub fn feedback(&mut self, score: Option<f64>, label: Option<&str>) {
        self.feedback_count += 1;
        if let Some(s) = score {
            self.feedback_sum += s;
            self.scored += 1;
        }
        if let Some(l) = label {
            *self.labels.entry(l.to_string()).or_default() += 1;
        }
    }

    pub fn view(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind,
            "fallbacks": self.fallbacks,
            "skipped": self.skipped,
            "latency_ms": percentiles(&self.latency),
            "ttft_ms": percentiles(&self.ttft),
            "tokens": { "input": self.input_tokens, "output": self.output_tokens },
            "cost": self.cost,
            "feedback": feedback_view(self.feedback_count, self.scored, self.feedback_sum, &self.labels),
        })
    }
}

/// A target's feedback as `/api/routes` shows it: how much, how much had a score, the mean
/// score, and each label's count.
pub fn feedback_view(count: u64, scored: u64, score_sum: f64, labels: &BTreeMap<String, u64>) -> Value {
    json!({
        "count": count,
        "scored": scored,
        "mean_score": (scored > 0).then(|| score_sum / scored as f64),
        "labels": labels,
    })
}

/// p50, p95 and p99 of the window (nearest rank), and how many samples they come from.
fn percentiles(window: &VecDeque<f64>) -> Value {
    if window.is_empty() {
        return json!({ "count": 0 });
    }
    let mut v: Vec<f64> = window.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({ "count": v.len(), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_last_answers() {
        let mut s = Stats::default();
        for ms in 1..=100u64 {
            s.success(&Served { latency: Duration::from_millis(ms), input_tokens: 1, output_tokens: 2, cost: 0.5, ..Default::default() });
        }
        let v = s.view();
        assert_eq!(v["latency_ms"]["p50"], 50.0);
        assert_eq!(v["latency_ms"]["p99"], 99.0);
        assert_eq!(v["ttft_ms"]["count"], 0);
        assert_eq!(v["tokens"]["output"], 200);
        assert_eq!(v["cost"], 50.0);
        for _ in 0..WINDOW {
            s.success(&Served { latency: Duration::from_millis(7), ..Default::default() });
        }
        assert_eq!(s.view()["latency_ms"]["p99"], 7.0, "older samples left the window");
    }

    #[test]
    fn feedback_means_count_only_scores() {
        let mut s = Stats::default();
        s.feedback(Some(1.0), None);
        s.feedback(Some(0.0), Some("bad"));
        s.feedback(None, Some("bad"));
        let v = s.view();
        assert_eq!(v["feedback"]["count"], 3);
        assert_eq!(v["feedback"]["mean_score"], 0.5);
        assert_eq!(v["feedback"]["labels"]["bad"], 2);
    }
}
