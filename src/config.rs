//! Configuration: raw TOML ([`RawConfig`], every field optional where a default makes sense)
//! → [`RawConfig::validate`] → typed [`Settings`]. Secrets may be given as `${ENV_VAR}` or
//! `file:/path`; they are resolved during validation and held as [`SecretString`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Uri;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{CachePolicy, CacheSettings};
use crate::limit::{LimitPolicy, WaitPolicy};
use crate::route::Endpoint;
use crate::server::ConnLimits;
use crate::token::TokenPolicy;
use crate::vendor::{self, VendorKind};

/// A configuration problem, naming the field at fault (`apps[1].app_id: …`).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, or the file for syntax errors.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The configuration file as written (see `config/imgate.example.toml`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// How imgate talks to the vendor.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Admin API settings.
    #[serde(default)]
    pub admin: RawAdmin,
    /// App-token renewal policy.
    #[serde(default)]
    pub tokens: RawTokens,
    /// Client tokens issued by imgate's SDK-compatible token endpoint.
    #[serde(default)]
    pub client_tokens: RawClientTokens,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// The read cache.
    #[serde(default)]
    pub cache: RawCache,
    /// Rate limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// The vendor apps imgate fronts.
    #[serde(default)]
    pub apps: Vec<RawApp>,
    /// The backend services allowed to call imgate.
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Address of the API listener.
    pub listen: String,
    /// Address of the admin listener (`/healthz`, `/metrics`).
    pub admin_listen: String,
    /// Largest request body accepted, in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Concurrent connections per listener.
    pub max_connections: usize,
    /// Time a request has to send its headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time in-flight requests get to finish on shutdown, in milliseconds.
    pub drain_timeout_ms: u64,
    /// On SIGTERM, readiness fails at once but the listeners keep accepting for this long, so
    /// that load balancers notice first, in milliseconds.
    pub shutdown_delay_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 64 * 1024,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            shutdown_delay_ms: 5_000,
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    /// TCP (and TLS) connect timeout toward the vendor, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Whole-call timeout toward the vendor (→ 504), in milliseconds.
    pub timeout_ms: u64,
    /// How long an idle pooled connection is kept, in milliseconds.
    pub pool_idle_timeout_ms: u64,
    /// Idle connections kept per vendor host.
    pub pool_max_idle_per_host: usize,
    /// Forward endpoints imgate does not know (`Other`) with token injection.
    pub forward_other: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout_ms: 2_000,
            timeout_ms: 10_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 256,
            forward_other: true,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdmin {
    /// Key for the admin API (`Authorization: Bearer …`); a secret.
    pub key: Option<String>,
}

/// `[tokens]`: how app tokens are renewed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTokens {
    /// Renew once this fraction of a token's lifetime has passed.
    pub refresh_fraction: f64,
    /// Renew up to this fraction earlier, at random.
    pub refresh_jitter: f64,
    /// Most calls to an Easemob app's token endpoint per minute.
    pub max_fetches_per_minute: u32,
    /// First retry delay after a failed renewal, ms (doubles per failure).
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
}

impl Default for RawTokens {
    fn default() -> Self {
        let policy = TokenPolicy::default();
        RawTokens {
            refresh_fraction: policy.refresh_fraction,
            refresh_jitter: policy.refresh_jitter,
            max_fetches_per_minute: policy.max_fetches_per_minute,
            retry_initial_ms: policy.retry_initial.as_millis() as u64,
            retry_max_ms: policy.retry_max.as_millis() as u64,
        }
    }
}

/// `[client_tokens]`: tokens imgate issues to callers at `POST {prefix}/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClientTokens {
    /// Lifetime of an issued client token, seconds (callers may ask for less with `ttl`).
    pub ttl_secs: u64,
    /// Key that signs client tokens; a secret. Absent: a random key per process (tokens then
    /// do not survive a restart nor work across replicas).
    pub signing_key: Option<String>,
}

impl Default for RawClientTokens {
    fn default() -> Self {
        RawClientTokens {
            ttl_secs: 86_400,
            signing_key: None,
        }
    }
}

/// `[log]`: the log format and level (`--log-format` and `RUST_LOG` take precedence).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,imgate::access=warn`.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[limits]`: waiting for vendor permits, and the default client quota.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Longest wait for a vendor permit before 429 `imgate_vendor_quota`, ms.
    pub max_wait_ms: u64,
    /// Most calls waiting for the permits of one vendor quota at once.
    pub max_waiters: usize,
    /// Quota of clients that name none (absent: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_default: Option<RawRate>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_wait_ms: 250,
            max_waiters: 1024,
            client_default: None,
        }
    }
}

/// A rate: `{ per_second = 20, burst = 20 }` (burst defaults to per_second).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once after an idle period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `[cache]`: per-endpoint policies of the read cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    /// `GET …/users/{u}/offline_msg_count`.
    pub offline_count: RawCachePolicy,
    /// `GET …/users/{u}/offline_msg_status/{id}`; `ttl_ms` applies to `undelivered`.
    pub offline_status: RawCachePolicy,
    /// Presence per user, from `POST …/users/{u}/presence` batch gets.
    pub presence: RawCachePolicy,
    /// `GET …/users/{u}/presence/sublist`.
    pub sublist: RawCachePolicy,
}

impl Default for RawCache {
    fn default() -> Self {
        let policy = |ttl_ms, max_entries| RawCachePolicy {
            ttl_ms,
            max_entries,
            ..RawCachePolicy::default()
        };
        RawCache {
            offline_count: policy(2_000, 1_000_000),
            offline_status: RawCachePolicy {
                delivered_ttl_ms: Some(3_600_000),
                ..policy(2_000, 1_000_000)
            },
            presence: RawCachePolicy {
                batch_window_ms: Some(2),
                max_batch_users: Some(vendor::MAX_USERNAMES),
                ..policy(5_000, 1_000_000)
            },
            sublist: policy(5_000, 100_000),
        }
    }
}

/// One endpoint's cache policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCachePolicy {
    /// How long an answer is fresh, ms; 0 turns caching of this endpoint off.
    pub ttl_ms: u64,
    /// After that, serve the stale answer at once and refresh it in the background, ms.
    pub stale_while_revalidate_ms: u64,
    /// After that, serve the stale answer when the vendor fails (5xx, 429, timeout), ms.
    pub stale_if_error_ms: u64,
    /// Most entries kept.
    pub max_entries: u64,
    /// offline_status only: how long `delivered` (final) is kept, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_ttl_ms: Option<u64>,
    /// presence only: how long single lookups wait to be merged into one vendor call, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_window_ms: Option<u64>,
    /// presence only: most users in one merged vendor call (at most 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_users: Option<usize>,
}

impl Default for RawCachePolicy {
    fn default() -> Self {
        RawCachePolicy {
            ttl_ms: 2_000,
            stale_while_revalidate_ms: 1_000,
            stale_if_error_ms: 60_000,
            max_entries: 100_000,
            delivered_ttl_ms: None,
            batch_window_ms: None,
            max_batch_users: None,
        }
    }
}

/// One `[[apps]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    /// imgate's name for the app (metrics label `app`).
    pub name: String,
    /// `agora` or `easemob`.
    pub vendor: VendorKind,
    /// Vendor base URL, e.g. `https://a41.chat.agora.io` (plain `http://` only for the emulator).
    pub upstream: String,
    /// Agora App ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Agora App Certificate; a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_certificate: Option<String>,
    /// Lifetime of minted Agora app tokens, seconds (at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expire_secs: Option<u32>,
    /// Easemob org name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Easemob app name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Easemob client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Easemob client secret; a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// `ttl` requested for Easemob tokens, seconds (the vendor's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl_secs: Option<u64>,
    /// Fraction of the vendor's quotas imgate may use (0 < share ≤ 1), e.g. 0.8 on 声网, where
    /// the client SDKs' presence calls count against the same quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_quota_share: Option<f64>,
    /// The vendor's quotas per endpoint name, calls per second, where they differ from the
    /// vendor's published table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vendor_quotas: BTreeMap<String, u32>,
}

/// One `[[clients]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The client's name (metrics label `client`; never the key).
    pub name: String,
    /// The key in plain text (development); a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The SHA-256 of the key, hex (production: the key itself never sits in the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Names of the apps this client may use; all apps when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// This client's quota on imgate (absent: `[limits] client_default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RawRate>,
}

/// Validated, typed settings.
#[derive(Debug)]
pub struct Settings {
    /// API listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connection guards for both listeners.
    pub conn_limits: ConnLimits,
    /// How long the listeners keep accepting after a shutdown signal.
    pub shutdown_delay: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (when `RUST_LOG` is not set).
    pub log_level: String,
    /// Upstream client settings.
    pub upstream: UpstreamSettings,
    /// Admin API key.
    pub admin_key: Option<SecretString>,
    /// App-token renewal policy.
    pub token_policy: TokenPolicy,
    /// Lifetime of issued client tokens.
    pub client_token_ttl: Duration,
    /// Key that signs client tokens, when configured.
    pub client_token_key: Option<SecretString>,
    /// The read cache's policies.
    pub cache: CacheSettings,
    /// How long and how many calls wait for vendor permits.
    pub vendor_wait: WaitPolicy,
    /// The apps.
    pub apps: Vec<AppSettings>,
    /// The clients.
    pub clients: Vec<ClientSettings>,
}

/// Typed `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-call timeout.
    pub timeout: Duration,
    /// Idle connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Idle connections per host.
    pub pool_max_idle_per_host: usize,
    /// Forward unknown endpoints.
    pub forward_other: bool,
}

/// A validated app.
#[derive(Debug)]
pub struct AppSettings {
    /// imgate's name for it.
    pub name: String,
    /// Vendor base URL: scheme and authority only.
    pub upstream: Uri,
    /// How its app token is obtained.
    pub credentials: Credentials,
    /// The vendor quota imgate may use per endpoint ([`Endpoint::index`]), calls per second.
    pub vendor_quotas: [u32; Endpoint::ALL.len()],
}

/// The credentials of an app, per vendor.
#[derive(Debug)]
pub enum Credentials {
    /// Agora: AccessToken2 minted from App ID + App Certificate.
    Agora {
        /// App ID.
        app_id: String,
        /// App Certificate.
        certificate: SecretString,
        /// Token lifetime, seconds.
        expire_secs: u32,
    },
    /// Easemob: client credentials exchanged at the token endpoint.
    Easemob {
        /// Org name.
        org: String,
        /// App name.
        app: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
        /// Requested `ttl`, seconds.
        ttl_secs: Option<u64>,
    },
}

impl Credentials {
    /// Whether both name the same app with the same secrets (a reload keeps the app's token).
    pub fn same_as(&self, other: &Credentials) -> bool {
        match (self, other) {
            (
                Credentials::Agora {
                    app_id,
                    certificate,
                    expire_secs,
                },
                Credentials::Agora {
                    app_id: id2,
                    certificate: cert2,
                    expire_secs: exp2,
                },
            ) => {
                app_id == id2
                    && certificate.expose_secret() == cert2.expose_secret()
                    && expire_secs == exp2
            }
            (
                Credentials::Easemob {
                    org,
                    app,
                    client_id,
                    client_secret,
                    ttl_secs,
                },
                Credentials::Easemob {
                    org: o2,
                    app: a2,
                    client_id: id2,
                    client_secret: s2,
                    ttl_secs: t2,
                },
            ) => {
                org == o2
                    && app == a2
                    && client_id == id2
                    && client_secret.expose_secret() == s2.expose_secret()
                    && ttl_secs == t2
            }
            _ => false,
        }
    }

    /// The vendor these credentials belong to.
    pub fn vendor(&self) -> VendorKind {
        match self {
            Credentials::Agora { .. } => VendorKind::Agora,
            Credentials::Easemob { .. } => VendorKind::Easemob,
        }
    }
}

/// A validated client.
#[derive(Debug)]
pub struct ClientSettings {
    /// Its name.
    pub name: String,
    /// SHA-256 of its key.
    pub key_sha256: [u8; 32],
    /// Apps it may use (`None`: all).
    pub apps: Option<Vec<String>>,
    /// Its quota (`None`: unlimited).
    pub rate_limit: Option<LimitPolicy>,
}

const MASK: &str = "********";

impl RawConfig {
    /// Reads and parses a file (no validation yet).
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path.display().to_string(), format!("cannot read: {e}")))?;
        RawConfig::parse(&text).map_err(|e| bad(path.display().to_string(), e.message))
    }

    /// Parses TOML text (no validation yet).
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e.to_string()))
    }

    /// The effective configuration as TOML with every secret replaced by a mask.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some(MASK.into());
            }
        };
        mask(&mut masked.admin.key);
        mask(&mut masked.client_tokens.signing_key);
        for app in &mut masked.apps {
            mask(&mut app.app_certificate);
            mask(&mut app.client_secret);
        }
        for client in &mut masked.clients {
            mask(&mut client.key);
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// Checks everything, resolves secrets, and builds typed settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        let u = &self.upstream;
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(bad(field, "must be greater than 0"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if s.max_body_bytes == 0 {
            return Err(bad("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_connections == 0 {
            return Err(bad("server.max_connections", "must be greater than 0"));
        }
        if u.pool_max_idle_per_host == 0 {
            return Err(bad(
                "upstream.pool_max_idle_per_host",
                "must be greater than 0",
            ));
        }
        let conn_limits = ConnLimits {
            first_byte_timeout: positive(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
            )?,
            header_read_timeout: positive(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
            )?,
            max_connections: s.max_connections,
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
        };
        let upstream = UpstreamSettings {
            connect_timeout: positive("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
            timeout: positive("upstream.timeout_ms", u.timeout_ms)?,
            pool_idle_timeout: positive("upstream.pool_idle_timeout_ms", u.pool_idle_timeout_ms)?,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            forward_other: u.forward_other,
        };
        if self.apps.is_empty() {
            return Err(bad("apps", "at least one app is required"));
        }
        let apps = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, app)| validate_app(&format!("apps[{i}]"), app))
            .collect::<Result<Vec<_>, _>>()?;
        unique("apps", "name", self.apps.iter().map(|a| a.name.as_str()))?;
        unique(
            "apps",
            "vendor app",
            apps.iter().map(|a| vendor_identity(&a.credentials)),
        )?;
        let app_names: HashSet<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        let client_default = self
            .limits
            .client_default
            .map(|r| rate("limits.client_default", r))
            .transpose()?;
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| validate_client(&format!("clients[{i}]"), c, &app_names, client_default))
            .collect::<Result<Vec<_>, _>>()?;
        unique(
            "clients",
            "name",
            self.clients.iter().map(|c| c.name.as_str()),
        )?;
        unique("clients", "key", clients.iter().map(|c| hex(&c.key_sha256)))?;
        let admin_key = self
            .admin
            .key
            .as_deref()
            .map(|k| resolve_secret("admin.key", k))
            .transpose()?;
        let t = &self.tokens;
        if !(t.refresh_fraction > 0.0 && t.refresh_fraction < 1.0) {
            return Err(bad(
                "tokens.refresh_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(0.0..1.0).contains(&t.refresh_jitter) {
            return Err(bad(
                "tokens.refresh_jitter",
                "must be at least 0 and below 1",
            ));
        }
        if t.max_fetches_per_minute == 0 {
            return Err(bad(
                "tokens.max_fetches_per_minute",
                "must be greater than 0",
            ));
        }
        if t.retry_max_ms < t.retry_initial_ms {
            return Err(bad(
                "tokens.retry_max_ms",
                "must be at least retry_initial_ms",
            ));
        }
        let token_policy = TokenPolicy {
            refresh_fraction: t.refresh_fraction,
            refresh_jitter: t.refresh_jitter,
            max_fetches_per_minute: t.max_fetches_per_minute,
            retry_initial: Duration::from_millis(t.retry_initial_ms),
            retry_max: Duration::from_millis(t.retry_max_ms),
        };
        let ct = &self.client_tokens;
        if ct.ttl_secs == 0 {
            return Err(bad("client_tokens.ttl_secs", "must be greater than 0"));
        }
        let client_token_key = ct
            .signing_key
            .as_deref()
            .map(|k| resolve_secret("client_tokens.signing_key", k))
            .transpose()?;
        if client_token_key
            .as_ref()
            .is_some_and(|k| k.expose_secret().len() < 32)
        {
            return Err(bad(
                "client_tokens.signing_key",
                "must be at least 32 characters",
            ));
        }
        let cache = validate_cache(&self.cache)?;
        if self.limits.max_waiters == 0 {
            return Err(bad("limits.max_waiters", "must be greater than 0"));
        }
        let vendor_wait = WaitPolicy {
            max_wait: Duration::from_millis(self.limits.max_wait_ms),
            max_waiters: self.limits.max_waiters,
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                "not a log filter (e.g. info, or info,imgate::access=warn)",
            ));
        }
        Ok(Settings {
            shutdown_delay: Duration::from_millis(s.shutdown_delay_ms),
            log_format: self.log.format,
            log_level: self.log.level.clone(),
            cache,
            vendor_wait,
            token_policy,
            client_token_ttl: Duration::from_secs(ct.ttl_secs),
            client_token_key,
            listen: address("server.listen", &s.listen)?,
            admin_listen: address("server.admin_listen", &s.admin_listen)?,
            max_body_bytes: s.max_body_bytes,
            conn_limits,
            upstream,
            admin_key,
            apps,
            clients,
        })
    }
}

fn validate_cache(raw: &RawCache) -> Result<CacheSettings, ConfigError> {
    let policy =
        |name: &str, p: &RawCachePolicy, extras: &[&str]| -> Result<CachePolicy, ConfigError> {
            let present = [
                ("delivered_ttl_ms", p.delivered_ttl_ms.is_some()),
                ("batch_window_ms", p.batch_window_ms.is_some()),
                ("max_batch_users", p.max_batch_users.is_some()),
            ];
            if let Some((field, _)) = present.iter().find(|(f, set)| *set && !extras.contains(f)) {
                return Err(bad(
                    format!("cache.{name}.{field}"),
                    "not used by this cache",
                ));
            }
            if p.max_entries == 0 {
                return Err(bad(
                    format!("cache.{name}.max_entries"),
                    "must be greater than 0",
                ));
            }
            Ok(CachePolicy {
                ttl: Duration::from_millis(p.ttl_ms),
                stale_while_revalidate: Duration::from_millis(p.stale_while_revalidate_ms),
                stale_if_error: Duration::from_millis(p.stale_if_error_ms),
                max_entries: p.max_entries,
            })
        };
    let presence = &raw.presence;
    let max_batch_users = presence.max_batch_users.unwrap_or(vendor::MAX_USERNAMES);
    if !(1..=vendor::MAX_USERNAMES).contains(&max_batch_users) {
        return Err(bad(
            "cache.presence.max_batch_users",
            "must be between 1 and 100",
        ));
    }
    let batch_window = Duration::from_millis(presence.batch_window_ms.unwrap_or(2));
    if batch_window > Duration::from_secs(1) {
        return Err(bad("cache.presence.batch_window_ms", "at most 1000"));
    }
    Ok(CacheSettings {
        offline_count: policy("offline_count", &raw.offline_count, &[])?,
        offline_status: policy("offline_status", &raw.offline_status, &["delivered_ttl_ms"])?,
        delivered_ttl: Duration::from_millis(
            raw.offline_status.delivered_ttl_ms.unwrap_or(3_600_000),
        ),
        presence: policy(
            "presence",
            presence,
            &["batch_window_ms", "max_batch_users"],
        )?,
        sublist: policy("sublist", &raw.sublist, &[])?,
        batch_window,
        max_batch_users,
    })
}

fn vendor_identity(credentials: &Credentials) -> String {
    match credentials {
        Credentials::Agora { app_id, .. } => format!("app-id/{}", app_id.to_ascii_lowercase()),
        Credentials::Easemob { org, app, .. } => format!("{org}/{app}"),
    }
}

fn unique<T: Eq + std::hash::Hash + std::fmt::Display>(
    list: &str,
    what: &str,
    items: impl Iterator<Item = T>,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, item) in items.enumerate() {
        if !seen.insert(item) {
            return Err(bad(format!("{list}[{i}]"), format!("duplicate {what}")));
        }
    }
    Ok(())
}

fn address(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| bad(field, format!("not an IP address with port: {text:?}")))
}

fn required<'a>(
    field: &str,
    value: &'a Option<String>,
    vendor: &str,
) -> Result<&'a str, ConfigError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(field, format!("required for a {vendor} app"))),
    }
}

fn validate_app(at: &str, app: &RawApp) -> Result<AppSettings, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    if app.name.is_empty()
        || !app
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            field("name"),
            "must be non-empty letters, digits, '-' or '_'",
        ));
    }
    let upstream = upstream_base(&field("upstream"), &app.upstream)?;
    let only = |name: &str, value: bool, vendor: &str| {
        if value {
            Err(bad(field(name), format!("not used by a {vendor} app")))
        } else {
            Ok(())
        }
    };
    let credentials = match app.vendor {
        VendorKind::Agora => {
            for (name, set) in [
                ("org", app.org.is_some()),
                ("app", app.app.is_some()),
                ("client_id", app.client_id.is_some()),
                ("client_secret", app.client_secret.is_some()),
                ("token_ttl_secs", app.token_ttl_secs.is_some()),
            ] {
                only(name, set, "agora")?;
            }
            let app_id = required(&field("app_id"), &app.app_id, "agora")?;
            if !vendor::is_agora_hex(app_id) {
                return Err(bad(field("app_id"), "must be 32 hex characters"));
            }
            let certificate = resolve_secret(
                &field("app_certificate"),
                required(&field("app_certificate"), &app.app_certificate, "agora")?,
            )?;
            if !vendor::is_agora_hex(certificate.expose_secret()) {
                return Err(bad(field("app_certificate"), "must be 32 hex characters"));
            }
            let expire_secs = app
                .token_expire_secs
                .unwrap_or(vendor::MAX_AGORA_EXPIRE_SECS);
            if !(1..=vendor::MAX_AGORA_EXPIRE_SECS).contains(&expire_secs) {
                return Err(bad(
                    field("token_expire_secs"),
                    "must be between 1 and 86400",
                ));
            }
            Credentials::Agora {
                app_id: app_id.to_owned(),
                certificate,
                expire_secs,
            }
        }
        VendorKind::Easemob => {
            for (name, set) in [
                ("app_id", app.app_id.is_some()),
                ("app_certificate", app.app_certificate.is_some()),
                ("token_expire_secs", app.token_expire_secs.is_some()),
            ] {
                only(name, set, "easemob")?;
            }
            let segment = |name: &str, value: &Option<String>| -> Result<String, ConfigError> {
                let v = required(&field(name), value, "easemob")?;
                if v.contains('/') || v == "app-id" {
                    return Err(bad(
                        field(name),
                        "must be a single path segment other than app-id",
                    ));
                }
                Ok(v.to_owned())
            };
            let client_secret = resolve_secret(
                &field("client_secret"),
                required(&field("client_secret"), &app.client_secret, "easemob")?,
            )?;
            Credentials::Easemob {
                org: segment("org", &app.org)?,
                app: segment("app", &app.app)?,
                client_id: required(&field("client_id"), &app.client_id, "easemob")?.to_owned(),
                client_secret,
                ttl_secs: app.token_ttl_secs,
            }
        }
    };
    let share = app.vendor_quota_share.unwrap_or(1.0);
    if !(share > 0.0 && share <= 1.0) {
        return Err(bad(
            field("vendor_quota_share"),
            "must be above 0 and at most 1",
        ));
    }
    let mut vendor_quotas = Endpoint::ALL.map(vendor::default_quota);
    for (name, quota) in &app.vendor_quotas {
        let endpoint = Endpoint::from_name(name)
            .ok_or_else(|| bad(field(&format!("vendor_quotas.{name}")), "unknown endpoint"))?;
        if *quota == 0 {
            return Err(bad(
                field(&format!("vendor_quotas.{name}")),
                "must be greater than 0",
            ));
        }
        vendor_quotas[endpoint.index()] = *quota;
    }
    // The share never rounds a quota down to nothing.
    let vendor_quotas = vendor_quotas.map(|q| ((f64::from(q) * share).floor() as u32).max(1));
    Ok(AppSettings {
        name: app.name.clone(),
        upstream,
        credentials,
        vendor_quotas,
    })
}

fn upstream_base(field: &str, text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| bad(field, format!("not a URL: {text:?}")))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => {
            return Err(bad(
                field,
                "must start with https:// (or http:// for the emulator)",
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(bad(field, "must name a host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(field, "must be scheme and host only, without a path"));
    }
    Ok(uri)
}

fn validate_client(
    at: &str,
    client: &RawClient,
    apps: &HashSet<&str>,
    default_rate: Option<LimitPolicy>,
) -> Result<ClientSettings, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    if client.name.is_empty() {
        return Err(bad(field("name"), "must not be empty"));
    }
    let key_sha256 = match (&client.key, &client.key_sha256) {
        (Some(key), None) => {
            let key = resolve_secret(&field("key"), key)?;
            if key.expose_secret().len() < 8 {
                return Err(bad(field("key"), "must be at least 8 characters"));
            }
            Sha256::digest(key.expose_secret().as_bytes()).into()
        }
        (None, Some(hash)) => parse_sha256(hash)
            .ok_or_else(|| bad(field("key_sha256"), "must be 64 hex characters"))?,
        _ => return Err(bad(field("key"), "give exactly one of key and key_sha256")),
    };
    if let Some(list) = &client.apps {
        if let Some(unknown) = list.iter().find(|a| !apps.contains(a.as_str())) {
            return Err(bad(field("apps"), format!("no app named {unknown:?}")));
        }
    }
    let rate_limit = match client.rate_limit {
        Some(r) => Some(rate(&field("rate_limit"), r)?),
        None => default_rate,
    };
    Ok(ClientSettings {
        name: client.name.clone(),
        key_sha256,
        apps: client.apps.clone(),
        rate_limit,
    })
}

fn rate(field: &str, raw: RawRate) -> Result<LimitPolicy, ConfigError> {
    let burst = raw.burst.unwrap_or(raw.per_second);
    if raw.per_second == 0 || burst == 0 {
        return Err(bad(field, "per_second and burst must be greater than 0"));
    }
    Ok(LimitPolicy {
        per_second: raw.per_second,
        burst,
    })
}

fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    if hex_text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves `${ENV_VAR}`, `file:/path` (trailing newline trimmed) or a literal.
pub fn resolve_secret(field: &str, value: &str) -> Result<SecretString, ConfigError> {
    let resolved = if let Some(var) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        std::env::var(var)
            .map_err(|_| bad(field, format!("environment variable {var} is not set")))?
    } else if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(field, format!("cannot read {path}: {e}")))?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        value.to_owned()
    };
    if resolved.is_empty() {
        return Err(bad(field, "secret is empty"));
    }
    Ok(SecretString::from(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[apps]]
        name = "a"
        vendor = "agora"
        upstream = "https://a41.chat.agora.io"
        app_id = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
        app_certificate = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

        [[apps]]
        name = "e"
        vendor = "easemob"
        upstream = "http://127.0.0.1:8081"
        org = "o"
        app = "p"
        client_id = "id"
        client_secret = "secret"

        [[clients]]
        name = "svc"
        key = "svc-key-123"
        apps = ["a"]
    "#;

    fn error_of(text: &str) -> String {
        RawConfig::parse(text)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_complete_config_validates_with_defaults() {
        let s = RawConfig::parse(GOOD).unwrap().validate().unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.apps.len(), 2);
        assert!(matches!(
            s.apps[0].credentials,
            Credentials::Agora {
                expire_secs: 86400,
                ..
            }
        ));
        assert_eq!(
            s.clients[0].key_sha256,
            <[u8; 32]>::from(Sha256::digest(b"svc-key-123"))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_id = GOOD.replace("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "xyz");
        assert_eq!(
            error_of(&bad_id),
            "apps[0].app_id: must be 32 hex characters"
        );
        let no_secret = GOOD.replace("client_secret = \"secret\"", "");
        assert_eq!(
            error_of(&no_secret),
            "apps[1].client_secret: required for a easemob app"
        );
        let bad_url = GOOD.replace("http://127.0.0.1:8081", "ftp://x");
        assert!(error_of(&bad_url).starts_with("apps[1].upstream:"));
        let bad_client_app = GOOD.replace("apps = [\"a\"]", "apps = [\"zz\"]");
        assert!(error_of(&bad_client_app).starts_with("clients[0].apps:"));
        assert!(error_of("[server]\nlisten = 5").starts_with("config:"));
        assert!(error_of(&format!("{GOOD}\n[server]\nmax_body_bytes = 0"))
            .starts_with("server.max_body_bytes"));
    }

    #[test]
    fn secrets_come_from_env_and_files() {
        let path = std::env::temp_dir().join(format!("imgate-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let s = resolve_secret("f", &format!("file:{}", path.display())).unwrap();
        assert_eq!(s.expose_secret(), "from-file");
        std::fs::remove_file(&path).unwrap();
        assert!(resolve_secret("f", "${IMGATE_TEST_SURELY_UNSET_VAR}")
            .unwrap_err()
            .to_string()
            .contains("IMGATE_TEST_SURELY_UNSET_VAR"));
        assert_eq!(
            resolve_secret("f", "${PATH}").unwrap().expose_secret(),
            std::env::var("PATH").unwrap()
        );
    }

    #[test]
    fn masked_output_hides_every_secret() {
        let raw = RawConfig::parse(GOOD).unwrap();
        let text = raw.to_masked_toml();
        for secret in [
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "\"secret\"",
            "svc-key-123",
        ] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("max_body_bytes = 65536"),
            "defaults are shown:\n{text}"
        );
    }

    #[test]
    fn client_keys_may_be_given_as_sha256() {
        let hash = hex(&Sha256::digest(b"svc-key-123"));
        let text = GOOD.replace("key = \"svc-key-123\"", &format!("key_sha256 = \"{hash}\""));
        let s = RawConfig::parse(&text).unwrap().validate().unwrap();
        assert_eq!(hex(&s.clients[0].key_sha256), hash);
    }
}
