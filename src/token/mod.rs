//! App tokens: how imgate obtains the vendor credential it injects into every forwarded call.
//!
//! One [`TokenSource`] per app holds the current token, shared by every request:
//! - a background task renews it at a fraction of its lifetime (with jitter), while requests keep
//!   using the current one, so no request waits for a renewal while a valid token exists;
//! - every renewal is single-flight (one mint or fetch however many requests need it);
//! - a failed renewal is retried with exponential backoff, and calls to the vendor's token
//!   endpoint are capped per minute (the vendor bans accounts that call it too often);
//! - a token the vendor rejects (401) is renewed once for all the requests that saw it rejected.
//!
//! Agora tokens are minted locally ([`agora`]); Easemob tokens come from the vendor's token
//! endpoint with the app's client credentials. In cluster mode an Easemob app's token is the
//! fleet's ([`crate::cluster::token_store`]): each renewal first looks for a newer one another
//! replica stored, and one replica fetches for all.

pub mod agora;
mod credentials;
pub mod seal;

pub use credentials::Credentials;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use prometheus::{Gauge, HistogramVec, IntCounter, IntCounterVec};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::cluster::token_store::TokenStore;
use crate::route::Endpoint;
use crate::upstream::{status_label, vendor_uri, Upstream, UpstreamError};
use crate::vendor;

/// A token that never expires (Easemob `expires_in` 0) is still renewed this often.
const NEVER_EXPIRES_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The longest life imgate believes a token has, whatever the vendor says: larger numbers
/// (up to `u64::MAX` seconds) would overflow the clock.
const LONGEST_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When and how often tokens are renewed.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPolicy {
    /// Renew once this fraction of the lifetime has passed (0 < f < 1).
    pub refresh_fraction: f64,
    /// Renew up to this fraction of the renewal point earlier, at random, so replicas spread out.
    pub refresh_jitter: f64,
    /// Most calls to the vendor's token endpoint per app and minute.
    pub max_fetches_per_minute: u32,
    /// First wait after a failed renewal; doubles with each further failure.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Most admin rotations per app and minute (fewer than `max_fetches_per_minute`).
    pub max_rotations_per_minute: u32,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            refresh_fraction: 0.5,
            refresh_jitter: 0.1,
            max_fetches_per_minute: 10,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_rotations_per_minute: 3,
        }
    }
}

/// The metrics of one app's tokens, label values resolved once.
#[derive(Clone)]
pub struct TokenMetrics {
    /// `imgate_token_refreshes_total{result="success"}`.
    pub success: IntCounter,
    /// `imgate_token_refreshes_total{result="error"}`.
    pub error: IntCounter,
    /// `imgate_token_expiry_timestamp_seconds`.
    pub expiry: Gauge,
    /// `imgate_upstream_requests_total`: an Easemob token fetch (endpoint `token`) and a
    /// readiness probe are vendor calls like any other.
    pub fetches: IntCounterVec,
    /// `imgate_upstream_request_duration_seconds`.
    pub durations: HistogramVec,
    /// The app's name (the `app` label of both).
    pub app: String,
}

impl TokenMetrics {
    fn called(&self, endpoint: Endpoint, status: &str, seconds: f64) {
        let app = self.app.as_str();
        self.fetches
            .with_label_values(&[app, endpoint.name(), status])
            .inc();
        self.durations
            .with_label_values(&[app, endpoint.name()])
            .observe(seconds);
    }
}

/// Why no app token is available.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The vendor's token endpoint could not be reached.
    #[error("the vendor token endpoint failed: {0}")]
    Upstream(#[from] UpstreamError),
    /// The token endpoint refused the credentials or answered something unusable.
    #[error("the vendor token endpoint answered {status}: {error}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The vendor's `error` name, or a description of what was wrong.
        error: String,
    },
    /// A token would not fit an HTTP header (never for well-formed vendor tokens).
    #[error("the vendor token is not a valid header value")]
    Unusable,
    /// The per-minute cap on token-endpoint calls is reached.
    #[error("token endpoint calls capped at {0} per minute")]
    Capped(u32),
    /// The last renewal failed and the next attempt is not due yet.
    #[error("renewal failed recently; next attempt in {0:?}")]
    BackingOff(Duration),
    /// Admin rotations of this app have used their budget for the minute.
    #[error("admin rotations capped at {limit} per minute; next one in {retry_after:?}")]
    RotationLimited {
        /// The budget.
        limit: u32,
        /// When the next rotation is allowed.
        retry_after: Duration,
    },
}

/// A token as obtained: from the vendor, minted, or from the fleet's shared store.
#[derive(Debug)]
pub struct IssuedToken {
    /// Counts the tokens the fleet obtained for the app (0 outside cluster mode).
    pub generation: u64,
    /// When it was issued, ms since the Unix epoch.
    pub issued_unix_ms: u64,
    /// When it expires, ms since the Unix epoch; `None` for a token without expiry.
    pub expires_unix_ms: Option<u64>,
    /// The token itself.
    pub token: SecretString,
}

impl IssuedToken {
    /// Whether it is still valid at `now_unix_ms`.
    pub fn is_valid_at(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms.is_none_or(|e| now_unix_ms < e)
    }
}

/// A token ready to inject.
pub struct AppToken {
    /// `Bearer <token>`, marked sensitive so that it is never logged by hyper or us.
    pub header: HeaderValue,
    /// When the token stops being valid.
    pub expires_at: Instant,
    refresh_at: Instant,
    /// Its generation (see [`IssuedToken::generation`]).
    pub generation: u64,
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppToken")
            .field("header", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish()
    }
}

impl AppToken {
    fn is_valid(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

/// Bookkeeping of renewals, guarded by the single-flight lock.
#[derive(Default)]
struct Renewals {
    /// Token-endpoint calls of the last minute.
    recent_fetches: VecDeque<Instant>,
    /// Admin rotations of the last minute.
    recent_rotations: VecDeque<Instant>,
    /// Consecutive failures.
    failures: u32,
    /// No attempt before this instant (backoff after a failure).
    not_before: Option<Instant>,
}

/// The current token of one app, renewed in the background and on demand.
pub struct TokenSource {
    app: String,
    credentials: Credentials,
    base: Uri,
    upstream: Arc<Upstream>,
    policy: TokenPolicy,
    metrics: TokenMetrics,
    current: ArcSwapOption<AppToken>,
    renewals: tokio::sync::Mutex<Renewals>,
    retired: AtomicBool,
    wake: Notify,
    /// The fleet's shared token, in cluster mode (Easemob apps only).
    shared: Option<TokenStore>,
    /// Why the last renewal failed, until one succeeds (for readiness).
    last_failure: std::sync::Mutex<Option<String>>,
    /// Set while the vendor refuses even renewed tokens of the app (401): its credentials are
    /// wrong at the vendor (an Agora certificate changed in the console), which no renewal can
    /// mend. The reason is in `refusal`.
    refused: AtomicBool,
    refusal: std::sync::Mutex<Option<String>>,
}

impl TokenSource {
    /// A source with no token yet; [`TokenSource::start`] obtains the first one.
    pub fn new(
        app: &str,
        credentials: Credentials,
        base: Uri,
        upstream: Arc<Upstream>,
        policy: TokenPolicy,
        metrics: TokenMetrics,
        shared: Option<TokenStore>,
    ) -> Arc<TokenSource> {
        Arc::new(TokenSource {
            app: app.to_owned(),
            credentials,
            base,
            upstream,
            policy,
            metrics,
            current: ArcSwapOption::empty(),
            renewals: tokio::sync::Mutex::new(Renewals::default()),
            retired: AtomicBool::new(false),
            wake: Notify::new(),
            shared,
            last_failure: std::sync::Mutex::new(None),
            refused: AtomicBool::new(false),
            refusal: std::sync::Mutex::new(None),
        })
    }

    /// The credentials this source uses.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Starts the background renewal task; it obtains the first token at once and runs until
    /// [`TokenSource::retire`].
    pub fn start(self: &Arc<Self>) {
        let source = self.clone();
        tokio::spawn(async move { source.renew_in_background().await });
    }

    /// Stops the background renewal (the app was removed or its credentials replaced).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether a valid token is held now.
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|t| t.is_valid(Instant::now()))
    }

    /// `Ok` while a valid token is held and the vendor takes it; else why not (the vendor's
    /// refusal, or the last renewal's failure).
    pub fn readiness(&self) -> Result<(), String> {
        if self.refused.load(Ordering::Acquire) {
            if let Some(refusal) = lock(&self.refusal).clone() {
                return Err(refusal);
            }
        }
        if self.is_ready() {
            return Ok(());
        }
        let failure = lock(&self.last_failure).clone();
        Err(failure.unwrap_or_else(|| "no app token obtained yet".to_owned()))
    }

    /// Time left until the current token expires: `None` when no token is held, zero when it
    /// has expired. A token the vendor issued without expiry reports about 100 years.
    pub fn expires_in(&self) -> Option<Duration> {
        self.current
            .load()
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(Instant::now()))
    }

    /// The token to use now. Waits only when no valid token is held.
    pub async fn token(&self) -> Result<Arc<AppToken>, TokenError> {
        if let Some(token) = self.current.load_full() {
            if token.is_valid(Instant::now()) {
                return Ok(token);
            }
        }
        let mut renewals = self.renewals.lock().await;
        // Someone else may have renewed it while this request waited.
        if let Some(token) = self.current.load_full() {
            if token.is_valid(Instant::now()) {
                return Ok(token);
            }
        }
        let held = self.generation();
        self.renew(&mut renewals, held, true).await
    }

    /// A replacement for `rejected`, which the vendor answered 401 to. However many requests
    /// saw the same token rejected, it is renewed once. When no replacement can be had, the
    /// rejected token is dropped (the app is not ready) and the background task keeps trying.
    pub async fn replace_rejected(
        &self,
        rejected: &Arc<AppToken>,
    ) -> Result<Arc<AppToken>, TokenError> {
        let mut renewals = self.renewals.lock().await;
        let current = self.current.load_full();
        if let Some(current) = &current {
            if !Arc::ptr_eq(current, rejected) && current.is_valid(Instant::now()) {
                return Ok(current.clone());
            }
        }
        let renewed = self.renew(&mut renewals, rejected.generation, true).await;
        if renewed.is_err() && current.is_some_and(|c| Arc::ptr_eq(&c, rejected)) {
            self.current.store(None);
            self.wake.notify_one();
        }
        renewed
    }

    /// Notes the vendor's answer to a call made with the app's token. A 401 to a `renewed`
    /// token (the replacement of one it refused) means the vendor refuses the app's
    /// credentials themselves: the app is not ready, and the background task probes the vendor
    /// until it takes the token again. Any answer past the vendor's authentication (not 401,
    /// 429 or 5xx) shows that it does.
    pub fn note_answer(&self, status: StatusCode, body: &[u8], renewed: bool) {
        if status == StatusCode::UNAUTHORIZED {
            if renewed {
                let error = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "no error name".to_owned());
                let why = format!(
                    "the vendor refuses even a renewed app token (401 {error}): are the app's \
                     credentials the vendor's?"
                );
                *lock(&self.refusal) = Some(why);
                if !self.refused.swap(true, Ordering::AcqRel) {
                    tracing::warn!(app = %self.app, error = %error, "the vendor refuses renewed app tokens");
                    self.wake.notify_one();
                }
            }
        } else if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
            // A load, not a lock, for every answer while all is well.
            && self.refused.load(Ordering::Acquire)
            && self.refused.swap(false, Ordering::AcqRel)
        {
            tracing::info!(app = %self.app, "the vendor takes the app token again");
        }
    }

    /// Obtains a new token now, whatever the state of the current one, within the app's budget
    /// of admin rotations (which leaves the rest of the token endpoint's cap to renewals).
    pub async fn rotate(&self) -> Result<(), TokenError> {
        let mut renewals = self.renewals.lock().await;
        let now = Instant::now();
        forget_older_than_a_minute(&mut renewals.recent_rotations, now);
        let limit = self.policy.max_rotations_per_minute;
        if renewals.recent_rotations.len() >= limit as usize {
            let retry_after = renewals
                .recent_rotations
                .front()
                .map_or(Duration::ZERO, |t| {
                    (*t + MINUTE).saturating_duration_since(now)
                });
            return Err(TokenError::RotationLimited { limit, retry_after });
        }
        renewals.recent_rotations.push_back(now);
        let held = self.generation();
        self.renew(&mut renewals, held, false).await.map(drop)
    }

    /// Takes the fleet's token if it is newer than the one held (another replica renewed it).
    pub async fn adopt_shared(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut renewals = self.renewals.lock().await;
        if let Some(token) = shared.newer_than(self.generation()).await {
            if let Err(err) = self.adopt(&mut renewals, &token) {
                tracing::warn!(app = %self.app, error = %err, "the fleet's app token is unusable");
            }
        }
    }

    /// The generation of the token held (0 without one).
    fn generation(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |t| t.generation)
    }

    /// Makes the fleet's `token` the current one (no fetch was made: backoff ends).
    fn adopt(
        &self,
        renewals: &mut Renewals,
        token: &IssuedToken,
    ) -> Result<Arc<AppToken>, TokenError> {
        let installed = self.install(token)?;
        renewals.failures = 0;
        renewals.not_before = None;
        Ok(installed)
    }

    /// Makes `issued` the current token.
    fn install(&self, issued: &IssuedToken) -> Result<Arc<AppToken>, TokenError> {
        let token = Arc::new(self.app_token(issued)?);
        self.current.store(Some(token.clone()));
        let expiry = match issued.expires_unix_ms {
            Some(ms) => ms as f64 / 1000.0,
            None => unix_seconds(token.expires_at),
        };
        self.metrics.expiry.set(expiry);
        Ok(token)
    }

    async fn renew_in_background(self: Arc<Self>) {
        let mut probes = 0;
        while !self.retired.load(Ordering::Acquire) {
            let refused = self.refused.load(Ordering::Acquire);
            let wait = if refused {
                self.backoff(probes)
            } else {
                probes = 0;
                self.next_renewal()
                    .await
                    .saturating_duration_since(Instant::now())
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => continue,
            }
            if refused {
                // Without it an app no load balancer sends traffic to (it is not ready) would
                // never be found ready again.
                probes += 1;
                self.probe().await;
                continue;
            }
            let mut renewals = self.renewals.lock().await;
            let due = self
                .current
                .load()
                .as_ref()
                .is_none_or(|t| Instant::now() >= t.refresh_at);
            if due && !self.retired.load(Ordering::Acquire) {
                let held = self.generation();
                if let Err(err) = self.renew(&mut renewals, held, true).await {
                    tracing::warn!(app = %self.app, error = %err, "app token renewal failed");
                }
            }
        }
    }

    /// Asks the vendor whether it takes the app's token now, with one harmless read: the
    /// offline count of a user that need not exist (any answer past authentication will do).
    /// One call per backoff step, only while the vendor refuses the app's tokens.
    async fn probe(&self) {
        let Ok(token) = self.token().await else {
            return;
        };
        let path = format!(
            "{}/users/{PROBE_USER}/offline_msg_count",
            self.credentials.prefix()
        );
        let Ok(uri) = vendor_uri(&self.base, &path) else {
            return;
        };
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, token.header.clone())
            .body(Full::new(Bytes::new()));
        let Ok(request) = request else {
            return;
        };
        let started = Instant::now();
        let result = self.upstream.send(request).await;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .called(Endpoint::OfflineMsgCount, status_label(&result), seconds);
        match result {
            Ok(response) => self.note_answer(response.status, &response.body, true),
            Err(err) => tracing::debug!(app = %self.app, error = %err, "readiness probe failed"),
        }
    }

    /// The wait before retry number `attempt + 1`: `retry_initial`, doubling up to `retry_max`.
    fn backoff(&self, attempt: u32) -> Duration {
        self.policy
            .retry_initial
            .saturating_mul(1 << attempt.min(15))
            .min(self.policy.retry_max)
    }

    async fn next_renewal(&self) -> Instant {
        let renewals = self.renewals.lock().await;
        let scheduled = self
            .current
            .load()
            .as_ref()
            .map_or_else(Instant::now, |t| t.refresh_at);
        let not_before = renewals.not_before.unwrap_or(scheduled);
        // After a failure, retry at the backoff; but never later than the schedule requires.
        scheduled.max(not_before)
    }

    /// One renewal to a token newer than generation `newer_than`, under the single-flight lock:
    /// in cluster mode the fleet's token when it is newer (if `adopt`), else one fetch for the
    /// fleet; backoff and the per-minute cap apply to fetches.
    async fn renew(
        &self,
        renewals: &mut Renewals,
        newer_than: u64,
        adopt: bool,
    ) -> Result<Arc<AppToken>, TokenError> {
        if let Some(shared) = self.shared.as_ref().filter(|_| adopt) {
            if let Some(token) = shared.newer_than(newer_than).await {
                return self.adopt(renewals, &token);
            }
        }
        let now = Instant::now();
        if let Some(not_before) = renewals.not_before.filter(|t| *t > now) {
            return Err(TokenError::BackingOff(not_before - now));
        }
        if let Credentials::Easemob { .. } = self.credentials {
            forget_older_than_a_minute(&mut renewals.recent_fetches, now);
            if renewals.recent_fetches.len() >= self.policy.max_fetches_per_minute as usize {
                // No attempt until the oldest call of the window leaves it.
                renewals.not_before = renewals.recent_fetches.front().map(|t| *t + MINUTE);
                self.metrics.error.inc();
                return Err(TokenError::Capped(self.policy.max_fetches_per_minute));
            }
            renewals.recent_fetches.push_back(now);
        }
        let obtained = match &self.shared {
            Some(shared) => shared.renew(newer_than, || self.obtain()).await,
            None => self.obtain().await,
        };
        match obtained.and_then(|issued| self.install(&issued)) {
            Ok(token) => {
                renewals.failures = 0;
                renewals.not_before = None;
                *lock(&self.last_failure) = None;
                self.metrics.success.inc();
                Ok(token)
            }
            Err(err) => {
                renewals.failures += 1;
                let backoff = self.backoff(renewals.failures - 1);
                renewals.not_before = Some(Instant::now() + backoff);
                self.metrics.error.inc();
                *lock(&self.last_failure) = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// A new token: minted (Agora) or fetched from the vendor (Easemob).
    async fn obtain(&self) -> Result<IssuedToken, TokenError> {
        match &self.credentials {
            Credentials::Agora {
                app_id,
                certificate,
                expire_secs,
            } => {
                // The token's clock is whole seconds: count its life from the start of the
                // second it names, as the vendor does.
                let issue_ts = u32::try_from(vendor::now_secs()).unwrap_or(u32::MAX);
                let spec =
                    agora::TokenSpec::app(app_id, issue_ts, *expire_secs, agora::random_salt());
                let issued_unix_ms = u64::from(issue_ts) * 1000;
                Ok(IssuedToken {
                    generation: 0,
                    issued_unix_ms,
                    expires_unix_ms: Some(issued_unix_ms + u64::from(*expire_secs) * 1000),
                    token: SecretString::from(spec.build(certificate.expose_secret())),
                })
            }
            Credentials::Easemob {
                org,
                app,
                client_id,
                client_secret,
                ttl_secs,
            } => {
                self.fetch_easemob(org, app, client_id, client_secret, *ttl_secs)
                    .await
            }
        }
    }

    async fn fetch_easemob(
        &self,
        org: &str,
        app: &str,
        client_id: &str,
        client_secret: &SecretString,
        ttl_secs: Option<u64>,
    ) -> Result<IssuedToken, TokenError> {
        let mut body = json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret.expose_secret(),
        });
        if let Some(ttl) = ttl_secs {
            body["ttl"] = ttl.into();
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(vendor_uri(&self.base, &format!("/{org}/{app}/token"))?)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| TokenError::Unusable)?;
        let requested_at = Instant::now();
        let requested_unix_ms = vendor::now_millis();
        let result = self.upstream.send(request).await;
        let seconds = requested_at.elapsed().as_secs_f64();
        self.metrics
            .called(Endpoint::Token, status_label(&result), seconds);
        let response = result?;
        let parsed: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let rejected = |error: &str| TokenError::Rejected {
            status: response.status.as_u16(),
            error: error.to_owned(),
        };
        if !response.status.is_success() {
            return Err(rejected(
                parsed["error"].as_str().unwrap_or("no error name"),
            ));
        }
        let token = parsed["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| rejected("no access_token in the answer"))?;
        let expires_in = vendor::lenient_u64(&parsed["expires_in"])
            .ok_or_else(|| rejected("no expires_in in the answer"))?;
        // expires_in 0 means the token never expires. Its life is counted from the request, so
        // imgate never believes a token valid for longer than the vendor does.
        Ok(IssuedToken {
            generation: 0,
            issued_unix_ms: requested_unix_ms,
            expires_unix_ms: (expires_in > 0)
                .then(|| requested_unix_ms.saturating_add(expires_in.saturating_mul(1000))),
            token: SecretString::from(token.to_owned()),
        })
    }

    /// The token to inject, renewed at a jittered fraction of the life it has left.
    fn app_token(&self, issued: &IssuedToken) -> Result<AppToken, TokenError> {
        let mut header = HeaderValue::try_from(format!("Bearer {}", issued.token.expose_secret()))
            .map_err(|_| TokenError::Unusable)?;
        header.set_sensitive(true);
        let now = Instant::now();
        let (expires_at, refresh_at) = match issued.expires_unix_ms {
            Some(expires) => {
                // The life left now: an Agora token minted late in a second has lost the part
                // of that second already (its clock counts whole seconds). A vendor's number is
                // believed only up to LONGEST_LIFETIME, so the clock arithmetic cannot overflow.
                let left = Duration::from_millis(expires.saturating_sub(vendor::now_millis()))
                    .min(LONGEST_LIFETIME);
                let jitter = 1.0 - self.policy.refresh_jitter * rand::thread_rng().gen::<f64>();
                (
                    now + left,
                    now + left.mul_f64(self.policy.refresh_fraction * jitter),
                )
            }
            None => (now + LONGEST_LIFETIME, now + NEVER_EXPIRES_REFRESH),
        };
        Ok(AppToken {
            header,
            expires_at,
            refresh_at,
            generation: issued.generation,
        })
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// The user whose offline count a readiness probe reads (it need not exist: a 404 past the
/// vendor's authentication shows the token is taken).
const PROBE_USER: &str = "imgate-readiness-probe";

/// Locks a mutex of plain data, which a panic elsewhere cannot leave inconsistent.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops the instants of `window` that are a minute old or older (oldest first).
fn forget_older_than_a_minute(window: &mut VecDeque<Instant>, now: Instant) {
    let minute_ago = now.checked_sub(MINUTE);
    while window
        .front()
        .is_some_and(|t| minute_ago.is_some_and(|m| *t <= m))
    {
        window.pop_front();
    }
}

fn unix_seconds(at: Instant) -> f64 {
    let now_unix = vendor::now_millis() as f64 / 1000.0;
    let now = Instant::now();
    if at >= now {
        now_unix + (at - now).as_secs_f64()
    } else {
        now_unix - (now - at).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamSettings;

    fn source(credentials: Credentials, policy: TokenPolicy) -> Arc<TokenSource> {
        let upstream = Arc::new(Upstream::new(&UpstreamSettings {
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            forward_other: true,
            tls: Arc::new(crate::tls::client_config(None).unwrap()),
        }));
        let metrics = TokenMetrics {
            success: IntCounter::new("s", "s").unwrap(),
            error: IntCounter::new("e", "e").unwrap(),
            expiry: Gauge::new("x", "x").unwrap(),
            fetches: IntCounterVec::new(
                prometheus::Opts::new("f", "f"),
                &["app", "endpoint", "status"],
            )
            .unwrap(),
            durations: HistogramVec::new(
                prometheus::HistogramOpts::new("d", "d"),
                &["app", "endpoint"],
            )
            .unwrap(),
            app: "t".into(),
        };
        // Port 9 (discard) on loopback: nothing listens, so fetches fail fast.
        TokenSource::new(
            "t",
            credentials,
            "http://127.0.0.1:9".parse().unwrap(),
            upstream,
            policy,
            metrics,
            None,
        )
    }

    fn agora() -> Credentials {
        Credentials::Agora {
            app_id: "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6".into(),
            certificate: SecretString::from("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
            expire_secs: 100,
        }
    }

    fn easemob() -> Credentials {
        Credentials::Easemob {
            org: "o".into(),
            app: "a".into(),
            client_id: "id".into(),
            client_secret: SecretString::from("secret"),
            ttl_secs: None,
        }
    }

    #[tokio::test]
    async fn tokens_are_renewed_within_the_jittered_fraction_and_never_shown() {
        let s = source(agora(), TokenPolicy::default());
        let now = vendor::now_millis();
        let t = s
            .app_token(&IssuedToken {
                generation: 3,
                issued_unix_ms: now,
                expires_unix_ms: Some(now + 100_000),
                token: SecretString::from("secret-token"),
            })
            .unwrap();
        assert_eq!(t.generation, 3);
        let after = t.refresh_at.duration_since(Instant::now());
        assert!(
            after <= Duration::from_secs(50) && after >= Duration::from_secs(44),
            "{after:?}"
        );
        assert!(t.header.is_sensitive());
        assert!(!format!("{t:?}").contains("secret-token"));
    }

    #[tokio::test]
    async fn a_vendor_lifetime_that_overflows_the_clock_is_believed_only_so_far() {
        let s = source(agora(), TokenPolicy::default());
        let t = s
            .app_token(&IssuedToken {
                generation: 0,
                issued_unix_ms: vendor::now_millis(),
                expires_unix_ms: Some(u64::MAX),
                token: SecretString::from("t"),
            })
            .unwrap();
        assert!(t.expires_at > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(t.refresh_at < t.expires_at);
    }

    #[tokio::test]
    async fn agora_tokens_are_minted_without_the_network_and_shared() {
        let s = source(agora(), TokenPolicy::default());
        let first = s.token().await.unwrap();
        let second = s.token().await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(s.is_ready());
        assert_eq!(s.metrics.success.get(), 1);
    }

    #[tokio::test]
    async fn a_rejected_token_is_replaced_once_for_all_who_saw_it() {
        let s = source(agora(), TokenPolicy::default());
        let rejected = s.token().await.unwrap();
        let a = s.replace_rejected(&rejected).await.unwrap();
        let b = s.replace_rejected(&rejected).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &rejected));
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second 401 reuses the first renewal"
        );
        assert_eq!(s.metrics.success.get(), 2);
    }

    #[tokio::test]
    async fn a_refused_renewal_makes_the_app_unready_until_an_answer_past_auth() {
        let s = source(agora(), TokenPolicy::default());
        s.token().await.unwrap();
        let refused = br#"{"error":"auth_bad_access_token"}"#;
        s.note_answer(StatusCode::UNAUTHORIZED, refused, false);
        assert!(s.readiness().is_ok(), "a first 401 is renewed, not judged");
        s.note_answer(StatusCode::UNAUTHORIZED, refused, true);
        let reason = s.readiness().unwrap_err();
        assert!(reason.contains("401 auth_bad_access_token"), "{reason}");
        for unknown in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            s.note_answer(unknown, b"", false);
            assert!(
                s.readiness().is_err(),
                "{unknown} says nothing of the token"
            );
        }
        s.note_answer(StatusCode::NOT_FOUND, b"", false);
        assert!(s.readiness().is_ok());
    }

    #[tokio::test]
    async fn failed_fetches_back_off_exponentially() {
        let policy = TokenPolicy {
            retry_initial: Duration::from_secs(5),
            ..TokenPolicy::default()
        };
        let s = source(easemob(), policy);
        assert!(matches!(s.token().await, Err(TokenError::Upstream(_))));
        assert!(
            matches!(s.token().await, Err(TokenError::BackingOff(d)) if d > Duration::from_secs(4))
        );
        assert_eq!(s.metrics.error.get(), 1, "no second call while backing off");
        assert!(!s.is_ready());
    }

    #[tokio::test]
    async fn token_endpoint_calls_are_capped_per_minute() {
        let policy = TokenPolicy {
            max_fetches_per_minute: 2,
            retry_initial: Duration::ZERO,
            ..TokenPolicy::default()
        };
        let s = source(easemob(), policy);
        for _ in 0..2 {
            assert!(matches!(s.token().await, Err(TokenError::Upstream(_))));
        }
        assert!(matches!(s.token().await, Err(TokenError::Capped(2))));
        assert!(
            matches!(s.token().await, Err(TokenError::BackingOff(d)) if d > Duration::from_secs(50))
        );
    }
}
