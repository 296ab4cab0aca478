//! Quotas shared by the fleet, behind [`crate::limit::Permits`].
//!
//! - [`SharedQuota`], the vendor's quota of one (app, endpoint): every permit is one GCRA
//!   script call on the Redis clock, so the fleet as a whole keeps every one-second window
//!   within the quota; a vendor 429 seen by any replica sets a pause key that every replica's
//!   script checks.
//! - [`LeasedLimit`], a caller's quota: permits are leased from the shared bucket a few at a
//!   time and spent locally, so a cache hit pays no Redis round trip while the lease lasts; the
//!   fleet admits at most the quota plus one lease per replica.
//!
//! While Redis is unavailable both enforce this replica's share: the quota divided by the last
//! known number of live replicas (never more than the whole quota).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::Script;

use super::{Cluster, ClusterError, Op};
use crate::limit::{LimitPolicy, LocalLimit, Permit};
use crate::route::Endpoint;

/// How long a lease's permits may be spent: leftovers lapse, so permits taken long ago never
/// add to a later second.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// For this long after a decision taken locally, shared permits also need a local one: the
/// calls the local share let through in the last second still count against the vendor.
const HANDOVER: Duration = Duration::from_secs(1);

/// A GCRA bucket in Redis.
struct Bucket {
    key: String,
    /// Checked in the same script call: while it exists, no permit.
    pause: Option<String>,
    interval_us: u64,
    burst: u32,
}

/// What the bucket said.
enum Take {
    /// `granted` permits taken; `remaining` more could be taken at once.
    Granted { granted: u32, remaining: u32 },
    /// None now; one is free after this long.
    Wait(Duration),
}

impl Bucket {
    fn new(key: String, pause: Option<String>, policy: LimitPolicy) -> Bucket {
        Bucket {
            key,
            pause,
            // Rounded up: never faster than the policy.
            interval_us: 1_000_000u64.div_ceil(u64::from(policy.per_second.max(1))),
            burst: policy.burst.max(1),
        }
    }

    async fn take(&self, cluster: &Cluster, op: Op, wanted: u32) -> Result<Take, ClusterError> {
        static GCRA: OnceLock<Script> = OnceLock::new();
        let script = GCRA.get_or_init(|| Script::new(include_str!("gcra.lua")));
        let mut keys = vec![self.key.as_str()];
        keys.extend(self.pause.as_deref());
        let (granted, n): (u64, i64) = cluster
            .script(
                op,
                script,
                &keys,
                &[self.interval_us, u64::from(self.burst), u64::from(wanted)],
            )
            .await?;
        let n = u64::try_from(n).unwrap_or(0);
        Ok(match u32::try_from(granted) {
            Ok(granted) if granted > 0 => Take::Granted {
                granted,
                remaining: u32::try_from(n).unwrap_or(u32::MAX),
            },
            // A wait of at least a millisecond: a zero wait would spin.
            _ => Take::Wait(Duration::from_micros(n.max(1_000))),
        })
    }
}

/// This replica's share of a quota, for while Redis is unavailable.
struct LocalShare {
    /// The fleet's policy.
    whole: LimitPolicy,
    /// Start the share's bucket empty: the shared bucket may have spent this second's burst.
    drained: bool,
    state: Mutex<Option<ShareState>>,
}

struct ShareState {
    replicas: u32,
    limit: LocalLimit,
    last_used: Instant,
}

impl LocalShare {
    fn new(whole: LimitPolicy, drained: bool) -> LocalShare {
        LocalShare {
            whole,
            drained,
            state: Mutex::new(None),
        }
    }

    /// A permit of the share for `replicas` live replicas.
    fn acquire(&self, replicas: u32) -> Permit {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state.as_ref().is_none_or(|s| s.replicas != replicas) {
            let policy = share(self.whole, replicas);
            let limit = if self.drained {
                LocalLimit::drained(policy)
            } else {
                LocalLimit::new(policy)
            };
            *state = Some(ShareState {
                replicas,
                limit,
                last_used: now,
            });
        }
        let Some(state) = state.as_mut() else {
            return Permit::Denied {
                retry_after: Duration::from_millis(1),
            };
        };
        state.last_used = now;
        state.limit.try_acquire()
    }

    /// Whether the share decided within the last [`HANDOVER`].
    fn recently_used(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .as_ref()
            .is_some_and(|s| s.last_used.elapsed() < HANDOVER)
    }
}

/// One replica's share of `whole` among `replicas`: each part at least 1, never above whole.
pub fn share(whole: LimitPolicy, replicas: u32) -> LimitPolicy {
    let n = replicas.max(1);
    LimitPolicy {
        per_second: (whole.per_second / n).max(1),
        burst: (whole.burst / n).max(1),
    }
}

/// The vendor's quota of one (app, endpoint), decided in Redis for the whole fleet.
pub struct SharedQuota {
    cluster: Arc<Cluster>,
    bucket: Bucket,
    pause_key: String,
    policy: LimitPolicy,
    local: LocalShare,
}

impl SharedQuota {
    /// The quota `quota` (calls per second) of `app`'s `endpoint`. Its bucket keeps two calls
    /// of margin below the quota in any one-second window, for the jitter between a decision
    /// and the call's arrival, which is larger across several processes than within one.
    pub fn new(cluster: &Arc<Cluster>, app: &str, endpoint: Endpoint, quota: u32) -> SharedQuota {
        let policy = LimitPolicy::within_each_second(quota.saturating_sub(1).max(1));
        let name = endpoint.name();
        SharedQuota {
            cluster: cluster.clone(),
            bucket: Bucket::new(
                cluster.key(app, &["quota", name]),
                Some(cluster.key(app, &["pause", name])),
                policy,
            ),
            pause_key: cluster.key(app, &["pause", name]),
            local: LocalShare::new(LimitPolicy::within_each_second(quota), true),
            policy,
        }
    }

    /// The fleet's rate.
    pub fn policy(&self) -> LimitPolicy {
        self.policy
    }

    /// One permit from the fleet's bucket, or this replica's share while Redis is unavailable.
    pub async fn try_acquire(&self) -> Permit {
        match self.bucket.take(&self.cluster, Op::VendorQuota, 1).await {
            Ok(Take::Granted { remaining, .. }) => {
                if self.local.recently_used() {
                    // Back from the local share: its calls of the last second still count.
                    if let denied @ Permit::Denied { .. } =
                        self.local.acquire(self.cluster.replicas())
                    {
                        return denied;
                    }
                }
                Permit::Granted { remaining }
            }
            Ok(Take::Wait(retry_after)) => Permit::Denied { retry_after },
            Err(_) => {
                self.cluster.fallback(Op::VendorQuota);
                self.local.acquire(self.cluster.replicas())
            }
        }
    }

    /// The vendor throttled this endpoint: every replica pauses it for `length`.
    pub async fn pause(&self, length: Duration) {
        static PAUSE: OnceLock<Script> = OnceLock::new();
        let script = PAUSE.get_or_init(|| Script::new(include_str!("pause.lua")));
        let millis = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Result<i64, _> = self
            .cluster
            .script(Op::VendorPause, script, &[&self.pause_key], &[millis])
            .await;
        if set.is_err() {
            // This replica pauses anyway (its own pause); the others learn of the vendor's
            // limit from their own calls.
            self.cluster.fallback(Op::VendorPause);
        }
    }
}

/// A caller's quota for the whole fleet, spent locally from small leases.
pub struct LeasedLimit {
    cluster: Arc<Cluster>,
    bucket: Bucket,
    policy: LimitPolicy,
    lease: u32,
    /// Permits of the current lease not yet spent.
    permits: AtomicU32,
    /// Until when they may be spent, ns since `epoch`.
    lease_until: AtomicU64,
    /// The bucket said no until then, ns since `epoch`: refusals until then are local too.
    denied_until: AtomicU64,
    epoch: Instant,
    refilling: tokio::sync::Mutex<()>,
    local: LocalShare,
}

impl LeasedLimit {
    /// The quota `policy` of the client named `client`, taken in leases of
    /// `max(1, per_second / 20)` permits (at most its burst).
    pub fn new(cluster: &Arc<Cluster>, client: &str, policy: LimitPolicy) -> LeasedLimit {
        let lease = (policy.per_second / 20).clamp(1, policy.burst.max(1));
        LeasedLimit {
            cluster: cluster.clone(),
            bucket: Bucket::new(cluster.key(client, &["client", "rate"]), None, policy),
            policy,
            lease,
            permits: AtomicU32::new(0),
            lease_until: AtomicU64::new(0),
            denied_until: AtomicU64::new(0),
            epoch: Instant::now(),
            refilling: tokio::sync::Mutex::new(()),
            local: LocalShare::new(policy, false),
        }
    }

    /// The fleet's rate for this client.
    pub fn policy(&self) -> LimitPolicy {
        self.policy
    }

    /// Permits in one lease.
    pub fn lease_size(&self) -> u32 {
        self.lease
    }

    /// One permit: from the lease when it has one (no Redis round trip), else a new lease.
    pub async fn try_acquire(&self) -> Permit {
        if let Some(decided) = self.spend() {
            return decided;
        }
        if !self.cluster.is_up() {
            self.cluster.fallback(Op::ClientLease);
            return self.local.acquire(self.cluster.replicas());
        }
        // One lease at a time: the others wait for it and spend from it.
        let _one = self.refilling.lock().await;
        if let Some(decided) = self.spend() {
            return decided;
        }
        match self
            .bucket
            .take(&self.cluster, Op::ClientLease, self.lease)
            .await
        {
            Ok(Take::Granted { granted, remaining }) => {
                self.permits.store(granted - 1, Ordering::Release);
                self.lease_until
                    .store(self.now() + nanos(LEASE_LIFETIME), Ordering::Release);
                Permit::Granted {
                    remaining: remaining.saturating_add(granted - 1),
                }
            }
            Ok(Take::Wait(retry_after)) => {
                self.denied_until
                    .store(self.now() + nanos(retry_after), Ordering::Release);
                Permit::Denied { retry_after }
            }
            Err(_) => {
                self.cluster.fallback(Op::ClientLease);
                self.local.acquire(self.cluster.replicas())
            }
        }
    }

    /// A decision without Redis: a refusal while the bucket's last "no" holds, or a permit of
    /// the current lease. `None`: a new lease is needed.
    pub fn spend(&self) -> Option<Permit> {
        let now = self.now();
        let denied_until = self.denied_until.load(Ordering::Acquire);
        if now < denied_until {
            return Some(Permit::Denied {
                retry_after: Duration::from_nanos(denied_until - now),
            });
        }
        if now >= self.lease_until.load(Ordering::Acquire) {
            return None;
        }
        let mut left = self.permits.load(Ordering::Acquire);
        while left > 0 {
            match self.permits.compare_exchange_weak(
                left,
                left - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Permit::Granted {
                        remaining: left - 1,
                    })
                }
                Err(actual) => left = actual,
            }
        }
        None
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_the_quota_but_never_below_one_nor_above_the_whole() {
        let whole = LimitPolicy {
            per_second: 80,
            burst: 20,
        };
        assert_eq!(
            share(whole, 3),
            LimitPolicy {
                per_second: 26,
                burst: 6
            }
        );
        assert_eq!(share(whole, 0), whole);
        assert_eq!(share(whole, 1), whole);
        assert_eq!(
            share(whole, 1000),
            LimitPolicy {
                per_second: 1,
                burst: 1
            }
        );
    }

    #[test]
    fn a_drained_share_starts_without_its_burst() {
        let share = LocalShare::new(
            LimitPolicy {
                per_second: 10,
                burst: 10,
            },
            true,
        );
        assert!(matches!(share.acquire(1), Permit::Denied { .. }));
        assert!(share.recently_used());
        let fresh = LocalShare::new(
            LimitPolicy {
                per_second: 10,
                burst: 10,
            },
            false,
        );
        assert!(!fresh.recently_used());
        for _ in 0..5 {
            assert!(matches!(fresh.acquire(2), Permit::Granted { .. }));
        }
        assert!(matches!(fresh.acquire(2), Permit::Denied { .. }));
    }
}
