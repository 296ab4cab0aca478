//! The emulator's counters, its sliding-window quotas, and the `/__emulator/` control API.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::route::Endpoint;

/// How many batch sizes `presence_batch_sizes` keeps before it stops recording (bounded memory
/// under a long benchmark; tests reset the stats first).
const MAX_BATCH_SIZES: usize = 65_536;

/// What `GET /__emulator/stats` reports.
#[derive(Debug, Default)]
pub struct Stats {
    requests: [AtomicU64; Endpoint::ALL.len()],
    responses: Mutex<BTreeMap<u16, u64>>,
    batch_sizes: Mutex<Vec<usize>>,
    /// The `traceparent` of the last request that carried one (to check trace propagation).
    last_traceparent: Mutex<Option<String>>,
}

impl Stats {
    /// Counts a request to `endpoint`.
    pub fn request(&self, endpoint: Endpoint) {
        self.requests[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer with `status`.
    pub fn response(&self, status: u16) {
        *lock(&self.responses).entry(status).or_default() += 1;
    }

    /// Records the number of users of one presence batch get.
    pub fn batch_size(&self, users: usize) {
        let mut sizes = lock(&self.batch_sizes);
        if sizes.len() < MAX_BATCH_SIZES {
            sizes.push(users);
        }
    }

    /// Remembers the `traceparent` of a request.
    pub fn traceparent(&self, value: &str) {
        *lock(&self.last_traceparent) = Some(value.to_owned());
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for counter in &self.requests {
            counter.store(0, Ordering::Relaxed);
        }
        lock(&self.responses).clear();
        lock(&self.batch_sizes).clear();
        *lock(&self.last_traceparent) = None;
    }

    /// The JSON document of `GET /__emulator/stats`.
    pub fn to_json(&self) -> Bytes {
        let requests: serde_json::Map<String, serde_json::Value> = Endpoint::ALL
            .iter()
            .map(|e| {
                let n = self.requests[e.index()].load(Ordering::Relaxed);
                (e.name().to_owned(), n.into())
            })
            .collect();
        let responses: serde_json::Map<String, serde_json::Value> = lock(&self.responses)
            .iter()
            .map(|(status, n)| (status.to_string(), (*n).into()))
            .collect();
        let sizes = lock(&self.batch_sizes).clone();
        let traceparent = lock(&self.last_traceparent).clone();
        let body = json!({
            "requests": requests,
            "responses": responses,
            "presence_batch_sizes": sizes,
            "last_traceparent": traceparent,
        });
        Bytes::from(body.to_string())
    }
}

/// "At most `limit` calls in any one-second window", kept exactly with a log of admitted calls.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    admitted: Mutex<VecDeque<Instant>>,
}

impl SlidingWindow {
    /// A window admitting `limit` calls per second; `0` admits everything.
    pub fn new(limit: u32) -> Self {
        SlidingWindow {
            limit: limit as usize,
            admitted: Mutex::new(VecDeque::with_capacity(limit as usize)),
        }
    }

    /// Admits a call now, or refuses it when the last second already holds `limit` calls.
    pub fn try_admit(&self, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut admitted = lock(&self.admitted);
        while admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            admitted.pop_front();
        }
        if admitted.len() >= self.limit {
            return false;
        }
        admitted.push_back(now);
        true
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (counters stay usable).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_the_limit_per_second_then_slides() {
        let w = SlidingWindow::new(3);
        let t0 = Instant::now();
        assert!((0..3).all(|i| w.try_admit(t0 + Duration::from_millis(i * 100))));
        assert!(!w.try_admit(t0 + Duration::from_millis(999)));
        assert!(
            w.try_admit(t0 + Duration::from_millis(1000)),
            "the first call left the window"
        );
        assert!(!w.try_admit(t0 + Duration::from_millis(1050)));
    }

    #[test]
    fn zero_means_unlimited() {
        let w = SlidingWindow::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| w.try_admit(now)));
    }

    #[test]
    fn stats_count_and_reset() {
        let s = Stats::default();
        s.request(Endpoint::Token);
        s.response(401);
        s.batch_size(3);
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["requests"]["token"], 1);
        assert_eq!(v["requests"]["other"], 0);
        assert_eq!(v["responses"]["401"], 1);
        assert_eq!(v["presence_batch_sizes"], json!([3]));
        s.reset();
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["requests"]["token"], 0);
        assert_eq!(v["responses"], json!({}));
    }
}
