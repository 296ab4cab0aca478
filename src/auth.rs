//! Caller identity: `Authorization: Bearer <credential>` → the configured client, where the
//! credential is the client's key or a client token that imgate issued for it.
//!
//! Keys are stored only as SHA-256 digests and compared digest to digest in constant time,
//! against every client, so timing tells nothing about which keys exist.
//!
//! Client tokens let a backend that uses a vendor SDK move behind imgate by changing only its
//! base URL and credentials: the SDK's `POST {prefix}/token` with the client's name and key gets
//! a signed, expiring token naming the client and the app it was issued through. The signature
//! covers the client's key digest, so changing a client's key invalidates its tokens. The
//! signing key is configured, or derived from the app's credentials ([`ClientTokenKey`]): a
//! token then works on every replica and after every restart with the same configuration.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};
use subtle::ConstantTimeEq;

use crate::cluster::quota::LeasedLimit;
use crate::cluster::Cluster;
use crate::config::ClientSettings;
use crate::limit::{LocalLimit, Permits};
use crate::route::{Endpoint, EndpointSet};
use crate::shards::Shards;
use crate::token::Credentials;

/// Client tokens start with this, so they are never mistaken for keys.
const CLIENT_TOKEN_PREFIX: &str = "imgt2.";

/// A configured client, as the request path sees it.
pub struct Client {
    /// Its name (metrics and logs; never its key).
    pub name: String,
    key_sha256: [u8; 32],
    /// The keyed hash ([`Clients::fingerprint`]) of its key, once a request has shown it.
    key_seen: OnceLock<[u8; 16]>,
    /// The app indices it may use; `None` for all.
    allowed: Option<Vec<usize>>,
    /// Its quota on imgate; `None` for unlimited.
    pub limit: Option<Permits>,
    /// Its quota as a `RateLimit-Policy` header value, made once per shard: an answer clones
    /// its thread's copy, whose reference count the other cores do not write.
    pub limit_header: Option<Shards<http::HeaderValue>>,
    /// The endpoints it may call.
    endpoints: EndpointSet,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("allowed", &self.allowed)
            .field("limit", &self.limit.as_ref().map(|l| l.policy()))
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Whether this client may call the app at `app_index`.
    pub fn may_use(&self, app_index: usize) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|apps| apps.contains(&app_index))
    }

    /// Whether this client may call `endpoint` (the token endpoint is answered by imgate).
    pub fn may_call(&self, endpoint: Endpoint) -> bool {
        endpoint == Endpoint::Token || self.endpoints.contains(endpoint)
    }
}

/// Every configured client.
#[derive(Debug, Default)]
pub struct Clients {
    list: Vec<Client>,
    by_name: HashMap<String, usize>,
    /// The secret of the keyed hash that recognises keys already verified.
    fingerprint_keys: FingerprintKeys,
}

/// Two random 64-bit SipHash keys, made once per set of clients and never shown.
#[derive(Debug)]
struct FingerprintKeys(u64, u64);

impl Default for FingerprintKeys {
    fn default() -> Self {
        FingerprintKeys(rand::random(), rand::random())
    }
}

impl Clients {
    /// Builds the lookup; `app_index` maps an app name to its index. With a `cluster`, each
    /// client's quota holds for the whole fleet.
    pub fn new(
        settings: &[ClientSettings],
        app_index: impl Fn(&str) -> Option<usize>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Clients {
        let mut clients = Clients::default();
        for (i, c) in settings.iter().enumerate() {
            let allowed = c
                .apps
                .as_ref()
                .map(|names| names.iter().filter_map(|n| app_index(n)).collect());
            clients.list.push(Client {
                name: c.name.clone(),
                key_sha256: c.key_sha256,
                key_seen: OnceLock::new(),
                allowed,
                limit: c.rate_limit.map(|policy| match cluster {
                    Some(cluster) => Permits::Leased(LeasedLimit::new(cluster, &c.name, policy)),
                    None => Permits::Local(LocalLimit::new(policy)),
                }),
                limit_header: c
                    .rate_limit
                    .map(|policy| Shards::new(|| policy.header_value())),
                endpoints: c.endpoints,
            });
            clients.by_name.insert(c.name.clone(), i);
        }
        clients
    }

    /// The client whose key or client token the request carries, if any. `now_unix` is read
    /// only for a client token (a key needs no clock).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        tokens: &ClientTokenKey,
        now_unix: impl FnOnce() -> u64,
    ) -> Option<&Client> {
        let credential = bearer(headers)?;
        match credential.strip_prefix(CLIENT_TOKEN_PREFIX) {
            Some(token) => tokens.verify(token, now_unix(), |name| self.by_name(name)),
            None => self.by_key(credential),
        }
    }

    /// The client with this key (compared in constant time against every client). A key
    /// verified once is recognised by its keyed 128-bit hash (SipHash-1-3 under this set of
    /// clients' secret keys) instead of a SHA-256 per request: a forged match would need the
    /// secret, and a wrong key still pays the SHA-256 every time.
    pub fn by_key(&self, key: &str) -> Option<&Client> {
        let fingerprint = self.fingerprint(key);
        let seen = self
            .list
            .iter()
            .fold(None, |found, c| match c.key_seen.get() {
                Some(seen) if bool::from(seen.ct_eq(&fingerprint)) => Some(c),
                _ => found,
            });
        if seen.is_some() {
            return seen;
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = self.list.iter().fold(None, |found, c| {
            if digests_equal(&c.key_sha256, &digest) {
                Some(c)
            } else {
                found
            }
        })?;
        // Only the client's own key gets here, so the cell never holds another fingerprint.
        let _ = found.key_seen.set(fingerprint);
        Some(found)
    }

    /// The keyed hash that recognises a key already verified.
    fn fingerprint(&self, key: &str) -> [u8; 16] {
        let FingerprintKeys(k0, k1) = self.fingerprint_keys;
        let mut hasher = SipHasher13::new_with_keys(k0, k1);
        hasher.write(key.as_bytes());
        hasher.finish128().as_bytes()
    }

    /// The client named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Client> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    /// The names of the clients of `new` that are not here or differ (key, apps, quota), and
    /// of the clients here that `new` lacks.
    pub fn changes<'a>(&self, new: &'a Clients) -> (Vec<&'a str>, Vec<&str>) {
        let changed = new
            .list
            .iter()
            .filter(|c| self.by_name(&c.name).is_none_or(|old| !old.same_as(c)))
            .map(|c| c.name.as_str())
            .collect();
        let removed = self
            .list
            .iter()
            .filter(|c| new.by_name(&c.name).is_none())
            .map(|c| c.name.as_str())
            .collect();
        (changed, removed)
    }
}

impl Client {
    /// Whether both have the same key, apps, endpoints and quota.
    fn same_as(&self, other: &Client) -> bool {
        self.key_sha256 == other.key_sha256
            && self.allowed == other.allowed
            && self.endpoints == other.endpoints
            && self.limit.as_ref().map(|l| l.policy()) == other.limit.as_ref().map(|l| l.policy())
    }

    /// Whether `key` is this client's key (constant time).
    pub fn has_key(&self, key: &str) -> bool {
        digests_equal(&self.key_sha256, &Sha256::digest(key.as_bytes()).into())
    }
}

/// Compares two digests in constant time.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Wrong credentials per source address, counted in a fixed window: past the limit a source
/// is refused before its credentials are checked, so secrets cannot be guessed at full speed.
pub struct FailureLimit {
    max: u32,
    window: Duration,
    recent: moka::future::Cache<IpAddr, Arc<Failures>>,
}

struct Failures {
    since: Instant,
    count: AtomicU32,
}

impl FailureLimit {
    /// At most `max` failures per source and minute; at most 100,000 sources tracked.
    pub fn new(max: u32) -> FailureLimit {
        let window = Duration::from_secs(60);
        FailureLimit {
            max,
            window,
            recent: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window)
                .build(),
        }
    }

    /// How long `source` must wait, if it is over its limit now.
    pub async fn blocked(&self, source: IpAddr) -> Option<Duration> {
        let failures = self.recent.get(&source).await?;
        (failures.count.load(Ordering::Relaxed) >= self.max)
            .then(|| self.window.saturating_sub(failures.since.elapsed()))
    }

    /// Counts one failure of `source`.
    pub async fn record(&self, source: IpAddr) {
        let fresh = async {
            Arc::new(Failures {
                since: Instant::now(),
                count: AtomicU32::new(0),
            })
        };
        let failures = self.recent.get_with(source, fresh).await;
        failures.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The HKDF purpose of client-token keys derived from app credentials.
const CLIENT_TOKEN_PURPOSE: &str = "imgate client-token signing key v1";

/// The keys that sign and check client tokens: the configured `signing_key` for every app, or
/// else one key per app derived from the app's credentials. Derived keys are stable across
/// restarts, reloads and replicas that share the configuration, yet only the configuration's
/// secrets yield them; the token names the app that issued it, so adding or changing one app
/// leaves the tokens issued through the others valid.
pub struct ClientTokenKey {
    configured: Option<Vec<u8>>,
    /// By [`app_tag`].
    derived: HashMap<[u8; APP_TAG_LEN], [u8; 32]>,
}

/// Bytes of a token that name its app.
const APP_TAG_LEN: usize = 8;

/// What a token carries to name the app it was issued through: a fixed-size digest of its
/// name, so that any name fits.
fn app_tag(app: &str) -> [u8; APP_TAG_LEN] {
    let digest = Sha256::digest(app.as_bytes());
    let mut tag = [0u8; APP_TAG_LEN];
    tag.copy_from_slice(&digest[..APP_TAG_LEN]);
    tag
}

impl std::fmt::Debug for ClientTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTokenKey([REDACTED])")
    }
}

impl ClientTokenKey {
    /// The configured key, or else keys derived from each app's credentials.
    pub fn new<'a>(
        configured: Option<&SecretString>,
        apps: impl IntoIterator<Item = (&'a str, &'a Credentials)>,
    ) -> ClientTokenKey {
        match configured {
            Some(secret) => ClientTokenKey {
                configured: Some(secret.expose_secret().as_bytes().to_vec()),
                derived: HashMap::new(),
            },
            None => ClientTokenKey {
                configured: None,
                derived: apps
                    .into_iter()
                    .map(|(name, c)| (app_tag(name), c.derive_key(CLIENT_TOKEN_PURPOSE)))
                    .collect(),
            },
        }
    }

    fn key(&self, app_tag: &[u8]) -> Option<&[u8]> {
        match &self.configured {
            Some(key) => Some(key),
            None => self.derived.get(app_tag).map(|k| &k[..]),
        }
    }

    /// A token for `client`, issued through `app`, valid until `now_unix + ttl`; `None` when
    /// there is no key for `app`.
    pub fn issue(
        &self,
        client: &Client,
        app: &str,
        now_unix: u64,
        ttl: Duration,
    ) -> Option<String> {
        let tag = app_tag(app);
        let mut payload = now_unix
            .saturating_add(ttl.as_secs())
            .to_le_bytes()
            .to_vec();
        payload.extend_from_slice(&tag);
        payload.extend_from_slice(client.name.as_bytes());
        let mac = self
            .mac(self.key(&tag)?, &payload, &client.key_sha256)
            .finalize()
            .into_bytes();
        Some(format!(
            "{CLIENT_TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// The client a token (without its prefix) names, if the signature holds and it has not
    /// expired.
    fn verify<'c>(
        &self,
        token: &str,
        now_unix: u64,
        client_named: impl Fn(&str) -> Option<&'c Client>,
    ) -> Option<&'c Client> {
        let (payload, mac) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expiry = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        let tag = payload.get(8..8 + APP_TAG_LEN)?;
        let client = client_named(std::str::from_utf8(&payload[8 + APP_TAG_LEN..]).ok()?)?;
        self.mac(self.key(tag)?, &payload, &client.key_sha256)
            .verify_slice(&mac)
            .ok()?;
        (now_unix < expiry).then_some(client)
    }

    fn mac(&self, key: &[u8], payload: &[u8], key_sha256: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(payload);
        mac.update(key_sha256);
        mac
    }
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive, the
/// credential ASCII). Read as bytes: every request pays for it.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, credential) = (&value[..space], value[space + 1..].trim_ascii());
    if !scheme.eq_ignore_ascii_case(b"bearer") || credential.is_empty() {
        return None;
    }
    // As `HeaderValue::to_str` would: a header value is visible ASCII and tabs, or obs-text.
    std::str::from_utf8(credential)
        .ok()
        .filter(|c| c.is_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn clients() -> Clients {
        let settings = vec![
            ClientSettings {
                name: "all".into(),
                key_sha256: Sha256::digest(b"key-all").into(),
                apps: None,
                rate_limit: None,
                endpoints: EndpointSet::KNOWN,
            },
            ClientSettings {
                name: "one".into(),
                key_sha256: Sha256::digest(b"key-one").into(),
                apps: Some(vec!["b".into()]),
                rate_limit: None,
                endpoints: EndpointSet::KNOWN,
            },
        ];
        Clients::new(
            &settings,
            |name| ["a", "b"].iter().position(|n| *n == name),
            None,
        )
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn credentials(secret: &str) -> Credentials {
        Credentials::easemob_for_tests(secret)
    }

    /// Keys derived from the credentials of apps `a` and `b` (secrets `sa` and `sb`).
    fn derived(sa: &str, sb: &str) -> ClientTokenKey {
        let (a, b) = (credentials(sa), credentials(sb));
        ClientTokenKey::new(None, [("a", &a), ("b", &b)])
    }

    fn authenticate<'c>(c: &'c Clients, value: &str) -> Option<&'c Client> {
        let h = if value.is_empty() {
            HeaderMap::new()
        } else {
            headers(value)
        };
        c.authenticate(&h, &derived("sa", "sb"), || 1_000)
    }

    #[test]
    fn a_known_key_names_its_client() {
        let c = clients();
        assert_eq!(authenticate(&c, "Bearer key-all").unwrap().name, "all");
        assert_eq!(authenticate(&c, "bearer  key-one ").unwrap().name, "one");
    }

    #[test]
    fn a_key_seen_before_is_recognised_again_and_no_other_key_with_it() {
        let c = clients();
        for _ in 0..3 {
            assert_eq!(c.by_key("key-all").unwrap().name, "all");
            assert_eq!(c.by_key("key-one").unwrap().name, "one");
            assert!(c.by_key("key-al").is_none());
            assert!(c.by_key("key-all ").is_none());
        }
        let all = c.by_name("all").unwrap();
        assert_eq!(all.key_seen.get(), Some(&c.fingerprint("key-all")));
        assert_ne!(c.fingerprint("key-all"), clients().fingerprint("key-all"));
    }

    #[test]
    fn missing_unknown_or_malformed_credentials_are_refused() {
        let c = clients();
        for value in [
            "",
            "Bearer nope",
            "Basic key-all",
            "Bearer ",
            "Bearer imgt2.x.y",
            "Bearer imgt2.AAAAAAAAAAAA.x",
        ] {
            assert!(authenticate(&c, value).is_none(), "{value}");
        }
    }

    #[test]
    fn the_bearer_credential_is_what_the_header_as_text_says() {
        // The plain reading of the header, which `bearer` does on bytes.
        fn as_text(value: &HeaderValue) -> Option<&str> {
            let (scheme, credential) = value.to_str().ok()?.split_once(' ')?;
            let credential = credential.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
        }
        let values: [&[u8]; 12] = [
            b"Bearer key",
            b"bEaReR  key\t",
            b"Bearer\tkey",
            b"Bearer a\tb",
            b"Bearer \t ",
            b"Bearerkey",
            b"Bearer key\xc3\xa9",
            b"Bear\xc3\xa9r key",
            b"Basic key",
            b" Bearer key",
            b"Bearer key with spaces",
            b"",
        ];
        for value in values {
            let value = HeaderValue::from_bytes(value).unwrap();
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.clone());
            assert_eq!(bearer(&h), as_text(&value), "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_source_over_its_failure_limit_is_blocked_and_others_are_not() {
        let limit = FailureLimit::new(2);
        let (one, other): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        limit.record(one).await;
        assert!(limit.blocked(one).await.is_none());
        limit.record(one).await;
        let wait = limit
            .blocked(one)
            .await
            .expect("blocked after two failures");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(limit.blocked(other).await.is_none());
    }

    #[test]
    fn clients_are_limited_to_their_apps() {
        let c = clients();
        let one = authenticate(&c, "Bearer key-one").unwrap();
        assert!(!one.may_use(0) && one.may_use(1));
        let all = authenticate(&c, "Bearer key-all").unwrap();
        assert!(all.may_use(0) && all.may_use(1));
    }

    fn issue(key: &ClientTokenKey, c: &Clients, app: &str) -> HeaderMap {
        let token = key
            .issue(
                c.by_name("one").unwrap(),
                app,
                1_000,
                Duration::from_secs(60),
            )
            .unwrap();
        headers(&format!("Bearer {token}"))
    }

    #[test]
    fn client_tokens_name_their_client_until_they_expire() {
        let c = clients();
        let key = derived("sa", "sb");
        let h = issue(&key, &c, "b");
        assert_eq!(c.authenticate(&h, &key, || 1_059).unwrap().name, "one");
        assert!(c.authenticate(&h, &key, || 1_060).is_none(), "expired");
        let configured = ClientTokenKey::new(Some(&SecretString::from("k".repeat(32))), []);
        assert!(
            c.authenticate(&h, &configured, || 1_000).is_none(),
            "another signing key"
        );
        let h = issue(&configured, &c, "unknown-app");
        assert_eq!(
            c.authenticate(&h, &configured, || 1_000).unwrap().name,
            "one"
        );
    }

    #[test]
    fn derived_keys_survive_restarts_and_follow_the_issuing_apps_credentials() {
        let c = clients();
        let h = issue(&derived("sa", "sb"), &c, "b");
        // A restart, or another replica with the same configuration.
        assert_eq!(
            c.authenticate(&h, &derived("sa", "sb"), || 1_000)
                .unwrap()
                .name,
            "one"
        );
        // Another app's credentials changed: tokens issued through b still hold.
        assert!(c
            .authenticate(&h, &derived("new", "sb"), || 1_000)
            .is_some());
        // b's credentials changed: its tokens stop working.
        assert!(c
            .authenticate(&h, &derived("sa", "new"), || 1_000)
            .is_none());
        // An app no longer configured issued it.
        let only_a = credentials("sa");
        let key = ClientTokenKey::new(None, [("a", &only_a)]);
        assert!(c.authenticate(&h, &key, || 1_000).is_none());
        assert!(key
            .issue(
                c.by_name("one").unwrap(),
                "b",
                1_000,
                Duration::from_secs(1)
            )
            .is_none());
    }

    #[test]
    fn forged_or_rekeyed_client_tokens_are_refused() {
        let c = clients();
        let key = derived("sa", "sb");
        let token = key
            .issue(
                c.by_name("one").unwrap(),
                "b",
                1_000,
                Duration::from_secs(60),
            )
            .unwrap();
        let (payload, mac) = token
            .trim_start_matches(CLIENT_TOKEN_PREFIX)
            .split_once('.')
            .unwrap();
        // Claim another client's name, or another app, with the same signature.
        let decoded = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let mut other_client = decoded.clone();
        other_client.truncate(8 + APP_TAG_LEN);
        other_client.extend_from_slice(b"all");
        let mut other_app = decoded;
        other_app[8..8 + APP_TAG_LEN].copy_from_slice(&app_tag("a"));
        for forged in [other_client, other_app] {
            let forged = format!(
                "Bearer {CLIENT_TOKEN_PREFIX}{}.{mac}",
                URL_SAFE_NO_PAD.encode(forged)
            );
            assert!(c.authenticate(&headers(&forged), &key, || 1_000).is_none());
        }
        // The same client name with a new key: its old tokens stop working.
        let rekeyed = Clients::new(
            &[ClientSettings {
                name: "one".into(),
                key_sha256: Sha256::digest(b"new-key").into(),
                apps: None,
                rate_limit: None,
                endpoints: EndpointSet::KNOWN,
            }],
            |_| None,
            None,
        );
        let h = headers(&format!("Bearer {token}"));
        assert!(rekeyed.authenticate(&h, &key, || 1_000).is_none());
    }
}
