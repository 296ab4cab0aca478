//! One Easemob app token for the fleet, kept in Redis.
//!
//! - The token is stored sealed ([`Sealer`]: ChaCha20-Poly1305 under a key derived from the
//!   app's credentials) with its generation, in a hash that expires with the token: reading
//!   Redis alone never yields a usable vendor token.
//! - A replica that needs a token newer than generation `g` (none yet, a scheduled renewal, a
//!   vendor 401, a rotation) first takes the fleet's if it is newer than `g`; otherwise it takes
//!   the app's lock, looks again, and only then fetches, stores generation `max(stored, g) + 1`
//!   and tells the other replicas on the bus. Replicas that find the lock taken keep serving
//!   with their current token and wait for the new one to appear. So a 401 seen by every
//!   replica costs one fetch for the fleet.
//! - While Redis is unavailable, a replica fetches for itself, as a single process does.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::Script;

use super::bus::Bus;
use super::{Cluster, ClusterError, Op};
use crate::token::seal::Sealer;
use crate::token::{Credentials, IssuedToken, TokenError};
use crate::vendor;

/// How long the renewal lock holds at most (the holder's fetch is bounded by the upstream
/// timeout; should it die, another replica takes over after this).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How often a replica waiting for another's renewal looks for it.
const POLL: Duration = Duration::from_millis(20);
/// How long a replica's first renewal waits for Redis to be reached (at start the connection
/// is still being made; a replica that starts while Redis is away fetches for itself after it).
const JOIN: Duration = Duration::from_secs(1);

/// Stores a newer generation only (a lock that lapsed never lets an older token win).
const STORE: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'sealed', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
";

/// Releases the lock only if this renewal still holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The shared token of one app.
pub struct TokenStore {
    cluster: Arc<Cluster>,
    bus: Arc<Bus>,
    app: String,
    key: String,
    lock: String,
    sealer: Sealer,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// The store of the app `app` with these credentials.
    pub fn new(
        cluster: &Arc<Cluster>,
        bus: &Arc<Bus>,
        app: &str,
        credentials: &Credentials,
    ) -> TokenStore {
        TokenStore {
            cluster: cluster.clone(),
            bus: bus.clone(),
            app: app.to_owned(),
            key: cluster.key(app, &["token"]),
            lock: cluster.key(app, &["token", "lock"]),
            sealer: Sealer::new(credentials),
        }
    }

    /// The fleet's token if it is valid and newer than `generation` (`None` too while Redis
    /// is unavailable).
    pub async fn newer_than(&self, generation: u64) -> Option<IssuedToken> {
        let (_, token) = self.load().await.ok()?;
        token.filter(|t| t.generation > generation && t.is_valid_at(vendor::now_millis()))
    }

    /// A token newer than `generation` for the fleet: another replica's if one appears, else
    /// one `fetch` under the app's lock, stored and announced.
    pub async fn renew<F, Fut>(&self, generation: u64, fetch: F) -> Result<IssuedToken, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IssuedToken, TokenError>>,
    {
        if generation == 0 && !self.cluster.is_up() {
            let mut up = self.cluster.up_changes();
            let _ = tokio::time::timeout(JOIN, up.wait_for(|up| *up)).await;
        }
        let holder = format!("{}:{:016x}", self.cluster.id(), rand::random::<u64>());
        let deadline = Instant::now() + LOCK_TTL + POLL;
        loop {
            match self.try_lock(&holder).await {
                Ok(true) => {
                    let renewed = self.renew_locked(generation, fetch).await;
                    self.unlock(&holder).await;
                    return renewed;
                }
                Ok(false) => {
                    if let Some(token) = self.newer_than(generation).await {
                        return Ok(token);
                    }
                }
                Err(_) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        // Redis is unavailable (or the lock holder vanished): fetch for this replica alone.
        self.cluster.fallback(Op::AppToken);
        let mut token = fetch().await?;
        token.generation = generation + 1;
        Ok(token)
    }

    async fn renew_locked<F, Fut>(
        &self,
        generation: u64,
        fetch: F,
    ) -> Result<IssuedToken, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IssuedToken, TokenError>>,
    {
        let (stored, token) = self.load().await.unwrap_or((0, None));
        let now = vendor::now_millis();
        if let Some(token) = token.filter(|t| t.generation > generation && t.is_valid_at(now)) {
            return Ok(token);
        }
        let mut token = fetch().await?;
        token.generation = stored.max(generation) + 1;
        match self.store(&token).await {
            Ok(()) => self.bus.token_renewed(&self.app, token.generation),
            Err(err) => {
                tracing::warn!(app = %self.app, error = %err, "cluster: app token not shared")
            }
        }
        Ok(token)
    }

    /// The stored generation and, when it opens with this app's credentials, the token.
    async fn load(&self) -> Result<(u64, Option<IssuedToken>), ClusterError> {
        let key = self.key.as_str();
        let (generation, sealed): (Option<u64>, Option<Vec<u8>>) = self
            .cluster
            .call(Op::AppToken, |mut connection| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("generation")
                    .arg("sealed")
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let generation = generation.unwrap_or(0);
        Ok((
            generation,
            sealed.and_then(|s| self.sealer.open(generation, &s)),
        ))
    }

    async fn store(&self, token: &IssuedToken) -> Result<(), ClusterError> {
        static SCRIPT: OnceLock<Script> = OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(STORE));
        let ttl_ms = match token.expires_unix_ms {
            Some(expires) => expires.saturating_sub(vendor::now_millis()).max(1),
            None => 0,
        };
        let args = [
            token.generation.to_string().into_bytes(),
            self.sealer.seal(token),
            ttl_ms.to_string().into_bytes(),
        ];
        self.cluster
            .script::<i64>(Op::AppToken, script, &[&self.key], &args)
            .await
            .map(drop)
    }

    async fn try_lock(&self, holder: &str) -> Result<bool, ClusterError> {
        let lock = self.lock.as_str();
        let taken: Option<String> = self
            .cluster
            .call(Op::AppToken, |mut connection| async move {
                redis::cmd("SET")
                    .arg(lock)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(taken.is_some())
    }

    async fn unlock(&self, holder: &str) {
        static SCRIPT: OnceLock<Script> = OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(UNLOCK));
        let released = self
            .cluster
            .script::<i64>(Op::AppToken, script, &[&self.lock], &[holder])
            .await;
        if let Err(err) = released {
            // It lapses by itself within LOCK_TTL.
            tracing::debug!(app = %self.app, error = %err, "cluster: token lock not released");
        }
    }
}
