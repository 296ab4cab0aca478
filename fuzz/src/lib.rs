//! The bodies of imgate's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! the corpus replay of the root test suite (`tests/fuzz_corpus.rs`, which includes this file).
//!
//! Each target feeds untrusted bytes to imgate's public API the way the gateway does, and
//! asserts what must hold for any input (a failed assertion is a finding, like a panic).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use imgate::cache::presence::{self, BatchError, PresenceApp, SendBatch};
use imgate::cache::{Answer, Cache, CacheStatus, Entry, Fetch, Key, Kind};
use imgate::config::RawConfig;
use imgate::emulator::EmulatorConfig;
use imgate::route::{encode_segment, AppRef, Endpoint, Path, Route, LEGACY_SEND};
use imgate::token::agora::{ParsedToken, TokenSpec, PRIVILEGE_APP, PRIVILEGE_USER};
use imgate::upstream::VendorResponse;
use serde_json::Value;

/// The methods a route input starts with (its first byte picks one).
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::PUT,
    Method::PATCH,
];

/// Route classifier on a request target: `[method byte] target` (`G`, `P`, `D` for GET, POST,
/// DELETE; other bytes pick a method by their value). The target is parsed as the
/// server parses it (`http::Uri`); a classified route must name only pieces of the path, and
/// the path rebuilt from the route must classify the same.
pub fn route(data: &[u8]) {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let method = match m {
        b'G' => &Method::GET,
        b'P' => &Method::POST,
        b'D' => &Method::DELETE,
        n => &METHODS[usize::from(n) % METHODS.len()],
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    let Ok(parsed) = Path::parse(path) else {
        return;
    };
    let Some(route) = parsed.classify(method) else {
        return;
    };
    for piece in [route.user, route.param, route.status] {
        assert!(!piece.contains('/'), "{piece:?} of {path:?}");
        assert!(
            piece != "." && piece != "..",
            "a dot segment routed: {path:?}"
        );
    }
    if route.endpoint == Endpoint::Other {
        return;
    }
    let rebuilt = rebuild(&route);
    let reparsed = Path::parse(&rebuilt).expect("a rebuilt path is canonical");
    assert_eq!(
        reparsed.classify(method),
        Some(route),
        "{path:?} rebuilt as {rebuilt:?}"
    );
    assert_eq!(reparsed.suffix(), parsed.suffix(), "{path:?}");
}

/// The vendor path a classified route stands for.
fn rebuild(route: &Route<'_>) -> String {
    let prefix = match route.app {
        AppRef::Agora { app_id } => format!("/app-id/{}", encode_segment(app_id)),
        AppRef::Easemob { org, app } => format!("/{}/{}", encode_segment(org), encode_segment(app)),
    };
    let (u, param, status) = (
        encode_segment(route.user),
        encode_segment(route.param),
        encode_segment(route.status),
    );
    let rest = match route.endpoint {
        Endpoint::Token => "/token".to_owned(),
        // The legacy send, `POST {prefix}/messages`, is told apart by its param.
        Endpoint::MessagesSend if route.param == LEGACY_SEND => "/messages".to_owned(),
        Endpoint::MessagesSend => "/messages/users".to_owned(),
        Endpoint::OfflineMsgCount => format!("/users/{u}/offline_msg_count"),
        Endpoint::OfflineMsgStatus => format!("/users/{u}/offline_msg_status/{param}"),
        Endpoint::PresenceBatchGet | Endpoint::PresenceUnsubscribe => {
            format!("/users/{u}/presence")
        }
        Endpoint::PresenceSublist => format!("/users/{u}/presence/sublist"),
        Endpoint::PresenceSubscribe => format!("/users/{u}/presence/{param}"),
        Endpoint::PresenceSet => format!("/users/{u}/presence/{param}/{status}"),
        Endpoint::Other => String::new(),
    };
    prefix + &rest
}

/// The app every cache input is about.
const APP: &str = "fuzz-app";
/// [`APP`] as the presence batcher sees it.
const PRESENCE_APP: PresenceApp<'static> = PresenceApp {
    key: APP,
    instance: 1,
};

/// Request bodies of the JSON endpoints through imgate's parsing, caching and merging:
/// `[endpoint byte] request body \n vendor answer`. The byte is `b` (presence batch get), `s`
/// (subscribe), `u` (unsubscribe) or `m` (message send); any other picks one by its value.
pub fn bodies(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (request, answer) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let endpoint = match which {
        b'b' => Endpoint::PresenceBatchGet,
        b's' => Endpoint::PresenceSubscribe,
        b'u' => Endpoint::PresenceUnsubscribe,
        b'm' => Endpoint::MessagesSend,
        n => [
            Endpoint::PresenceBatchGet,
            Endpoint::PresenceSubscribe,
            Endpoint::PresenceUnsubscribe,
            Endpoint::MessagesSend,
        ][usize::from(n) % 4],
    };
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    let answer = Bytes::copy_from_slice(answer);
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let cache = new_cache();
            match endpoint {
                Endpoint::PresenceBatchGet => batch_get(&cache, request, answer).await,
                Endpoint::PresenceSubscribe => subscribe(&cache, request, answer).await,
                Endpoint::PresenceUnsubscribe => unsubscribe(&cache, request, answer).await,
                _ => message(&cache, request, answer).await,
            }
        })
    });
}

/// An empty cache with the demo configuration's policies, merging presence lookups at once.
fn new_cache() -> Arc<Cache> {
    static SETTINGS: std::sync::OnceLock<imgate::cache::CacheSettings> = std::sync::OnceLock::new();
    let settings = SETTINGS.get_or_init(|| {
        let raw = RawConfig::parse(imgate::demo::CONFIG).expect("the demo config parses");
        let mut settings = raw.validate().expect("the demo config is valid").cache;
        settings.batch_window = Duration::ZERO;
        settings
    });
    Arc::new(Cache::new(settings.clone()))
}

/// A vendor that answers 200 with `body` to every call, counting them.
fn vendor(body: Bytes, calls: &Arc<AtomicUsize>) -> impl Fn() -> Fetch + Clone {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(ok_response(body.clone())))) as Fetch
    }
}

fn histogram() -> prometheus::Histogram {
    prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("fuzz", "fuzz"))
        .expect("a valid histogram")
}

/// A batch get as the pipeline runs it: the body parsed as imgate parses it, then answered
/// per user from the cache and merged vendor calls. The answer must list, in request order,
/// exactly the requested users the vendor returned, each entry byte for byte; a second lookup
/// must come from the cache alone when the vendor returned every user.
async fn batch_get(cache: &Arc<Cache>, request: &[u8], answer: Bytes) {
    let Some(users) = presence::parse_request(request, imgate::vendor::MAX_USERNAMES) else {
        return;
    };
    assert!(users.len() <= imgate::vendor::MAX_USERNAMES);
    let calls = Arc::new(AtomicUsize::new(0));
    let fetch = vendor(answer.clone(), &calls);
    let send: SendBatch = Arc::new(move |_caller: &str, _users: &[String]| fetch());
    let sizes = histogram();
    let first = cache
        .presence(PRESENCE_APP, "caller", &users, send.clone(), &sizes)
        .await;
    let entries = presence::split_result(&answer);
    let Some(entries) = entries.filter(|_| !users.is_empty()) else {
        match first {
            Err(BatchError::Vendor(_)) => assert!(!users.is_empty()),
            Ok(answer) => assert!(users.is_empty() && &answer.body[..] == br#"{"result":[]}"#),
            Err(BatchError::Gateway(err)) => panic!("unexpected gateway error: {err}"),
        }
        return;
    };
    let first = match first {
        Ok(answer) => answer,
        Err(_) => panic!("a 200 answer of entries by uid must be merged"),
    };
    let expected: Vec<Bytes> = users
        .iter()
        .filter_map(|u| entries.get(u).cloned())
        .collect();
    assert_eq!(listed(&first.body), expected, "merged answer of {users:?}");
    let vendor_calls = calls.load(Ordering::Relaxed);
    assert_eq!(vendor_calls, 1, "one merged call for {} users", users.len());
    let second = cache
        .presence(PRESENCE_APP, "caller", &users, send, &sizes)
        .await;
    let Ok(second) = second else {
        panic!("the same vendor answer cannot fail the second time");
    };
    assert_eq!(second.body, first.body);
    if users.iter().all(|u| entries.contains_key(u)) {
        assert_eq!(second.status, CacheStatus::Hit);
        assert_eq!(calls.load(Ordering::Relaxed), vendor_calls);
    }
}

/// The entries of a `{"result":[…]}` answer, as their raw bytes.
fn listed(body: &[u8]) -> Vec<Bytes> {
    type Listed = std::collections::BTreeMap<String, Vec<Box<serde_json::value::RawValue>>>;
    let mut listed: Listed = serde_json::from_slice(body).expect("the merged answer is JSON");
    let result = listed
        .remove("result")
        .expect("the merged answer has a result");
    assert!(listed.is_empty(), "only a result: {listed:?}");
    result
        .iter()
        .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
        .collect()
}

/// The parsed form of a fixed, routable path.
fn path_of(path: &'static str) -> Path<'static> {
    Path::parse(path).expect("a canonical path")
}

/// The route of `method` + `path`, which must be `endpoint`.
fn route_of<'p>(path: &'p Path<'static>, method: Method, endpoint: Endpoint) -> Route<'p> {
    let route = path.classify(&method).expect("a routable path");
    assert_eq!(route.endpoint, endpoint);
    route
}

/// A subscription the vendor accepted: its answer's entries become cached presence (without
/// their `expiry`), which a batch get then serves without a vendor call.
async fn subscribe(cache: &Arc<Cache>, request: &[u8], answer: Bytes) {
    let path = path_of("/org/app/users/caller/presence/3600");
    let route = route_of(&path, Method::POST, Endpoint::PresenceSubscribe);
    accepted_write(cache, &route, request, answer.clone()).await;
    let Some(entries) = presence::split_result(&answer) else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let fetch = vendor(Bytes::from_static(br#"{"result":[]}"#), &calls);
    let send: SendBatch = Arc::new(move |_caller: &str, _users: &[String]| fetch());
    let sizes = histogram();
    for (uid, entry) in entries {
        let Ok(Value::Object(mut expected)) = serde_json::from_slice::<Value>(&entry) else {
            continue;
        };
        expected.shift_remove("expiry");
        let users = [uid];
        let got = cache.presence(PRESENCE_APP, "caller", &users, send.clone(), &sizes);
        let Ok(got) = got.await else {
            panic!("a stored entry must be served");
        };
        assert_eq!(got.status, CacheStatus::Hit, "{:?}", users[0]);
        let listed = listed(&got.body);
        assert_eq!(listed.len(), 1);
        let served: Value = serde_json::from_slice(&listed[0]).expect("a served entry is JSON");
        assert_eq!(served, Value::Object(expected));
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

/// An unsubscription the vendor accepted makes the caller's cached subscription list a miss.
async fn unsubscribe(cache: &Arc<Cache>, request: &[u8], answer: Bytes) {
    let path = path_of("/org/app/users/caller/presence");
    let route = route_of(&path, Method::DELETE, Endpoint::PresenceUnsubscribe);
    let key = Key {
        kind: Kind::Sublist,
        app: APP,
        user: "caller",
        extra: "",
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let list = Bytes::from_static(br#"{"result":{"totalnum":"0","sublist":[]}}"#);
    read(cache, &key, &vendor(list.clone(), &calls)).await;
    assert_eq!(read(cache, &key, &vendor(list, &calls)).await, Some(true));
    accepted_write(cache, &route, request, answer).await;
    let list = Bytes::from_static(br#"{"result":{"totalnum":"0","sublist":[]}}"#);
    assert_eq!(read(cache, &key, &vendor(list, &calls)).await, Some(false));
}

/// A message the vendor accepted makes each recipient's cached offline count a miss, and no
/// one else's.
async fn message(cache: &Arc<Cache>, request: &[u8], answer: Bytes) {
    let path = path_of("/org/app/messages/users");
    let route = route_of(&path, Method::POST, Endpoint::MessagesSend);
    let recipients = recipients(request);
    let bystander = "imgate-fuzz-bystander";
    let calls = Arc::new(AtomicUsize::new(0));
    let count = |user: &str| Bytes::from(format!(r#"{{"data":{{"{user}":0}}}}"#));
    // Each user once: a second read of a recipient would rightly be a hit.
    let users: std::collections::BTreeSet<&str> = recipients
        .iter()
        .map(String::as_str)
        .chain([bystander])
        .collect();
    for user in &users {
        let key = count_key(user);
        read(cache, &key, &vendor(count(user), &calls)).await;
    }
    accepted_write(cache, &route, request, answer).await;
    for user in &users {
        let hit = read(cache, &count_key(user), &vendor(count(user), &calls)).await;
        let expected = *user == bystander && !recipients.iter().any(|r| r == bystander);
        assert_eq!(
            hit,
            Some(expected),
            "offline count of {user:?} after {recipients:?}"
        );
    }
}

/// The recipients a message body names, read independently of imgate: the string members of
/// `to`, which is one name or an array of them.
fn recipients(body: &[u8]) -> Vec<String> {
    let to = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("to").map(Value::take));
    let list = match to {
        Some(Value::Array(list)) => list,
        Some(one) => vec![one],
        None => Vec::new(),
    };
    list.iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn count_key(user: &str) -> Key<'_> {
    Key {
        kind: Kind::OfflineCount,
        app: APP,
        user,
        extra: "",
    }
}

/// Reads `key` through the cache: `Some(true)` from the cache, `Some(false)` from the
/// vendor, `None` on an error.
async fn read(
    cache: &Arc<Cache>,
    key: &Key<'_>,
    fetch: &(impl Fn() -> Fetch + Clone),
) -> Option<bool> {
    let path = "/org/app/users/x/offline_msg_count";
    let render = |entry: &Entry| entry.body_bytes(path, "/users/x/offline_msg_count", key.user);
    match cache
        .read(key, path, Instant::now(), render, fetch.clone())
        .await
        .ok()?
    {
        Answer::Cached(_, status) => Some(status == CacheStatus::Hit),
        Answer::Vendor(..) => Some(false),
    }
}

/// A write of `request` on `route` that the vendor accepted with `answer` (200), applied to the
/// cache as the pipeline applies it.
async fn accepted_write(cache: &Arc<Cache>, route: &Route<'_>, request: &[u8], answer: Bytes) {
    let response = ok_response(answer);
    cache
        .after_write(APP, route, request, &response, cache.current_seq())
        .await;
}

/// A 200 answer of the vendor with `body`.
fn ok_response(body: Bytes) -> VendorResponse {
    VendorResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body,
        elapsed: Duration::ZERO,
    }
}

/// The certificate tokens are signed with in the round trips.
const CERTIFICATE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The AccessToken2 parser: `p` + an inflated payload (compressed and encoded here, so the
/// fuzzer works on the layout itself), `s` + a token spec to build and parse back, or any
/// string as a token.
pub fn token(data: &[u8]) {
    match data.split_first() {
        Some((b'p', payload)) => {
            let token = encode(payload);
            if let Ok(parsed) = ParsedToken::parse(&token) {
                check_parsed(&parsed);
            }
        }
        Some((b's', spec)) => round_trip(spec),
        _ => {
            if let Ok(Ok(parsed)) = std::str::from_utf8(data).map(ParsedToken::parse) {
                check_parsed(&parsed);
            }
        }
    }
}

/// `007` + base64(zlib(payload)), the token layout around a payload.
fn encode(payload: &[u8]) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(payload).expect("writing to a Vec");
    let compressed = encoder.finish().expect("writing to a Vec");
    let mut token = String::from("007");
    base64::engine::general_purpose::STANDARD.encode_string(compressed, &mut token);
    token
}

/// What holds for any token that parses: checking it never panics, and a wrong certificate
/// never verifies it.
fn check_parsed(parsed: &ParsedToken) {
    let verified = parsed.verify(CERTIFICATE);
    assert!(!(verified && parsed.verify("00000000000000000000000000000000")));
    for privilege in [PRIVILEGE_APP, PRIVILEGE_USER] {
        if let Some(until) = parsed.valid_until(privilege) {
            assert!(until >= u64::from(parsed.spec.issue_ts));
        }
    }
}

/// A spec from bytes (`issue_ts`, `expire`, `salt` little-endian, then app id and user id
/// separated by a newline) built into a token and parsed back: the same spec, verified by the
/// certificate it was signed with only.
fn round_trip(data: &[u8]) {
    let Some((numbers, strings)) = data.split_at_checked(12) else {
        return;
    };
    let word = |i: usize| u32::from_le_bytes([0, 1, 2, 3].map(|j| numbers[4 * i + j]));
    let text = String::from_utf8_lossy(strings);
    let (app_id, user_id) = match text.split_once('\n') {
        Some((app, user)) => (app.to_owned(), Some(user.to_owned())),
        None => (text.into_owned(), None),
    };
    let spec = TokenSpec {
        app_id,
        issue_ts: word(0),
        expire: word(1),
        salt: word(2),
        user_id,
    };
    let parsed = ParsedToken::parse(&spec.build(CERTIFICATE)).expect("a built token parses");
    check_parsed(&parsed);
    assert!(parsed.verify(CERTIFICATE));
    // An empty user id is carried as none, as the official library reads it.
    let expected = TokenSpec {
        user_id: spec.user_id.clone().filter(|u| !u.is_empty()),
        ..spec.clone()
    };
    assert_eq!(parsed.spec, expected);
    let privilege = if spec.user_id.is_some() {
        PRIVILEGE_USER
    } else {
        PRIVILEGE_APP
    };
    let until = u64::from(spec.issue_ts) + u64::from(spec.expire);
    assert_eq!(parsed.valid_until(privilege), Some(until));
}

/// The mask `to_masked_toml` writes for every secret.
const MASK: &str = "********";

/// The configuration loaders, gateway and emulator, on any TOML text. A gateway config that
/// parses prints (masked) as TOML that parses again with every secret masked. A config naming
/// a `file:` secret is not validated: the machine's files are not fuzz input.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(emulator) = toml::from_str::<EmulatorConfig>(text) {
        let _ = emulator.validate();
    }
    let Ok(raw) = RawConfig::parse(text) else {
        return;
    };
    if !text.contains("file:") {
        let _ = raw.validate();
    }
    let masked = raw.to_masked_toml();
    let reparsed = RawConfig::parse(&masked).expect("the masked config parses");
    let secrets = [&reparsed.admin.key, &reparsed.client_tokens.signing_key]
        .into_iter()
        .chain(
            reparsed
                .apps
                .iter()
                .flat_map(|a| [&a.app_certificate, &a.client_secret]),
        )
        .chain(reparsed.clients.iter().map(|c| &c.key));
    for secret in secrets {
        assert!(secret.as_deref().is_none_or(|s| s == MASK), "{secret:?}");
    }
}
