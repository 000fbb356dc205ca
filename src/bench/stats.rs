//! Percentiles and summaries of measured durations. Pure functions only: no clocks, no I/O.
//!
//! Percentiles interpolate linearly between the two nearest ranks (numpy's default "linear"
//! method): for `n` sorted samples the p-th percentile sits at rank `p/100 * (n-1)`, so p0 is
//! the minimum, p100 the maximum, and the median of an even count is the mean of the middle
//! two. With one sample every percentile is that sample.

use serde::Serialize;

/// The p-th percentile (0..=100) of `sorted` (ascending), interpolated linearly between the
/// nearest ranks; `None` for no samples or a p outside 0..=100.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi.min(sorted.len() - 1)]);
    Some(a + (b - a) * (rank - lo as f64))
}

/// The median of unsorted values (`percentile` 50).
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(&sorted(values), 50.0)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Count, mean, extremes and p50/p95/p99 of a set of samples (milliseconds in reports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no (finite) samples.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let v = sorted(values);
        let first = *v.first()?;
        let last = *v.last()?;
        Some(Summary {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: first,
            p50: percentile(&v, 50.0)?,
            p95: percentile(&v, 95.0)?,
            p99: percentile(&v, 99.0)?,
            max: last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert!(close(percentile(&v, 50.0).expect("p50"), 2.5));
        // rank 0.95 * 3 = 2.85: 3 + 0.85 * (4 - 3)
        assert!(close(percentile(&v, 95.0).expect("p95"), 3.85));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        // rank 0.99 * 99 = 98.01: 99 + 0.01
        assert!(close(percentile(&hundred, 99.0).expect("p99"), 99.01));
        assert!(close(percentile(&hundred, 50.0).expect("p50"), 50.5));
    }

    #[test]
    fn percentile_edges() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 101.0), None);
        assert_eq!(percentile(&[1.0, 2.0], -1.0), None);
    }

    #[test]
    fn median_sorts_and_skips_non_finite_values() {
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[f64::NAN, 3.0, 1.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summary_of_samples() {
        let s = Summary::of(&[30.0, 10.0, 20.0]).expect("summary");
        assert_eq!((s.count, s.min, s.max), (3, 10.0, 30.0));
        assert!(close(s.mean, 20.0));
        assert!(close(s.p50, 20.0));
        assert!(close(s.p95, 29.0));
        assert!(close(s.p99, 29.8));
        assert!(Summary::of(&[]).is_none());
    }
}
