//! How much prompt goes into one decode step. A departed client is noticed between steps, so a
//! step must stay short for cancellation to reach the engine quickly (the aim: the CPU idle
//! within 250 ms of a hang-up, also while a prompt is being read). llama-cpp-2 exposes no
//! abort callback to cut a decode short, so the bound comes from the step size instead: the
//! prompt budget is what the measured prefill rate decodes in [`TARGET`], never less than
//! [`MIN_CHUNK`] (below which the per-step cost dominates) nor more than the batch.
//!
//! Pure arithmetic on measured times; the worker feeds it each step's tokens and duration.

use std::time::Duration;

/// What one step should take.
pub const TARGET: Duration = Duration::from_millis(150);
/// Below this many tokens a step loses llama.cpp's batched matrix kernels. Measured with
/// SmolLM2-135M Q4_1 on a 2-vCPU Xeon (prefill t/s by fixed chunk: 512: 194, 256: 214, 128:
/// 178, 64: 180, 32: 86): a 32-token step takes as long as a 64-token one.
pub const MIN_CHUNK: usize = 64;
/// Steps with fewer tokens say little about the prompt rate (a step's fixed cost dominates).
const MIN_SAMPLE: usize = 16;

#[derive(Debug, Clone)]
pub struct PrefillPace {
    capacity: usize,
    /// Smoothed seconds per token of recent big steps; `None` until one is measured.
    secs_per_token: Option<f64>,
}

impl PrefillPace {
    pub fn new(capacity: usize) -> PrefillPace {
        PrefillPace { capacity: capacity.max(1), secs_per_token: None }
    }

    /// Prompt tokens the next step may take. Before any measurement: a small first chunk, so
    /// the first prompt is cancellable too.
    pub fn budget(&self) -> usize {
        let floor = MIN_CHUNK.min(self.capacity);
        match self.secs_per_token {
            None => MIN_CHUNK.clamp(floor, self.capacity),
            Some(s) if s > 0.0 => ((TARGET.as_secs_f64() / s) as usize).clamp(floor, self.capacity),
            Some(_) => self.capacity,
        }
    }

    /// A decoded step: `tokens` in the batch, in `took`.
    pub fn observe(&mut self, tokens: usize, took: Duration) {
        if tokens < MIN_SAMPLE {
            return;
        }
        let sample = took.as_secs_f64() / tokens as f64;
        self.secs_per_token = Some(match self.secs_per_token {
            // Quick to follow: the machine's load changes, and one slow step is one step.
            Some(old) => 0.5 * old + 0.5 * sample,
            None => sample,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_measured_rate_within_bounds() {
        let mut p = PrefillPace::new(512);
        assert_eq!(p.budget(), MIN_CHUNK, "small until measured");
        p.observe(64, Duration::from_millis(64)); // 1 ms a token
        assert_eq!(p.budget(), 150);
        p.observe(8, Duration::from_secs(10)); // too small a step to count
        assert_eq!(p.budget(), 150);
        for _ in 0..20 {
            p.observe(512, Duration::from_millis(51)); // 0.1 ms a token: a fast machine
        }
        assert_eq!(p.budget(), 512, "never more than the batch");
        for _ in 0..20 {
            p.observe(100, Duration::from_secs(2)); // a big model: 20 ms a token
        }
        assert_eq!(p.budget(), MIN_CHUNK, "never less than the floor");
        assert_eq!(PrefillPace::new(8).budget(), 8);
    }
}
