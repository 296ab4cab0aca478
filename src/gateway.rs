//! The gateway's shared state ([`Gateway`]); [`crate::server::run`] serves it (the state knows
//! no request handlers).
//!
//! What a reload may change (apps, credentials, clients, limits) lives in a [`Snapshot`] that is
//! swapped atomically: each request works with the snapshot it started with, so a reload never
//! fails an in-flight request, and new app tokens are obtained before the swap.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use prometheus::{IntCounter, Registry};
use secrecy::ExposeSecret;

use crate::auth::{ClientTokenKey, Clients, FailureLimit};
use crate::cache::{Cache, CacheStatus, Kind};
use crate::cluster::bus::{Bus, TokenNotice};
use crate::cluster::quota::SharedQuota;
use crate::cluster::token_store::TokenStore;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{vendor_identity, ConfigErrors, RawConfig, Settings};
use crate::limit::{Permits, VendorQuota, WaitPolicy};
use crate::logging::AccessLog;
use crate::metrics::Metrics;
use crate::route::{AppRef, Endpoint};
use crate::server::{ConnLimits, TlsConfig};
use crate::shards::Shards;
use crate::token::{Credentials, TokenError, TokenPolicy, TokenSource};
use crate::upstream::Upstream;

/// One fronted vendor app.
pub struct App {
    /// imgate's name for it (the `app` label).
    pub name: String,
    /// Its vendor identity (`app-id/{id}` or `{org}/{app}`): what its cache entries are keyed
    /// by, so that no reload can make one app's entries another's.
    pub key: String,
    /// Its path prefix as the vendor knows it (`/app-id/{id}` as configured, or
    /// `/{org}/{app}`), percent-encoded: what every forwarded path starts with.
    pub prefix: String,
    /// Unique per running instance of the app: a reload that replaces it starts anew (its
    /// presence batches end with it).
    pub instance: u64,
    /// Vendor base URL (scheme + authority).
    pub base: Uri,
    /// Its app token.
    pub tokens: Arc<TokenSource>,
    policy: TokenPolicy,
    /// The vendor's quota imgate may use, per endpoint ([`Endpoint::index`]).
    quota_limits: [u32; Endpoint::ALL.len()],
    vendor_wait: WaitPolicy,
    quotas: Vec<VendorQuota>,
    throttled: Vec<IntCounter>,
    /// Cache results of this app per endpoint ([`Endpoint::index`]) and [`CacheStatus`]: the
    /// status page's per-app hit ratio (the metric is labelled by endpoint only, see
    /// docs/metrics.md); per thread, as every cache hit writes it.
    cache_results: Shards<[[AtomicU64; 4]; Endpoint::ALL.len()]>,
}

impl App {
    /// Whether the path prefix `which` addresses this app.
    fn is(&self, which: AppRef<'_>) -> bool {
        match (self.tokens.credentials(), which) {
            // Agora App IDs are hex; callers may write them in either case.
            (Credentials::Agora { app_id, .. }, AppRef::Agora { app_id: asked }) => {
                app_id.eq_ignore_ascii_case(asked)
            }
            (Credentials::Easemob { org, app, .. }, AppRef::Easemob { org: o, app: a }) => {
                org == o && app == a
            }
            _ => false,
        }
    }

    /// The vendor's quota for calls to `endpoint`.
    pub fn quota(&self, endpoint: Endpoint) -> &VendorQuota {
        &self.quotas[endpoint.index()]
    }

    /// Counts one cached read of `endpoint` answered with `status`.
    pub fn record_cache(&self, endpoint: Endpoint, status: CacheStatus) {
        self.cache_results.local()[endpoint.index()][status as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Cached reads of `endpoint` so far: hit, miss, stale, coalesced.
    pub fn cache_results(&self, endpoint: Endpoint) -> [u64; 4] {
        let mut sums = [0; 4];
        for shard in self.cache_results.iter() {
            for (sum, n) in sums.iter_mut().zip(&shard[endpoint.index()]) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        sums
    }

    /// `imgate_vendor_throttled_total` of this app and `endpoint`.
    pub fn throttled(&self, endpoint: Endpoint) -> &IntCounter {
        &self.throttled[endpoint.index()]
    }

    /// The vendor's quota for `endpoint` that imgate may use, calls per second.
    pub fn quota_limit(&self, endpoint: Endpoint) -> u32 {
        self.quota_limits[endpoint.index()]
    }

    /// Whether this app already runs exactly as `settings` describe (so a reload keeps it, its
    /// token and its quota state).
    fn matches(
        &self,
        settings: &crate::config::AppSettings,
        policy: &TokenPolicy,
        wait: &WaitPolicy,
    ) -> bool {
        self.name == settings.name
            && self.base == settings.upstream
            && &self.policy == policy
            && self.quota_limits == settings.vendor_quotas
            && &self.vendor_wait == wait
            && self.tokens.credentials().same_as(&settings.credentials)
    }
}

/// Everything a reload may change.
pub struct Snapshot {
    /// The apps, in configuration order.
    pub apps: Vec<Arc<App>>,
    /// The callers.
    pub clients: Clients,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// SHA-256 of the admin API key.
    pub admin_key_sha256: Option<[u8; 32]>,
    /// Signs and checks client tokens.
    pub client_tokens: Arc<ClientTokenKey>,
    /// Lifetime of issued client tokens.
    pub client_token_ttl: Duration,
}

impl Snapshot {
    /// The app a path prefix addresses, with its index.
    pub fn app(&self, which: AppRef<'_>) -> Option<(usize, &Arc<App>)> {
        self.apps.iter().enumerate().find(|(_, app)| app.is(which))
    }

    /// The app named `name`.
    pub fn app_named(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was started without a configuration file.
    #[error("no configuration file to reload")]
    NoFile,
    /// The new file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A new or changed app could not obtain a token with its new credentials.
    #[error("app {app}: no token with the new credentials: {source}")]
    Token {
        /// The app.
        app: String,
        /// Why.
        source: TokenError,
    },
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Its cluster handle could not be made.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// The gateway: fixed parts (listeners' limits, the vendor client, metrics) and the current
/// [`Snapshot`].
pub struct Gateway {
    /// Connection guards of both listeners (fixed at start).
    pub conn_limits: ConnLimits,
    /// TLS of the API listener when it serves HTTPS (certificate and key re-read on reload).
    pub api_tls: Option<TlsConfig>,
    /// How long the listeners keep accepting after a shutdown signal (fixed at start).
    pub shutdown_delay: Duration,
    draining: AtomicBool,
    /// The pooled vendor client.
    pub upstream: Arc<Upstream>,
    /// The metrics.
    pub metrics: Metrics,
    /// The read cache (its policies are fixed at start).
    pub cache: Arc<Cache>,
    /// When the gateway was built (the status page's uptime).
    pub started: Instant,
    /// The Redis shared with other replicas; `None`: one process on its own (fixed at start).
    pub cluster: Option<Arc<Cluster>>,
    /// Wrong client credentials per source address at the token endpoint (fixed at start).
    pub auth_failures: FailureLimit,
    /// The last [`App::instance`] given out.
    instances: AtomicU64,
    /// Invalidations and token notices to and from the other replicas (with `cluster`).
    bus: Option<Arc<Bus>>,
    config_path: Option<PathBuf>,
    current: ArcSwap<Snapshot>,
    reloading: tokio::sync::Mutex<()>,
    /// The access log's writer, once the process has one ([`Gateway::log_access_to`]).
    access_log: OnceLock<AccessLog>,
}

impl Gateway {
    /// Builds the gateway and starts obtaining app tokens (call within a Tokio runtime).
    /// `config_path` is the file a reload re-reads; its metrics go into `registry`.
    pub fn new(
        settings: Settings,
        registry: Registry,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Gateway>, StartError> {
        let cluster = settings
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, &registry))
            .transpose()?;
        let metrics = Metrics::new(registry)?;
        let upstream = Arc::new(Upstream::new(&settings.upstream));
        let conn_limits = settings.conn_limits.clone();
        let api_tls = settings.api_tls.clone().map(|c| Arc::new(ArcSwap::new(c)));
        let cache = Arc::new(Cache::new(settings.cache.clone()));
        let gateway = Arc::new_cyclic(|gateway| Gateway {
            bus: cluster
                .as_ref()
                .map(|c| Bus::start(c, &cache, token_notices(gateway.clone()))),
            conn_limits,
            api_tls,
            shutdown_delay: settings.shutdown_delay,
            draining: AtomicBool::new(false),
            upstream,
            metrics,
            cache,
            started: Instant::now(),
            cluster,
            auth_failures: FailureLimit::new(settings.client_token_failures),
            instances: AtomicU64::new(0),
            config_path,
            current: ArcSwap::from_pointee(Snapshot {
                apps: Vec::new(),
                clients: Clients::default(),
                max_body_bytes: 0,
                admin_key_sha256: None,
                client_tokens: Arc::new(ClientTokenKey::new(None, [])),
                client_token_ttl: Duration::ZERO,
            }),
            reloading: tokio::sync::Mutex::new(()),
            access_log: OnceLock::new(),
        });
        if let Some(cluster) = &gateway.cluster {
            cluster.start();
        }
        let (snapshot, _) = gateway.build_snapshot(settings, &[]);
        gateway.current.store(Arc::new(snapshot));
        Ok(gateway)
    }

    /// Writes the access log by `log` from now on (once, at start).
    pub fn log_access_to(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The access log's writer, if any.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.get()
    }

    /// Whether shutdown has begun (readiness fails from then on).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Shutdown has begun: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The configuration in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The configuration in force now, for one request: held without touching the snapshot's
    /// reference count, which every core would otherwise write on every request.
    pub fn snapshot_for_request(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Re-reads the configuration file and every secret, and switches to it once every new or
    /// changed app holds a token. On any error the running configuration stays.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        self.metrics.config_reload(result.is_ok());
        result
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let settings = RawConfig::load(path)
            .map_err(ConfigErrors::from)?
            .validate()?;
        for warning in &settings.warnings {
            tracing::warn!(%warning, "configuration");
        }
        let old = self.snapshot();
        match (&self.api_tls, &settings.api_tls) {
            (Some(running), Some(new)) => running.store(new.clone()),
            (None, None) => {}
            _ => tracing::warn!("turning TLS of the API listener on or off needs a restart"),
        }
        let (snapshot, fresh) = self.build_snapshot(settings, &old.apps);
        // New tokens before the switch: a request never meets an app without one.
        for app in &fresh {
            if let Err(source) = app.tokens.token().await {
                fresh.iter().for_each(|a| a.tokens.retire());
                return Err(ReloadError::Token {
                    app: app.name.clone(),
                    source,
                });
            }
        }
        self.current.store(Arc::new(snapshot));
        let current = self.snapshot();
        for app in &old.apps {
            if !current.apps.iter().any(|a| Arc::ptr_eq(a, app)) {
                app.tokens.retire();
            }
        }
        // Entries of vendor apps no longer configured are dropped, not kept for a later reload.
        let gone: Vec<&str> = old
            .apps
            .iter()
            .filter(|o| !current.apps.iter().any(|a| a.key == o.key))
            .map(|o| o.key.as_str())
            .collect();
        if !gone.is_empty() {
            for kind in Kind::ALL {
                self.cache.purge_apps(kind, &gone).await;
            }
        }
        let now = current;
        let removed_apps = old
            .apps
            .iter()
            .filter(|a| now.app_named(&a.name).is_none())
            .map(|a| a.name.as_str());
        let (changed_clients, removed_clients) = old.clients.changes(&now.clients);
        tracing::info!(
            target: crate::logging::LISTS_TARGET,
            apps_changed = %json_list(fresh.iter().map(|a| a.name.as_str())),
            apps_removed = %json_list(removed_apps),
            clients_changed = %json_list(changed_clients.into_iter()),
            clients_removed = %json_list(removed_clients.into_iter()),
            "configuration reloaded"
        );
        Ok(())
    }

    /// The vendor quotas of the app `name`, per endpoint: shared by the fleet in cluster mode.
    fn vendor_quotas(
        &self,
        name: &str,
        quotas: &[u32; Endpoint::ALL.len()],
        wait: WaitPolicy,
    ) -> Vec<VendorQuota> {
        Endpoint::ALL
            .iter()
            .map(|endpoint| {
                let quota = quotas[endpoint.index()];
                match &self.cluster {
                    Some(cluster) => VendorQuota::with(
                        Permits::Shared(SharedQuota::new(cluster, name, *endpoint, quota)),
                        wait,
                    ),
                    None => VendorQuota::new(quota, wait),
                }
            })
            .collect()
    }

    /// A snapshot of `settings`, keeping the apps of `running` that did not change; also
    /// returns the apps that are new (their token sources already started).
    fn build_snapshot(
        &self,
        settings: Settings,
        running: &[Arc<App>],
    ) -> (Snapshot, Vec<Arc<App>>) {
        let mut fresh = Vec::new();
        let policy = settings.token_policy;
        let apps: Vec<Arc<App>> = settings
            .apps
            .into_iter()
            .map(|app| {
                if let Some(kept) = running
                    .iter()
                    .find(|r| r.matches(&app, &policy, &settings.vendor_wait))
                {
                    return kept.clone();
                }
                let key = vendor_identity(&app.credentials);
                let prefix = app.credentials.prefix();
                let shared = match (&self.cluster, &self.bus, &app.credentials) {
                    (Some(cluster), Some(bus), Credentials::Easemob { .. }) => {
                        Some(TokenStore::new(cluster, bus, &app.name, &app.credentials))
                    }
                    _ => None,
                };
                let tokens = TokenSource::new(
                    &app.name,
                    app.credentials,
                    app.upstream.clone(),
                    self.upstream.clone(),
                    policy.clone(),
                    self.metrics.token(&app.name),
                    shared,
                );
                tokens.start();
                let throttled = Endpoint::ALL
                    .iter()
                    .map(|e| self.metrics.vendor_throttled(&app.name, e.name()))
                    .collect();
                let new = Arc::new(App {
                    quotas: self.vendor_quotas(&app.name, &app.vendor_quotas, settings.vendor_wait),
                    key,
                    prefix,
                    instance: self.instances.fetch_add(1, Ordering::Relaxed) + 1,
                    name: app.name,
                    base: app.upstream,
                    tokens,
                    policy: policy.clone(),
                    quota_limits: app.vendor_quotas,
                    vendor_wait: settings.vendor_wait,
                    throttled,
                    cache_results: Shards::new(|| {
                        std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                    }),
                });
                fresh.push(new.clone());
                new
            })
            .collect();
        let clients = Clients::new(
            &settings.clients,
            |name| apps.iter().position(|a| a.name == name),
            self.cluster.as_ref(),
        );
        let client_tokens = Arc::new(ClientTokenKey::new(
            settings.client_token_key.as_ref(),
            apps.iter()
                .map(|app| (app.name.as_str(), app.tokens.credentials())),
        ));
        let snapshot = Snapshot {
            apps,
            clients,
            max_body_bytes: settings.max_body_bytes,
            admin_key_sha256: settings.admin_key.as_ref().map(|k| {
                <sha2::Sha256 as sha2::Digest>::digest(k.expose_secret().as_bytes()).into()
            }),
            client_tokens,
            client_token_ttl: settings.client_token_ttl,
        };
        (snapshot, fresh)
    }
}

/// Names as a JSON array, for log fields (JSON logs carry it as an array).
fn json_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    serde_json::Value::from(names.collect::<Vec<_>>()).to_string()
}

/// What the bus calls when another replica stored a new app token: the app's source takes it.
fn token_notices(gateway: Weak<Gateway>) -> TokenNotice {
    Box::new(move |app, _generation| {
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        if let Some(app) = gateway.snapshot().app_named(app).cloned() {
            tokio::spawn(async move { app.tokens.adopt_shared().await });
        }
    })
}
