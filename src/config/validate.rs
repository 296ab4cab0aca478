//! The checks that turn a [`RawConfig`] into [`Settings`]. Every check runs, and every error is
//! collected, so one run of `check-config` lists all that is wrong; warnings name what works
//! but is risky in production.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    bad, resolve_secret, AppSettings, ClientSettings, ConfigError, ConfigErrors, Credentials,
    RawApp, RawCache, RawCachePolicy, RawClient, RawConfig, RawRate, RawServer, RawTokens,
    Settings, UpstreamSettings,
};
use crate::cache::{CachePolicy, CacheSettings};
use crate::limit::{LimitPolicy, WaitPolicy};
use crate::route::{Endpoint, EndpointSet};
use crate::server::ConnLimits;
use crate::token::TokenPolicy;
use crate::vendor::{self, VendorKind};

/// Shortest admin key that does not draw a warning.
const MIN_ADMIN_KEY_CHARS: usize = 16;

/// What the checks found so far.
#[derive(Default)]
struct Findings {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Findings {
    /// The value of a check, or `None` with its error recorded.
    fn take<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.errors.push(e)).ok()
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(bad(field, message));
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(bad(field, message));
    }

    /// Records an error unless `value` is above zero.
    fn positive(&mut self, field: &str, value: u64) -> Option<u64> {
        if value == 0 {
            self.error(field, "must be greater than 0, not 0");
            None
        } else {
            Some(value)
        }
    }
}

impl RawConfig {
    /// Checks everything, resolves secrets, and builds typed settings; on failure, every
    /// error found.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let mut found = Findings::default();
        let s = &self.server;
        let (listen, admin_listen) = listeners(s, &mut found);
        let max_body_bytes = found.positive("server.max_body_bytes", s.max_body_bytes as u64);
        let conn_limits = conn_limits(s, &mut found);
        let api_tls = api_tls(s, &mut found);
        let upstream = self.upstream_settings(&mut found);
        let apps = self.apps(&mut found);
        let client_default = self
            .limits
            .client_default
            .and_then(|r| found.take(rate("limits.client_default", r)));
        let clients = self.clients(client_default, &mut found);
        let admin_key = self.admin_key(clients.as_deref(), &mut found);
        let token_policy = token_policy(&self.tokens, &mut found);
        let client_token_key = self.client_token_key(&mut found);
        let client_token_ttl =
            found.positive("client_tokens.ttl_secs", self.client_tokens.ttl_secs);
        let client_token_failures = found.positive(
            "client_tokens.max_failures_per_minute",
            u64::from(self.client_tokens.max_failures_per_minute),
        );
        let cache = validate_cache(&self.cache, &mut found);
        let max_waiters = found.positive("limits.max_waiters", self.limits.max_waiters as u64);
        // `None`: an error; `Some(None)`: no [cluster].
        let cluster = match &self.cluster {
            None => Some(None),
            Some(cluster) => found.take(cluster.validate()).map(Some),
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            found.error(
                "log.level",
                format!(
                    "{:?} is not a log filter (e.g. info, or info,imgate::access=warn)",
                    self.log.level
                ),
            );
        }
        let Findings { errors, warnings } = found;
        // Every `None` above comes with an error, so this builds whenever `errors` is empty.
        let settings = (|| {
            Some(Settings {
                shutdown_delay: Duration::from_millis(s.shutdown_delay_ms),
                log_format: self.log.format,
                log_level: self.log.level.clone(),
                cache: cache?,
                vendor_wait: WaitPolicy {
                    max_wait: Duration::from_millis(self.limits.max_wait_ms),
                    max_waiters: max_waiters? as usize,
                },
                token_policy: token_policy?,
                client_token_ttl: Duration::from_secs(client_token_ttl?),
                client_token_key: client_token_key?,
                client_token_failures: u32::try_from(client_token_failures?).ok()?,
                listen: listen?,
                admin_listen: admin_listen?,
                max_body_bytes: max_body_bytes? as usize,
                conn_limits: conn_limits?,
                api_tls: api_tls?,
                upstream: upstream?,
                admin_key: admin_key?,
                apps: apps?,
                clients: clients?,
                cluster: cluster?,
                warnings,
            })
        })();
        match settings {
            Some(settings) if errors.is_empty() => Ok(settings),
            _ => Err(ConfigErrors(errors)),
        }
    }

    fn upstream_settings(&self, found: &mut Findings) -> Option<UpstreamSettings> {
        let u = &self.upstream;
        let connect = found.positive("upstream.connect_timeout_ms", u.connect_timeout_ms);
        let timeout = found.positive("upstream.timeout_ms", u.timeout_ms);
        let idle = found.positive("upstream.pool_idle_timeout_ms", u.pool_idle_timeout_ms);
        let max_idle = found.positive(
            "upstream.pool_max_idle_per_host",
            u.pool_max_idle_per_host as u64,
        );
        let tls = found.take(
            crate::tls::client_config(u.ca_file.as_deref().map(Path::new))
                .map_err(|e| bad("upstream.ca_file", e.to_string())),
        );
        Some(UpstreamSettings {
            connect_timeout: Duration::from_millis(connect?),
            timeout: Duration::from_millis(timeout?),
            pool_idle_timeout: Duration::from_millis(idle?),
            pool_max_idle_per_host: max_idle? as usize,
            forward_other: u.forward_other,
            tls: Arc::new(tls?),
        })
    }

    fn apps(&self, found: &mut Findings) -> Option<Vec<AppSettings>> {
        if self.apps.is_empty() {
            found.error("apps", "at least one [[apps]] entry is required");
            return None;
        }
        let apps: Vec<Option<AppSettings>> = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, app)| validate_app(&format!("apps[{i}]"), app, found))
            .collect();
        duplicates(
            found,
            "apps",
            "name",
            self.apps.iter().map(|a| Some(format!("{:?}", a.name))),
        );
        duplicates(
            found,
            "apps",
            "",
            apps.iter()
                .map(|a| a.as_ref().map(|a| vendor_identity(&a.credentials))),
        );
        apps.into_iter().collect()
    }

    fn clients(
        &self,
        default_rate: Option<LimitPolicy>,
        found: &mut Findings,
    ) -> Option<Vec<ClientSettings>> {
        let app_names: Vec<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        let clients: Vec<Option<ClientSettings>> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = format!("clients[{i}]");
                let forward_other = self.upstream.forward_other;
                validate_client(&at, c, &app_names, default_rate, forward_other, found)
            })
            .collect();
        duplicates(
            found,
            "clients",
            "name",
            self.clients.iter().map(|c| Some(format!("{:?}", c.name))),
        );
        // The key itself is a secret: the clash names the entries, never the key.
        duplicates(
            found,
            "clients",
            "key",
            clients
                .iter()
                .map(|c| c.as_ref().map(|c| hex::encode(c.key_sha256))),
        );
        clients.into_iter().collect()
    }

    /// The admin key: an error when it is a client's key too, a warning when it is short.
    fn admin_key(
        &self,
        clients: Option<&[ClientSettings]>,
        found: &mut Findings,
    ) -> Option<Option<SecretString>> {
        let Some(text) = self.admin.key.as_deref() else {
            return Some(None);
        };
        let key = found.take(resolve_secret("admin.key", text))?;
        let digest: [u8; 32] = Sha256::digest(key.expose_secret().as_bytes()).into();
        if let Some(i) = clients
            .unwrap_or_default()
            .iter()
            .position(|c| c.key_sha256 == digest)
        {
            found.error(
                "admin.key",
                format!("the same as the key of clients[{i}]; a backend would hold the admin key"),
            );
            return None;
        }
        let chars = key.expose_secret().chars().count();
        if chars < MIN_ADMIN_KEY_CHARS {
            found.warn(
                "admin.key",
                format!(
                    "only {chars} characters; use a random key of at least \
                     {MIN_ADMIN_KEY_CHARS}"
                ),
            );
        }
        Some(Some(key))
    }

    fn client_token_key(&self, found: &mut Findings) -> Option<Option<SecretString>> {
        let field = "client_tokens.signing_key";
        let Some(text) = self.client_tokens.signing_key.as_deref() else {
            if !self.clients.is_empty() {
                found.warn(
                    field,
                    "not set: client tokens (POST {prefix}/token) are signed with keys derived \
                     from each app's credentials, so changing an app's credentials revokes the \
                     tokens issued through it",
                );
            }
            return Some(None);
        };
        let key = found.take(resolve_secret(field, text))?;
        let chars = key.expose_secret().len();
        if chars < 32 {
            found.error(
                field,
                format!("must be at least 32 characters, not {chars}"),
            );
            return None;
        }
        Some(Some(key))
    }
}

/// Both listener addresses; an error when they would take the same port.
fn listeners(s: &RawServer, found: &mut Findings) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let listen = found.take(address("server.listen", &s.listen));
    let admin = found.take(address("server.admin_listen", &s.admin_listen));
    if let (Some(a), Some(b)) = (listen, admin) {
        let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        if a.port() != 0 && a.port() == b.port() && overlap {
            found.error(
                "server.admin_listen",
                format!(
                    "{:?} takes the same port as server.listen {:?}; give each its own",
                    s.admin_listen, s.listen
                ),
            );
            return (listen, None);
        }
    }
    (listen, admin)
}

/// More connection threads than this is a typo, not a machine.
const MAX_CONN_THREADS: usize = 1024;

/// Beyond a second the scheduler's own tick comes first: a typo.
const MAX_BUSY_YIELD_US: u64 = 1_000_000;

fn conn_limits(s: &RawServer, found: &mut Findings) -> Option<ConnLimits> {
    let mut ms = |field: &str, value: u64| {
        found
            .positive(&format!("server.{field}"), value)
            .map(Duration::from_millis)
    };
    let header = ms("header_read_timeout_ms", s.header_read_timeout_ms);
    let idle = ms("idle_timeout_ms", s.idle_timeout_ms);
    let body = ms("body_read_timeout_ms", s.body_read_timeout_ms);
    let write = ms("write_timeout_ms", s.write_timeout_ms);
    let max_connections = found.positive("server.max_connections", s.max_connections as u64);
    let streams = found.positive(
        "server.max_concurrent_streams",
        u64::from(s.max_concurrent_streams),
    );
    let conn_threads = match s.conn_threads {
        None => Some(crate::shards::cores()),
        Some(n) if n <= MAX_CONN_THREADS => Some(n),
        Some(n) => {
            found.error(
                "server.conn_threads",
                format!("must be at most {MAX_CONN_THREADS}, not {n}"),
            );
            None
        }
    };
    let busy_yield = match s.busy_yield_us {
        0 => Some(None),
        us @ 1..=MAX_BUSY_YIELD_US => Some(Some(Duration::from_micros(us))),
        us => {
            found.error(
                "server.busy_yield_us",
                format!("must be at most {MAX_BUSY_YIELD_US} (0: never), not {us}"),
            );
            None
        }
    };
    if !(1..=1 << 20).contains(&s.max_header_bytes) {
        found.error(
            "server.max_header_bytes",
            format!("must be between 1 and 1048576, not {}", s.max_header_bytes),
        );
    }
    Some(ConnLimits {
        header_read_timeout: header?,
        idle_timeout: idle?,
        body_read_timeout: body?,
        write_timeout: write?,
        max_concurrent_streams: u32::try_from(streams?).ok()?,
        max_header_bytes: s.max_header_bytes,
        max_connections: max_connections? as usize,
        drain_timeout: Duration::from_millis(s.drain_timeout_ms),
        conn_threads: conn_threads?,
        busy_yield: busy_yield?,
    })
}

/// The API listener's TLS configuration, read from `tls_cert` and `tls_key`; `Some(None)`
/// without TLS.
fn api_tls(s: &RawServer, found: &mut Findings) -> Option<Option<Arc<rustls::ServerConfig>>> {
    match (&s.tls_cert, &s.tls_key) {
        (None, None) => Some(None),
        (Some(cert), Some(key)) => found
            .take(
                crate::tls::server_config(Path::new(cert), Path::new(key))
                    .map_err(|e| bad("server.tls_cert", e.to_string())),
            )
            .map(|config| Some(Arc::new(config))),
        _ => {
            found.error("server.tls_cert", "tls_cert and tls_key go together");
            None
        }
    }
}

fn token_policy(t: &RawTokens, found: &mut Findings) -> Option<TokenPolicy> {
    let mut ok = true;
    let mut fail = |field: &str, message: String| {
        found.error(field, message);
        ok = false;
    };
    if !(t.refresh_fraction > 0.0 && t.refresh_fraction < 1.0) {
        fail(
            "tokens.refresh_fraction",
            format!(
                "must be between 0 and 1 (exclusive), not {}",
                t.refresh_fraction
            ),
        );
    }
    if !(0.0..1.0).contains(&t.refresh_jitter) {
        fail(
            "tokens.refresh_jitter",
            format!("must be at least 0 and below 1, not {}", t.refresh_jitter),
        );
    }
    if t.max_fetches_per_minute == 0 {
        fail(
            "tokens.max_fetches_per_minute",
            "must be greater than 0, not 0".into(),
        );
    }
    if t.max_rotations_per_minute >= t.max_fetches_per_minute {
        fail(
            "tokens.max_rotations_per_minute",
            format!(
                "{} is not below max_fetches_per_minute ({}): renewals after a vendor 401 need the rest",
                t.max_rotations_per_minute, t.max_fetches_per_minute
            ),
        );
    }
    if t.retry_max_ms < t.retry_initial_ms {
        fail(
            "tokens.retry_max_ms",
            format!(
                "{} is below retry_initial_ms ({})",
                t.retry_max_ms, t.retry_initial_ms
            ),
        );
    }
    ok.then(|| TokenPolicy {
        refresh_fraction: t.refresh_fraction,
        refresh_jitter: t.refresh_jitter,
        max_fetches_per_minute: t.max_fetches_per_minute,
        retry_initial: Duration::from_millis(t.retry_initial_ms),
        retry_max: Duration::from_millis(t.retry_max_ms),
        max_rotations_per_minute: t.max_rotations_per_minute,
    })
}

fn validate_cache(raw: &RawCache, found: &mut Findings) -> Option<CacheSettings> {
    let mut policy = |name: &str, p: &RawCachePolicy, extras: &[&str]| -> Option<CachePolicy> {
        let present = [
            ("delivered_ttl_ms", p.delivered_ttl_ms.is_some()),
            ("batch_window_ms", p.batch_window_ms.is_some()),
            ("max_batch_users", p.max_batch_users.is_some()),
        ];
        let mut ok = true;
        for (field, _) in present
            .iter()
            .filter(|(f, set)| *set && !extras.contains(f))
        {
            found.error(
                format!("cache.{name}.{field}"),
                format!("not used by the {name} cache"),
            );
            ok = false;
        }
        let max_entries = found.positive(&format!("cache.{name}.max_entries"), p.max_entries);
        (ok && max_entries.is_some()).then(|| CachePolicy {
            ttl: Duration::from_millis(p.ttl_ms),
            stale_while_revalidate: Duration::from_millis(p.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(p.stale_if_error_ms),
            stale_timeout: Duration::from_millis(p.stale_timeout_ms),
            max_entries: p.max_entries,
        })
    };
    let offline_count = policy("offline_count", &raw.offline_count, &[]);
    let offline_status = policy("offline_status", &raw.offline_status, &["delivered_ttl_ms"]);
    let presence = policy(
        "presence",
        &raw.presence,
        &["batch_window_ms", "max_batch_users"],
    );
    let sublist = policy("sublist", &raw.sublist, &[]);
    let max_batch_users = raw
        .presence
        .max_batch_users
        .unwrap_or(vendor::MAX_USERNAMES);
    let batch_users_ok = (1..=vendor::MAX_USERNAMES).contains(&max_batch_users);
    if !batch_users_ok {
        found.error(
            "cache.presence.max_batch_users",
            format!("must be between 1 and 100, not {max_batch_users}"),
        );
    }
    let window_ms = raw.presence.batch_window_ms.unwrap_or(2);
    let window_ok = window_ms <= 1_000;
    if !window_ok {
        found.error(
            "cache.presence.batch_window_ms",
            format!("must be at most 1000, not {window_ms}"),
        );
    }
    Some(CacheSettings {
        offline_count: offline_count?,
        offline_status: offline_status?,
        delivered_ttl: Duration::from_millis(
            raw.offline_status.delivered_ttl_ms.unwrap_or(3_600_000),
        ),
        presence: presence?,
        sublist: sublist?,
        batch_window: window_ok.then(|| Duration::from_millis(window_ms))?,
        max_batch_users: batch_users_ok.then_some(max_batch_users)?,
    })
}

/// The vendor app credentials address (`app-id/{id}`, the id lower-cased, or `{org}/{app}`):
/// unique per configuration, and what cache entries are keyed by.
pub fn vendor_identity(credentials: &Credentials) -> String {
    match credentials {
        Credentials::Agora { app_id, .. } => {
            format!("vendor app app-id/{}", app_id.to_ascii_lowercase())
        }
        Credentials::Easemob { org, app, .. } => format!("vendor app {org}/{app}"),
    }
}

/// Records an error on every entry of `list` whose `what` repeats an earlier entry's
/// (entries whose value is unknown, `None`, are skipped). `values` are printable: quoted names,
/// or a digest when the value is a secret.
fn duplicates(
    found: &mut Findings,
    list: &str,
    what: &str,
    values: impl Iterator<Item = Option<String>>,
) {
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, value) in values.enumerate() {
        let Some(value) = value else { continue };
        let field = if what.is_empty() {
            format!("{list}[{i}]")
        } else {
            format!("{list}[{i}].{what}")
        };
        match first.get(&value) {
            Some(earlier) if what == "key" => {
                found.error(field, format!("the same key as {list}[{earlier}]"))
            }
            Some(earlier) => found.error(field, format!("{value} is taken by {list}[{earlier}]")),
            None => {
                first.insert(value, i);
            }
        }
    }
}

fn address(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        bad(
            field,
            format!("{text:?} is not an IP address with a port (e.g. 127.0.0.1:8080)"),
        )
    })
}

/// A field an app of `vendor` must have.
fn required<'a>(
    found: &mut Findings,
    field: &str,
    value: &'a Option<String>,
    vendor: VendorKind,
) -> Option<&'a str> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            found.error(
                field,
                format!("required for an {} app", vendor_name(vendor)),
            );
            None
        }
    }
}

fn vendor_name(vendor: VendorKind) -> &'static str {
    match vendor {
        VendorKind::Agora => "agora",
        VendorKind::Easemob => "easemob",
    }
}

fn validate_app(at: &str, app: &RawApp, found: &mut Findings) -> Option<AppSettings> {
    let field = |name: &str| format!("{at}.{name}");
    let errors_before = found.errors.len();
    let name_ok = !app.name.is_empty()
        && app
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        found.error(
            field("name"),
            format!(
                "{:?}: must be non-empty letters, digits, '-' or '_'",
                app.name
            ),
        );
    }
    let upstream = found.take(upstream_base(&field("upstream"), &app.upstream));
    if let Some(uri) = &upstream {
        warn_plain_http(found, &field("upstream"), uri);
    }
    let unused: &[(&str, bool)] = match app.vendor {
        VendorKind::Agora => &[
            ("org", app.org.is_some()),
            ("app", app.app.is_some()),
            ("client_id", app.client_id.is_some()),
            ("client_secret", app.client_secret.is_some()),
            ("token_ttl_secs", app.token_ttl_secs.is_some()),
        ],
        VendorKind::Easemob => &[
            ("app_id", app.app_id.is_some()),
            ("app_certificate", app.app_certificate.is_some()),
            ("token_expire_secs", app.token_expire_secs.is_some()),
        ],
    };
    for (name, _) in unused.iter().filter(|(_, set)| *set) {
        found.error(
            field(name),
            format!("not used by an {} app", vendor_name(app.vendor)),
        );
    }
    let credentials = match app.vendor {
        VendorKind::Agora => agora_credentials(at, app, found),
        VendorKind::Easemob => easemob_credentials(at, app, found),
    };
    let vendor_quotas = vendor_quotas(at, app, found);
    let (upstream, credentials, vendor_quotas) = (upstream?, credentials?, vendor_quotas?);
    (found.errors.len() == errors_before).then(|| AppSettings {
        name: app.name.clone(),
        upstream,
        credentials,
        vendor_quotas,
    })
}

fn agora_credentials(at: &str, app: &RawApp, found: &mut Findings) -> Option<Credentials> {
    let field = |name: &str| format!("{at}.{name}");
    let app_id = required(found, &field("app_id"), &app.app_id, VendorKind::Agora);
    let app_id = app_id.filter(|id| {
        let ok = vendor::is_agora_hex(id);
        if !ok {
            found.error(
                field("app_id"),
                format!("{id:?}: must be 32 hex characters"),
            );
        }
        ok
    });
    let certificate = required(
        found,
        &field("app_certificate"),
        &app.app_certificate,
        VendorKind::Agora,
    )
    .and_then(|text| found.take(resolve_secret(&field("app_certificate"), text)))
    .filter(|cert| {
        // A secret: the message never repeats it.
        let ok = vendor::is_agora_hex(cert.expose_secret());
        if !ok {
            found.error(field("app_certificate"), "must be 32 hex characters");
        }
        ok
    });
    let expire_secs = app
        .token_expire_secs
        .unwrap_or(vendor::MAX_AGORA_EXPIRE_SECS);
    let expire_ok = (1..=vendor::MAX_AGORA_EXPIRE_SECS).contains(&expire_secs);
    if !expire_ok {
        found.error(
            field("token_expire_secs"),
            format!("must be between 1 and 86400, not {expire_secs}"),
        );
    }
    Some(Credentials::Agora {
        app_id: app_id?.to_owned(),
        certificate: certificate?,
        expire_secs: expire_ok.then_some(expire_secs)?,
    })
}

fn easemob_credentials(at: &str, app: &RawApp, found: &mut Findings) -> Option<Credentials> {
    let field = |name: &str| format!("{at}.{name}");
    let mut segment = |name: &str, value: &Option<String>| -> Option<String> {
        let v = required(found, &field(name), value, VendorKind::Easemob)?;
        if v.contains('/') || v == "app-id" {
            found.error(
                field(name),
                format!("{v:?}: must be a single path segment other than app-id"),
            );
            return None;
        }
        Some(v.to_owned())
    };
    let org = segment("org", &app.org);
    let app_name = segment("app", &app.app);
    let client_id = required(
        found,
        &field("client_id"),
        &app.client_id,
        VendorKind::Easemob,
    );
    let client_secret = required(
        found,
        &field("client_secret"),
        &app.client_secret,
        VendorKind::Easemob,
    )
    .and_then(|text| found.take(resolve_secret(&field("client_secret"), text)));
    Some(Credentials::Easemob {
        org: org?,
        app: app_name?,
        client_id: client_id?.to_owned(),
        client_secret: client_secret?,
        ttl_secs: app.token_ttl_secs,
    })
}

/// The app's vendor quotas after overrides and its share.
fn vendor_quotas(
    at: &str,
    app: &RawApp,
    found: &mut Findings,
) -> Option<[u32; Endpoint::ALL.len()]> {
    let errors_before = found.errors.len();
    let share = app.vendor_quota_share.unwrap_or(1.0);
    if !(share > 0.0 && share <= 1.0) {
        found.error(
            format!("{at}.vendor_quota_share"),
            format!("must be above 0 and at most 1, not {share}"),
        );
    }
    let mut quotas = Endpoint::ALL.map(vendor::default_quota);
    for (name, quota) in &app.vendor_quotas {
        let field = format!("{at}.vendor_quotas.{name}");
        match Endpoint::from_name(name) {
            None => {
                let valid: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
                found.error(
                    field,
                    format!(
                        "unknown endpoint {name:?}; the endpoints are {}",
                        valid.join(", ")
                    ),
                );
            }
            Some(_) if *quota == 0 => found.error(field, "must be greater than 0, not 0"),
            Some(endpoint) => quotas[endpoint.index()] = *quota,
        }
    }
    // The share never rounds a quota down to nothing.
    (found.errors.len() == errors_before)
        .then(|| quotas.map(|q| ((f64::from(q) * share).floor() as u32).max(1)))
}

fn upstream_base(field: &str, text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| bad(field, format!("{text:?} is not a URL")))?;
    let problem = match uri.scheme_str() {
        Some("https" | "http") if uri.authority().is_none() => "must name a host",
        Some("https" | "http") if !matches!(uri.path(), "" | "/") || uri.query().is_some() => {
            "must be scheme and host only, without a path"
        }
        Some("https" | "http") => return Ok(uri),
        _ => "must start with https:// (or http:// for the emulator)",
    };
    Err(bad(field, format!("{text:?}: {problem}")))
}

/// A plain-HTTP upstream beyond this machine sends the app token, a bearer credential with
/// full rights over the app, in clear.
fn warn_plain_http(found: &mut Findings, field: &str, uri: &Uri) {
    let host = uri.host().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if uri.scheme_str() == Some("http") && !loopback {
        found.warn(
            field,
            format!(
                "plain http:// to {host:?}, not a loopback host: the app token would cross \
                 the network in clear; use https://"
            ),
        );
    }
}

fn validate_client(
    at: &str,
    client: &RawClient,
    apps: &[&str],
    default_rate: Option<LimitPolicy>,
    forward_other: bool,
    found: &mut Findings,
) -> Option<ClientSettings> {
    let field = |name: &str| format!("{at}.{name}");
    let errors_before = found.errors.len();
    if client.name.is_empty() {
        found.error(field("name"), "must not be empty");
    }
    let key_sha256 = match (&client.key, &client.key_sha256) {
        (Some(key), None) => found
            .take(resolve_secret(&field("key"), key))
            .and_then(|key| {
                let chars = key.expose_secret().chars().count();
                if chars < 8 {
                    found.error(
                        field("key"),
                        format!("must be at least 8 characters, not {chars}"),
                    );
                    return None;
                }
                Some(Sha256::digest(key.expose_secret().as_bytes()).into())
            }),
        (None, Some(hash)) => {
            let parsed = parse_sha256(hash);
            if parsed.is_none() {
                found.error(
                    field("key_sha256"),
                    format!("{hash:?}: must be 64 hex characters"),
                );
            }
            parsed
        }
        (Some(_), Some(_)) => {
            found.error(field("key"), "give one of key and key_sha256, not both");
            None
        }
        (None, None) => {
            found.error(field("key"), "required (or key_sha256)");
            None
        }
    };
    for unknown in client
        .apps
        .iter()
        .flatten()
        .filter(|a| !apps.contains(&a.as_str()))
    {
        found.error(
            field("apps"),
            format!("no app named {unknown:?}; the apps are {}", apps.join(", ")),
        );
    }
    let rate_limit = match client.rate_limit {
        Some(r) => Some(found.take(rate(&field("rate_limit"), r))?),
        None => default_rate,
    };
    let endpoints = match &client.endpoints {
        Some(list) => EndpointSet::from_patterns(list.iter().map(String::as_str))
            .map_err(|p| {
                let names: Vec<_> = Endpoint::ALL.iter().map(|e| e.name()).collect();
                let why = format!(
                    "{p:?} names no endpoint; the endpoints are {}",
                    names.join(", ")
                );
                found.error(field("endpoints"), why);
            })
            .ok(),
        None if forward_other => Some(EndpointSet::KNOWN.with(Endpoint::Other)),
        None => Some(EndpointSet::KNOWN),
    };
    let (key_sha256, endpoints) = (key_sha256?, endpoints?);
    (found.errors.len() == errors_before).then(|| ClientSettings {
        name: client.name.clone(),
        key_sha256,
        apps: client.apps.clone(),
        rate_limit,
        endpoints,
    })
}

fn rate(field: &str, raw: RawRate) -> Result<LimitPolicy, ConfigError> {
    let burst = raw.burst.unwrap_or(raw.per_second);
    if raw.per_second == 0 || burst == 0 {
        return Err(bad(
            field,
            format!(
                "per_second and burst must be greater than 0, not {} and {burst}",
                raw.per_second
            ),
        ));
    }
    Ok(LimitPolicy {
        per_second: raw.per_second,
        burst,
    })
}

fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::TEST_CONFIG as GOOD;
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let raw = RawConfig::parse(text).unwrap();
        let errors = raw.validate().unwrap_err().0;
        errors.iter().map(ToString::to_string).collect()
    }

    fn error_of(text: &str) -> String {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    }

    fn warnings_of(text: &str) -> Vec<String> {
        let settings = RawConfig::parse(text).unwrap().validate().unwrap();
        settings.warnings.iter().map(ToString::to_string).collect()
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
    fn errors_name_the_field_and_the_value() {
        let bad_id = GOOD.replace("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "xyz");
        assert_eq!(
            error_of(&bad_id),
            "apps[0].app_id: \"xyz\": must be 32 hex characters"
        );
        let no_secret = GOOD.replace("client_secret = \"secret\"", "");
        assert_eq!(
            error_of(&no_secret),
            "apps[1].client_secret: required for an easemob app"
        );
        let bad_url = GOOD.replace("http://127.0.0.1:8081", "ftp://x");
        assert_eq!(
            error_of(&bad_url),
            "apps[1].upstream: \"ftp://x\": must start with https:// (or http:// for the emulator)"
        );
        let bad_client_app = GOOD.replace("apps = [\"a\"]", "apps = [\"zz\"]");
        assert_eq!(
            error_of(&bad_client_app),
            "clients[0].apps: no app named \"zz\"; the apps are a, e"
        );
        assert!(RawConfig::parse("[server]\nlisten = 5")
            .unwrap_err()
            .to_string()
            .starts_with("config:"));
        assert_eq!(
            error_of(&format!("{GOOD}\n[server]\nmax_body_bytes = 0")),
            "server.max_body_bytes: must be greater than 0, not 0"
        );
    }

    #[test]
    fn every_error_is_reported_in_one_run() {
        let text = GOOD
            .replace("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "xyz")
            .replace("client_secret = \"secret\"", "")
            .replace("apps = [\"a\"]", "apps = [\"zz\"]")
            + "\n[server]\nmax_body_bytes = 0\n[tokens]\nrefresh_fraction = 2.0\n";
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "server.max_body_bytes",
                "apps[0].app_id",
                "apps[1].client_secret",
                "clients[0].apps",
                "tokens.refresh_fraction",
            ],
            "{errors:#?}"
        );
    }

    /// The connection limits a valid config text sets.
    fn conn_limits_of(text: &str) -> ConnLimits {
        RawConfig::parse(text)
            .unwrap()
            .validate()
            .unwrap()
            .conn_limits
    }

    #[test]
    fn connection_threads_default_to_one_per_core() {
        let cores = crate::shards::cores();
        let of = |text: &str| conn_limits_of(text).conn_threads;
        assert_eq!(of(GOOD), cores);
        assert_eq!(of(&format!("{GOOD}\n[server]\nconn_threads = 0")), 0);
        assert_eq!(of(&format!("{GOOD}\n[server]\nconn_threads = 3")), 3);
        assert_eq!(
            error_of(&format!("{GOOD}\n[server]\nconn_threads = 5000")),
            "server.conn_threads: must be at most 1024, not 5000"
        );
    }

    #[test]
    fn connection_threads_yield_after_250_microseconds_of_work_by_default() {
        let of = |text: &str| conn_limits_of(text).busy_yield;
        assert_eq!(of(GOOD), Some(Duration::from_micros(250)));
        assert_eq!(of(&format!("{GOOD}\n[server]\nbusy_yield_us = 0")), None);
        assert_eq!(
            of(&format!("{GOOD}\n[server]\nbusy_yield_us = 5000")),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            error_of(&format!("{GOOD}\n[server]\nbusy_yield_us = 5000000")),
            "server.busy_yield_us: must be at most 1000000 (0: never), not 5000000"
        );
    }

    #[test]
    fn listeners_may_not_share_a_port() {
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:9000", "[::]:9000"),
        ] {
            let text = format!("{GOOD}\n[server]\nlisten = {listen:?}\nadmin_listen = {admin:?}");
            let error = error_of(&text);
            assert!(
                error.starts_with("server.admin_listen: ")
                    && error.contains(listen)
                    && error.contains(admin),
                "{error}"
            );
        }
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            let text = format!("{GOOD}\n[server]\nlisten = {listen:?}\nadmin_listen = {admin:?}");
            RawConfig::parse(&text).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn duplicates_name_the_value_and_the_first_entry() {
        let twin_app = GOOD.replace("name = \"e\"", "name = \"a\"");
        assert_eq!(
            error_of(&twin_app),
            "apps[1].name: \"a\" is taken by apps[0]"
        );
        let twin_vendor_app = format!(
            "{GOOD}\n[[apps]]\nname = \"a2\"\nvendor = \"agora\"\nupstream = \"https://h.example\"\n\
             app_id = \"A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6\"\n\
             app_certificate = \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\"\n"
        );
        assert_eq!(
            error_of(&twin_vendor_app),
            "apps[2]: vendor app app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6 is taken by apps[0]"
        );
        let twin_clients = format!(
            "{GOOD}\n[[clients]]\nname = \"svc\"\nkey = \"other-key-1\"\n\
             [[clients]]\nname = \"svc3\"\nkey = \"svc-key-123\"\n"
        );
        let errors = errors_of(&twin_clients);
        assert_eq!(
            errors,
            [
                "clients[1].name: \"svc\" is taken by clients[0]",
                "clients[2].key: the same key as clients[0]",
            ]
        );
        assert!(!errors.concat().contains("svc-key-123"), "a key is printed");
    }

    #[test]
    fn unknown_endpoints_list_the_valid_ones() {
        let text = GOOD.replace(
            "app_certificate = \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\"",
            "app_certificate = \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\"\nvendor_quotas = { presense = 10 }",
        );
        let error = error_of(&text);
        assert!(
            error.starts_with("apps[0].vendor_quotas.presense: unknown endpoint \"presense\"; the endpoints are token, offline_msg_count,"),
            "{error}"
        );
        for endpoint in Endpoint::ALL {
            assert!(error.contains(endpoint.name()), "{error}");
        }
    }

    #[test]
    fn risky_settings_are_warnings_not_errors() {
        assert_eq!(
            warnings_of(GOOD),
            ["client_tokens.signing_key: not set: client tokens (POST {prefix}/token) are signed with keys derived from each app's credentials, so changing an app's credentials revokes the tokens issued through it"]
        );
        let risky = GOOD.replace("https://a41.chat.agora.io", "http://a41.chat.agora.io")
            + "\n[admin]\nkey = \"short\"\n";
        let warnings = warnings_of(&risky);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].starts_with("apps[0].upstream: plain http:// to \"a41.chat.agora.io\""));
        assert!(warnings[1].starts_with("admin.key: only 5 characters"));
        assert!(!warnings.concat().contains("short\""), "the key is printed");
        let careful = GOOD.replace("[[clients]]", "[client_tokens]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n[admin]\nkey = \"a-long-enough-admin-key\"\n[[clients]]")
            .replace("http://127.0.0.1:8081", "http://localhost:8081");
        assert_eq!(warnings_of(&careful), Vec::<String>::new());
    }

    #[test]
    fn the_admin_key_may_not_be_a_client_key() {
        let text = format!("{GOOD}\n[admin]\nkey = \"svc-key-123\"\n");
        assert_eq!(
            error_of(&text),
            "admin.key: the same as the key of clients[0]; a backend would hold the admin key"
        );
    }

    #[test]
    fn client_keys_may_be_given_as_sha256() {
        let hash = hex::encode(Sha256::digest(b"svc-key-123"));
        let text = GOOD.replace("key = \"svc-key-123\"", &format!("key_sha256 = \"{hash}\""));
        let s = RawConfig::parse(&text).unwrap().validate().unwrap();
        assert_eq!(hex::encode(s.clients[0].key_sha256), hash);
    }
}
