//! The last ten minutes of traffic in ten-second buckets: requests that named a model and
//! tokens generated, so the web page's charts start full instead of empty. Pure counting on a
//! clock the caller gives (seconds since the server started); the oldest bucket falls off as
//! a new one begins.

use std::collections::VecDeque;

use serde_json::{json, Value};

/// Seconds per bucket.
pub const BUCKET_SECONDS: u64 = 10;
/// Buckets kept: ten minutes.
pub const BUCKETS: usize = 60;

#[derive(Debug, Default)]
pub struct Recent {
    /// (bucket number, requests, generated tokens), oldest first, only buckets that saw traffic.
    buckets: VecDeque<(u64, u64, u64)>,
}

impl Recent {
    fn bucket(&mut self, now_s: u64) -> &mut (u64, u64, u64) {
        let n = now_s / BUCKET_SECONDS;
        if self.buckets.back().is_none_or(|b| b.0 != n) {
            self.buckets.push_back((n, 0, 0));
        }
        while self.buckets.front().is_some_and(|b| b.0 + BUCKETS as u64 <= n) {
            self.buckets.pop_front();
        }
        self.buckets.back_mut().expect("just pushed")
    }

    pub fn request(&mut self, now_s: u64) {
        self.bucket(now_s).1 += 1;
    }

    pub fn tokens(&mut self, now_s: u64, generated: u64) {
        self.bucket(now_s).2 += generated;
    }

    /// Every bucket of the window ending now, oldest first (empty ones as 0), the current one
    /// (still filling) last.
    pub fn view(&self, now_s: u64) -> Value {
        let n = now_s / BUCKET_SECONDS;
        let first = (n + 1).saturating_sub(BUCKETS as u64);
        let (mut requests, mut tokens) = (vec![0u64; (n + 1 - first) as usize], vec![0u64; (n + 1 - first) as usize]);
        for &(b, r, t) in self.buckets.iter().filter(|b| b.0 >= first && b.0 <= n) {
            requests[(b - first) as usize] = r;
            tokens[(b - first) as usize] = t;
        }
        json!({ "bucket_seconds": BUCKET_SECONDS, "requests": requests, "generated_tokens": tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_and_fall_off_after_ten_minutes() {
        let mut r = Recent::default();
        r.request(0);
        r.request(5);
        r.tokens(5, 7);
        r.request(25);
        let v = r.view(25);
        assert_eq!(v["requests"], json!([2, 0, 1]));
        assert_eq!(v["generated_tokens"], json!([7, 0, 0]));
        // Ten minutes on, the first bucket is out of the window; the view is always 60 long.
        r.request(600);
        let v = r.view(600);
        assert_eq!(v["requests"].as_array().map(Vec::len), Some(BUCKETS));
        assert_eq!(v["requests"][0], 0);
        assert_eq!(v["requests"][BUCKETS - 1], 1);
        assert_eq!(v["requests"][BUCKETS - 1 - 58], 1, "the bucket of second 25");
        assert!(r.buckets.len() <= BUCKETS);
    }
}
