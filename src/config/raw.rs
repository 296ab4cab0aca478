//! The configuration file as written: every section with its defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError};
use crate::cluster::RawCluster;
use crate::token::TokenPolicy;
use crate::vendor::{self, VendorKind};

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
    /// Several replicas sharing one Redis (absent: one process on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
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
    /// Time a connection has from its accept to its first request's complete headers (TLS and
    /// protocol sniffing included), and each later HTTP/1 request for its headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// A connection without an open request for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Time a request body has to arrive completely (else 408), in milliseconds.
    pub body_read_timeout_ms: u64,
    /// A write to a client that makes no progress for this long ends its connection, in
    /// milliseconds (also the HTTP/2 ping timeout).
    pub write_timeout_ms: u64,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest request header block, in bytes.
    pub max_header_bytes: usize,
    /// PEM certificate chain of the API listener (with `tls_key`: HTTPS; re-read on reload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// PEM private key of the API listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Time in-flight requests get to finish on shutdown, in milliseconds.
    pub drain_timeout_ms: u64,
    /// On SIGTERM, readiness fails at once but the listeners keep accepting for this long, so
    /// that load balancers notice first, in milliseconds.
    pub shutdown_delay_ms: u64,
    /// Threads of their own that serve the API listener's connections, one event loop each
    /// (unset: one per core; 0: the shared runtime serves them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_threads: Option<usize>,
    /// A connection thread that has worked this long without sleeping gives its core up to
    /// whatever waits for it, in microseconds (0: never).
    pub busy_yield_us: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 64 * 1024,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_concurrent_streams: 256,
            max_header_bytes: 32 * 1024,
            tls_cert: None,
            tls_key: None,
            drain_timeout_ms: 10_000,
            shutdown_delay_ms: 5_000,
            conn_threads: None,
            busy_yield_us: 250,
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
    /// Forward endpoints imgate does not know (`Other`) with the app token, for clients that
    /// name no `endpoints` of their own.
    pub forward_other: bool,
    /// PEM file of extra root certificates trusted toward the vendor (besides webpki's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout_ms: 2_000,
            timeout_ms: 10_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 256,
            forward_other: false,
            ca_file: None,
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
    /// Most admin rotations per app and minute (below `max_fetches_per_minute`, so that they
    /// never use up the renewals needed after a vendor 401).
    pub max_rotations_per_minute: u32,
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
            max_rotations_per_minute: policy.max_rotations_per_minute,
        }
    }
}

/// `[client_tokens]`: tokens imgate issues to callers at `POST {prefix}/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClientTokens {
    /// Lifetime of an issued client token, seconds (callers may ask for less with `ttl`).
    pub ttl_secs: u64,
    /// Key that signs client tokens; a secret. Absent: keys derived from each app's credentials
    /// (tokens survive restarts and work on every replica with the same configuration).
    pub signing_key: Option<String>,
    /// Wrong client credentials one source address may send to the token endpoint per
    /// minute; past it, 429 until the minute is over.
    pub max_failures_per_minute: u32,
}

impl Default for RawClientTokens {
    fn default() -> Self {
        RawClientTokens {
            ttl_secs: 86_400,
            signing_key: None,
            max_failures_per_minute: 10,
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
    /// With such a stale answer at hand, wait this long for the vendor before serving it, ms.
    pub stale_timeout_ms: u64,
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
            stale_timeout_ms: 500,
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
    /// The endpoints this client may call, by name or `prefix*` (`other`: endpoints imgate
    /// does not know); absent: every known endpoint, and others if `upstream.forward_other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
}

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
}
