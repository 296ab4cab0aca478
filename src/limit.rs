//! Rate limits (governor): each client's own quota on imgate, and the vendor's per-app,
//! per-endpoint quota that the whole fleet shares.
//!
//! Both take their permits from [`Permits`]: this process's memory, or, in cluster mode, the
//! fleet's buckets in Redis ([`crate::cluster::quota`]), without the request path knowing which.
//!
//! The vendor does not document its window, so imgate takes the strictest reading: never more
//! than the quota in any one-second window. A token bucket of rate `r` and burst `b` lets at most
//! `r + b - 1` calls through in any second, so a quota `N` becomes `b = max(1, N / 5)` and
//! `r = N - b`: a burst after an idle period cannot trip the vendor, and one call of slack
//! absorbs the jitter between imgate's clock and the vendor's.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::cluster::quota::{LeasedLimit, SharedQuota};

/// A rate: permits per second, and how many may be taken at once after an idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPolicy {
    /// Sustained permits per second.
    pub per_second: u32,
    /// Permits available at once.
    pub burst: u32,
}

impl LimitPolicy {
    /// The IETF `RateLimit-Policy` value of a client's quota
    /// (draft-ietf-httpapi-ratelimit-headers), made once per client.
    pub fn header_value(self) -> http::HeaderValue {
        let value = format!("\"client\";q={};w=1;burst={}", self.per_second, self.burst);
        http::HeaderValue::try_from(value).unwrap_or(http::HeaderValue::from_static("\"client\""))
    }

    /// The strictest bucket that keeps every one-second window within `quota` calls.
    pub fn within_each_second(quota: u32) -> LimitPolicy {
        let burst = (quota / 5).max(1);
        LimitPolicy {
            per_second: quota.saturating_sub(burst).max(1),
            burst,
        }
    }
}

/// One permit request's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Taken; this many remain available at once.
    Granted {
        /// Permits left in the burst.
        remaining: u32,
    },
    /// Refused; a permit is free again after this long.
    Denied {
        /// Time until the next permit.
        retry_after: Duration,
    },
}

/// Where a quota's permits come from.
pub enum Permits {
    /// This process's memory: one process on its own.
    Local(LocalLimit),
    /// Every permit decided in Redis for the fleet (the vendor's quota).
    Shared(SharedQuota),
    /// Permits leased from the fleet's bucket a few at a time, spent locally (a caller's quota).
    Leased(LeasedLimit),
}

impl Permits {
    /// Takes one permit now, or says when one will be free.
    pub async fn try_acquire(&self) -> Permit {
        // The waits on Redis are boxed: every request's future would otherwise carry (and copy)
        // their state, cluster or not.
        match self {
            Permits::Local(limit) => limit.try_acquire(),
            Permits::Shared(quota) => Box::pin(quota.try_acquire()).await,
            Permits::Leased(limit) => match limit.spend() {
                Some(decided) => decided,
                None => Box::pin(limit.try_acquire()).await,
            },
        }
    }

    /// The rate it enforces (the fleet's, in cluster mode).
    pub fn policy(&self) -> LimitPolicy {
        match self {
            Permits::Local(limit) => limit.policy(),
            Permits::Shared(quota) => quota.policy(),
            Permits::Leased(limit) => limit.policy(),
        }
    }
}

/// A quota in this process's memory (governor's GCRA).
pub struct LocalLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>,
    clock: DefaultClock,
    policy: LimitPolicy,
}

impl LocalLimit {
    /// A limit enforcing `policy` (zero rates and bursts count as one).
    pub fn new(policy: LimitPolicy) -> LocalLimit {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(policy.per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(policy.burst).unwrap_or(one));
        let clock = DefaultClock::default();
        LocalLimit {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware(),
            clock,
            policy,
        }
    }

    /// A limit enforcing `policy` whose burst is already spent (it grants at its rate only).
    pub fn drained(policy: LimitPolicy) -> LocalLimit {
        let limit = LocalLimit::new(policy);
        if let Some(burst) = NonZeroU32::new(policy.burst) {
            let _ = limit.limiter.check_n(burst);
        }
        limit
    }

    /// Takes one permit now, or says when one will be free.
    pub fn try_acquire(&self) -> Permit {
        match self.limiter.check() {
            Ok(state) => Permit::Granted {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Permit::Denied {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// The rate it enforces.
    pub fn policy(&self) -> LimitPolicy {
        self.policy
    }
}

/// How long a refused call waits at most, and how many may wait at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Longest wait for a vendor permit.
    pub max_wait: Duration,
    /// Most calls waiting for permits of one quota; more are refused at once.
    pub max_waiters: usize,
}

/// How late a timer may fire.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Shortest and longest pause after the vendor answered 429 or 503 without `Retry-After`.
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// The vendor's quota of one (app, endpoint): permits, a bounded wait for them, and a pause
/// when the vendor says it is over its limit anyway.
pub struct VendorQuota {
    limit: Permits,
    wait: WaitPolicy,
    waiters: Semaphore,
    pause: Mutex<Pause>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    /// The next adaptive pause (doubles per throttle; starts small again after a quiet spell).
    next: Option<Duration>,
    /// When the vendor last throttled (the adaptive pause starts small again after a quiet
    /// spell).
    last_throttle: Option<Instant>,
    /// Set from a throttle until a call succeeds: meanwhile one call at a time probes.
    recovering: bool,
    /// While recovering, one call at a time probes the vendor: until then, others hold off.
    probe_until: Option<Instant>,
}

/// Longest a recovering quota waits for its probing call to report back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often calls held off by a probe look again.
const PROBE_POLL: Duration = Duration::from_millis(10);

/// How long without a vendor 429 or 503 before the adaptive pause starts small again: a
/// success between two throttles does not mean the vendor's real quota was found.
const QUIET: Duration = Duration::from_secs(10);

/// Why a vendor permit was not had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExhausted {
    /// When the caller may try again.
    pub retry_after: Duration,
}

impl VendorQuota {
    /// A quota of `quota` calls in any one second, in this process.
    pub fn new(quota: u32, wait: WaitPolicy) -> VendorQuota {
        VendorQuota::with(
            Permits::Local(LocalLimit::new(LimitPolicy::within_each_second(quota))),
            wait,
        )
    }

    /// A quota whose permits come from `limit`.
    pub fn with(limit: Permits, wait: WaitPolicy) -> VendorQuota {
        VendorQuota {
            limit,
            wait,
            waiters: Semaphore::new(wait.max_waiters),
            pause: Mutex::new(Pause::default()),
        }
    }

    /// Takes a permit, waiting up to `max_wait` (in a bounded queue); returns how long it waited.
    pub async fn acquire(&self) -> Result<Duration, QuotaExhausted> {
        let started = Instant::now();
        let deadline = started + self.wait.max_wait;
        let mut queued = None;
        loop {
            let now = Instant::now();
            if now > deadline {
                // A late timer (a busy machine) must not turn into a longer wait than promised.
                return Err(QuotaExhausted {
                    retry_after: PROBE_POLL,
                });
            }
            let wait_for = match self.hold(now) {
                Some(wait) => wait,
                None => match self.limit.try_acquire().await {
                    Permit::Granted { .. } => return Ok(now - started),
                    Permit::Denied { retry_after } => {
                        self.lock().probe_until = None;
                        retry_after
                    }
                },
            };
            // Timers fire up to a millisecond or two late: only wait when that still ends in time.
            if now + wait_for + TIMER_SLACK > deadline {
                return Err(QuotaExhausted {
                    retry_after: wait_for,
                });
            }
            if queued.is_none() {
                // Only so many may wait; the others are told at once.
                match self.waiters.try_acquire() {
                    Ok(slot) => queued = Some(slot),
                    Err(_) => {
                        return Err(QuotaExhausted {
                            retry_after: wait_for,
                        })
                    }
                }
            }
            tokio::time::sleep(wait_for).await;
        }
    }

    /// The vendor answered 429 or 503: no calls for `retry_after` (the vendor's word bounds
    /// the pause), or for an adaptive pause, then one probing call at a time (in cluster mode,
    /// the pause holds on every replica).
    pub async fn throttled(&self, retry_after: Option<Duration>) {
        let length = {
            let mut pause = self.lock();
            let now = Instant::now();
            let until = match retry_after {
                Some(asked) => now + asked,
                None => {
                    let next = pause.next.unwrap_or(PAUSE_MIN);
                    pause.next = Some((next * 2).min(PAUSE_MAX));
                    let until = now + next;
                    pause.until.map_or(until, |current| current.max(until))
                }
            };
            pause.until = Some(until);
            pause.last_throttle = Some(now);
            pause.recovering = true;
            pause.probe_until = None;
            until - now
        };
        if let Permits::Shared(shared) = &self.limit {
            shared.pause(length).await;
        }
    }

    /// The vendor answered normally: full concurrency again at once (a probe succeeded); after
    /// a quiet spell the adaptive pause starts small again too.
    pub fn succeeded(&self) {
        let mut pause = self.lock();
        pause.probe_until = None;
        pause.recovering = false;
        if pause.last_throttle.is_some_and(|t| t.elapsed() >= QUIET) {
            pause.next = None;
            pause.last_throttle = None;
        }
    }

    /// A call got no answer (timeout, connection failure): it tells nothing about the vendor's
    /// quota, so the next call may probe.
    pub fn no_answer(&self) {
        self.lock().probe_until = None;
    }

    /// How long a call must hold off because the vendor throttled recently: through the pause,
    /// and after it, while another call probes whether the vendor accepts calls again (so that
    /// the calls queued behind a pause do not all hit the vendor at once). `None`: go ahead
    /// (and, while recovering, this call is the probe).
    fn hold(&self, now: Instant) -> Option<Duration> {
        let mut pause = self.lock();
        if let Some(until) = pause.until.filter(|until| *until > now) {
            return Some(until - now);
        }
        if !pause.recovering {
            return None;
        }
        match pause.probe_until {
            Some(probe) if probe > now => Some((probe - now).min(PROBE_POLL)),
            _ => {
                pause.probe_until = Some(now + PROBE_TIMEOUT);
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pause> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_becomes_a_bucket_that_no_second_can_exceed() {
        for quota in [1, 2, 5, 50, 100, 300] {
            let p = LimitPolicy::within_each_second(quota);
            assert!(p.per_second + p.burst - 1 < quota.max(2), "{quota}: {p:?}");
            assert!(p.per_second >= 1 && p.burst >= 1);
        }
        assert_eq!(
            LimitPolicy::within_each_second(100),
            LimitPolicy {
                per_second: 80,
                burst: 20
            }
        );
    }

    #[test]
    fn a_local_limit_grants_its_burst_then_says_when() {
        let limit = LocalLimit::new(LimitPolicy {
            per_second: 10,
            burst: 3,
        });
        for remaining in [2, 1, 0] {
            assert_eq!(limit.try_acquire(), Permit::Granted { remaining });
        }
        match limit.try_acquire() {
            Permit::Denied { retry_after } => assert!(retry_after <= Duration::from_millis(100)),
            granted => panic!("{granted:?}"),
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    fn quota(n: u32, max_wait_ms: u64, max_waiters: usize) -> VendorQuota {
        VendorQuota::new(
            n,
            WaitPolicy {
                max_wait: Duration::from_millis(max_wait_ms),
                max_waiters,
            },
        )
    }

    #[tokio::test]
    async fn waits_for_a_permit_within_max_wait_then_refuses() {
        // Burst 2, then one permit every 125 ms.
        let q = quota(10, 250, 10);
        for _ in 0..4 {
            assert!(q.acquire().await.is_ok(), "the burst and the next refills");
        }
        let started = Instant::now();
        let outcome = q.acquire().await;
        assert!(started.elapsed() <= Duration::from_millis(260));
        match outcome {
            Ok(waited) => assert!(waited <= Duration::from_millis(260), "{waited:?}"),
            Err(e) => assert!(e.retry_after > Duration::ZERO),
        }
        let strict = quota(1, 10, 10);
        assert!(strict.acquire().await.is_ok());
        let refused = strict.acquire().await.unwrap_err();
        assert!(
            refused.retry_after > Duration::from_millis(10),
            "told at once, not after waiting"
        );
    }

    #[tokio::test]
    async fn a_successful_probe_restores_full_concurrency_at_once() {
        let q = std::sync::Arc::new(quota(100, 250, 100));
        q.throttled(None).await;
        q.throttled(None).await;
        assert!(
            q.acquire().await.is_ok(),
            "the probe, once the pause is over"
        );
        q.succeeded();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..15 {
            let q = q.clone();
            calls.spawn(async move { q.acquire().await.is_ok() });
        }
        let granted = calls.join_all().await.into_iter().filter(|ok| *ok).count();
        assert_eq!(granted, 15, "15 concurrent calls after a successful probe");
    }

    #[tokio::test]
    async fn the_vendors_retry_after_bounds_the_pause() {
        let q = quota(100, 1_000, 10);
        for _ in 0..6 {
            q.throttled(None).await;
        }
        q.throttled(Some(Duration::from_millis(50))).await;
        let waited = q.acquire().await.expect("within a second");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
    }

    #[tokio::test]
    async fn a_throttled_quota_pauses_and_backs_off() {
        let q = quota(100, 50, 10);
        q.throttled(Some(Duration::from_secs(2))).await;
        let refused = q.acquire().await.unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(1));
        let q = quota(100, 500, 10);
        q.throttled(None).await;
        let waited = q.acquire().await.unwrap();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        // Recovering: the next call waits for the probe (the call above) to report back.
        let started = Instant::now();
        let (held, ()) = tokio::join!(q.acquire(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            q.succeeded();
        });
        assert!(held.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(45),
            "{:?}",
            started.elapsed()
        );
    }
}
