//! Classification of a vendor request: method + path → (app, [`Endpoint`], path parameters).
//!
//! Pure: a path is decoded once into its canonical segments ([`Path`]), allocating only for
//! segments that carry percent escapes; routes borrow from it. The gateway and the emulator
//! share it, so both agree on what each path means.

use std::borrow::Cow;

use http::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The app a path addresses, in the vendor's own identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppRef<'a> {
    /// Agora Chat: `/app-id/{app_id}/…`.
    Agora { app_id: &'a str },
    /// Easemob: `/{org_name}/{app_name}/…`.
    Easemob { org: &'a str, app: &'a str },
}

/// The vendor endpoints that imgate and the emulator tell apart (numbered as in
/// docs/vendor-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST {prefix}/token`: client-credentials app token (Easemob).
    Token,
    /// 1. `GET users/{u}/offline_msg_count`.
    OfflineMsgCount,
    /// 2. `GET users/{u}/offline_msg_status/{msg_id}`.
    OfflineMsgStatus,
    /// 3. `POST users/{u}/presence/{resource}/{status}`.
    PresenceSet,
    /// 4. `POST users/{u}/presence/{expiry}`.
    PresenceSubscribe,
    /// 5. `POST users/{u}/presence`.
    PresenceBatchGet,
    /// 6. `DELETE users/{u}/presence`.
    PresenceUnsubscribe,
    /// 7. `GET users/{u}/presence/sublist`.
    PresenceSublist,
    /// 8. `POST messages/users`, or the legacy `POST messages` (then [`Route::param`] is
    ///    [`LEGACY_SEND`]).
    MessagesSend,
    /// Anything else under an app prefix.
    Other,
}

impl Endpoint {
    /// Every endpoint, in a fixed order (the index of [`Endpoint::index`]).
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Token,
        Endpoint::OfflineMsgCount,
        Endpoint::OfflineMsgStatus,
        Endpoint::PresenceSet,
        Endpoint::PresenceSubscribe,
        Endpoint::PresenceBatchGet,
        Endpoint::PresenceUnsubscribe,
        Endpoint::PresenceSublist,
        Endpoint::MessagesSend,
        Endpoint::Other,
    ];

    /// The stable name used in metrics labels, emulator stats and configuration keys.
    pub const fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::OfflineMsgCount => "offline_msg_count",
            Endpoint::OfflineMsgStatus => "offline_msg_status",
            Endpoint::PresenceSet => "presence_set",
            Endpoint::PresenceSubscribe => "presence_subscribe",
            Endpoint::PresenceBatchGet => "presence_batch_get",
            Endpoint::PresenceUnsubscribe => "presence_unsubscribe",
            Endpoint::PresenceSublist => "presence_sublist",
            Endpoint::MessagesSend => "messages_users",
            Endpoint::Other => "other",
        }
    }

    /// Position in [`Endpoint::ALL`], for per-endpoint arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Looks an endpoint up by its [`Endpoint::name`].
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// The [`Route::param`] of a legacy message send, `POST {prefix}/messages`.
pub const LEGACY_SEND: &str = "legacy";
/// A set of endpoints: those a client may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSet(u16);

impl EndpointSet {
    /// Every endpoint imgate knows (all but [`Endpoint::Other`]).
    pub const KNOWN: EndpointSet =
        EndpointSet(((1 << Endpoint::ALL.len()) - 1) & !(1 << Endpoint::Other as u16));

    /// This set and `endpoint`.
    pub const fn with(self, endpoint: Endpoint) -> EndpointSet {
        EndpointSet(self.0 | 1 << endpoint as u16)
    }

    /// Whether `endpoint` is in the set.
    pub const fn contains(self, endpoint: Endpoint) -> bool {
        self.0 & (1 << endpoint as u16) != 0
    }

    /// The endpoints `patterns` name: endpoint names (`offline_msg_count`, `other`, …), or a
    /// prefix followed by `*` (`presence_*`; `*` alone is every endpoint, `other` included).
    /// A pattern that names no endpoint is returned as the error.
    pub fn from_patterns<'p>(
        patterns: impl IntoIterator<Item = &'p str>,
    ) -> Result<EndpointSet, &'p str> {
        let mut set = EndpointSet(0);
        for pattern in patterns {
            let matches = |e: &Endpoint| match pattern.strip_suffix('*') {
                Some(prefix) => e.name().starts_with(prefix),
                None => e.name() == pattern,
            };
            if !Endpoint::ALL.iter().any(matches) {
                return Err(pattern);
            }
            for endpoint in Endpoint::ALL.iter().filter(|e| matches(e)) {
                set = set.with(*endpoint);
            }
        }
        Ok(set)
    }
}

/// A classified request: which app, which endpoint, and the endpoint's path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The app addressed by the path prefix.
    pub app: AppRef<'a>,
    /// The endpoint the rest of the path names.
    pub endpoint: Endpoint,
    /// `{u}` / `{uid}` / `{owner_username}` for user endpoints, else empty.
    pub user: &'a str,
    /// `{msg_id}`, `{resource}` or `{expiry}`, depending on the endpoint; [`LEGACY_SEND`] for
    /// the legacy message send; else empty.
    pub param: &'a str,
    /// `{status}` of a presence set, else empty.
    pub status: &'a str,
}

/// Why a path is refused before routing (400): each would let a caller reach, with the app
/// token, something other than the endpoint the path seems to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.` or `..` segment, plain or percent-encoded.
    #[error("the path has a dot segment")]
    DotSegment,
    /// An encoded `/` or `\\` inside a segment.
    #[error("the path has an encoded slash")]
    EncodedSlash,
    /// A control character, plain or percent-encoded.
    #[error("the path has a control character")]
    Control,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    #[error("the path is not well-formed")]
    Malformed,
}

/// Segments kept decoded in a [`Path`]: the two of the app prefix and up to five more (any
/// more make the path [`Endpoint::Other`]).
const KEPT: usize = 8;

/// A request path, validated and split into percent-decoded segments: the one canonical form
/// that routing, cache keys, invalidation and the forwarded path all use.
#[derive(Debug, Clone)]
pub struct Path<'a> {
    raw: &'a str,
    segments: [Cow<'a, str>; KEPT],
    kept: usize,
    total: usize,
    /// Every segment is plain (nothing to decode, nothing to encode): `raw` is canonical.
    plain: bool,
    /// Where the segments after the app prefix start in `raw` (its length when there are none).
    suffix_at: usize,
}

impl<'a> Path<'a> {
    /// Splits and decodes `raw` (no query string), refusing dot segments, encoded slashes,
    /// control characters and malformed escapes anywhere in it. A path without a leading `/`
    /// has no segments.
    pub fn parse(raw: &'a str) -> Result<Path<'a>, PathError> {
        let mut path = Path {
            raw,
            segments: std::array::from_fn(|_| Cow::Borrowed("")),
            kept: 0,
            total: 0,
            plain: true,
            suffix_at: raw.len(),
        };
        let Some(rest) = raw.strip_prefix('/') else {
            return Ok(path);
        };
        // One pass over the bytes: split at `/`, and note whether a segment has anything to
        // decode (the common case has not, and is borrowed as it is).
        let (mut start, mut plain) = (0, true);
        for (i, &b) in rest.as_bytes().iter().enumerate() {
            if b != b'/' {
                plain &= PLAIN[usize::from(b)];
                continue;
            }
            path.push(&rest[start..i], plain)?;
            if path.total == 2 {
                path.suffix_at = i + 1;
            }
            (start, plain) = (i + 1, true);
        }
        path.push(&rest[start..], plain)?;
        Ok(path)
    }

    /// Adds the next raw segment, decoded unless `plain`.
    fn push(&mut self, segment: &'a str, plain: bool) -> Result<(), PathError> {
        let decoded = if plain {
            check_dots(segment)?;
            Cow::Borrowed(segment)
        } else {
            self.plain = false;
            decode_segment(segment)?
        };
        if self.kept < KEPT {
            self.segments[self.kept] = decoded;
            self.kept += 1;
        }
        self.total += 1;
        Ok(())
    }

    /// Classifies the path for `method`. `None` when it has no app prefix.
    pub fn classify(&self, method: &Method) -> Option<Route<'_>> {
        let segments = &self.segments[..self.kept];
        let first = segments.first().filter(|s| !s.is_empty())?;
        let second = segments.get(1).filter(|s| !s.is_empty())?;
        let app = if first == "app-id" {
            AppRef::Agora { app_id: second }
        } else {
            AppRef::Easemob {
                org: first,
                app: second,
            }
        };
        if self.total > 7 {
            return Some(Route::other(app));
        }
        let mut rest = [""; 5];
        for (slot, segment) in rest.iter_mut().zip(&segments[2..]) {
            *slot = segment;
        }
        Some(match_suffix(app, method, &rest[..self.kept - 2]))
    }

    /// The segments after the app prefix, re-encoded: e.g. `/users/u1/offline_msg_count`, the
    /// vendor's `path` field; empty when there are none. Borrowed from the request's path
    /// when that is canonical already.
    pub fn suffix(&self) -> Cow<'a, str> {
        if self.plain {
            return Cow::Borrowed(&self.raw[self.suffix_at..]);
        }
        let raw = suffix(self.raw);
        // A segment is canonical when it encodes to itself. (A borrowed encoding alone is not
        // enough: a segment of one byte to escape, like `"`, encodes to one borrowed `%22`.)
        let canonical = raw.split('/').skip(1).all(
            |s| matches!(Cow::from(utf8_percent_encode(s, SEGMENT)), Cow::Borrowed(e) if e == s),
        );
        if canonical {
            return Cow::Borrowed(raw);
        }
        let mut out = String::with_capacity(raw.len() + 8);
        for segment in raw.split('/').skip(1) {
            out.push('/');
            if let Ok(decoded) = decode_segment(segment) {
                out.extend(utf8_percent_encode(&decoded, SEGMENT));
            }
        }
        Cow::Owned(out)
    }
}

/// The part of a raw path after its two app-prefix segments (`/app-id/{id}` or `/{org}/{app}`),
/// e.g. `/users/u1/offline_msg_count`, as it was sent.
pub fn suffix(path: &str) -> &str {
    path.match_indices('/')
        .nth(2)
        .map_or("", |(i, _)| &path[i..])
}

/// The punctuation of RFC 3986's `pchar` (unreserved and sub-delims, `:` and `@`).
const PCHAR_PUNCTUATION: &[u8] = b"-._~!$&'()*+,;=:@";

/// Bytes a path segment carries percent-encoded: all but RFC 3986's `pchar`s.
const SEGMENT: &AsciiSet = &{
    let mut set = NON_ALPHANUMERIC.union(AsciiSet::EMPTY);
    let mut i = 0;
    while i < PCHAR_PUNCTUATION.len() {
        set = set.remove(PCHAR_PUNCTUATION[i]);
        i += 1;
    }
    set
};

/// `PLAIN[b]`: byte `b` stands for itself in a canonical segment (the complement of
/// [`SEGMENT`], as a table: the common case is checked in one pass without decoding).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < PCHAR_PUNCTUATION.len() {
        table[PCHAR_PUNCTUATION[i] as usize] = true;
        i += 1;
    }
    table
};

/// One decoded segment, percent-encoded for a path (the inverse of the decoding in
/// [`Path::parse`]).
pub fn encode_segment(segment: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(segment, SEGMENT)
}

fn check_dots(decoded: &str) -> Result<(), PathError> {
    if decoded == "." || decoded == ".." {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

fn decode_segment(segment: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = segment.as_bytes();
    for (i, _) in segment.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3).ok_or(PathError::Malformed)?;
        if !escape.iter().all(u8::is_ascii_hexdigit) {
            return Err(PathError::Malformed);
        }
    }
    let decoded = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| PathError::Malformed)?;
    check_dots(&decoded)?;
    if decoded.contains(['/', '\\']) {
        return Err(PathError::EncodedSlash);
    }
    if decoded.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    Ok(decoded)
}

fn match_suffix<'a>(app: AppRef<'a>, method: &Method, rest: &[&'a str]) -> Route<'a> {
    let route = |endpoint, user, param, status| Route {
        app,
        endpoint,
        user,
        param,
        status,
    };
    let nonempty = |s: &&str| !s.is_empty();
    match (method, rest) {
        (&Method::POST, ["token"]) => route(Endpoint::Token, "", "", ""),
        (&Method::POST, ["messages", "users"]) => route(Endpoint::MessagesSend, "", "", ""),
        // The legacy Easemob send (`target_type`, `target`, `msg`), still used by older SDKs.
        (&Method::POST, ["messages"]) => route(Endpoint::MessagesSend, "", LEGACY_SEND, ""),
        (&Method::GET, ["users", u, "offline_msg_count"]) if nonempty(u) => {
            route(Endpoint::OfflineMsgCount, u, "", "")
        }
        (&Method::GET, ["users", u, "offline_msg_status", id]) if nonempty(u) && nonempty(id) => {
            route(Endpoint::OfflineMsgStatus, u, id, "")
        }
        (&Method::POST, ["users", u, "presence"]) if nonempty(u) => {
            route(Endpoint::PresenceBatchGet, u, "", "")
        }
        (&Method::DELETE, ["users", u, "presence"]) if nonempty(u) => {
            route(Endpoint::PresenceUnsubscribe, u, "", "")
        }
        (&Method::GET, ["users", u, "presence", "sublist"]) if nonempty(u) => {
            route(Endpoint::PresenceSublist, u, "", "")
        }
        (&Method::POST, ["users", u, "presence", expiry]) if nonempty(u) && nonempty(expiry) => {
            route(Endpoint::PresenceSubscribe, u, expiry, "")
        }
        (&Method::POST, ["users", u, "presence", resource, status])
            if nonempty(u) && nonempty(resource) && nonempty(status) =>
        {
            route(Endpoint::PresenceSet, u, resource, status)
        }
        _ => Route::other(app),
    }
}

impl<'a> Route<'a> {
    fn other(app: AppRef<'a>) -> Route<'a> {
        Route {
            app,
            endpoint: Endpoint::Other,
            user: "",
            param: "",
            status: "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The endpoint of `method` + `path`; `None` when the path is refused or has no prefix.
    fn endpoint_of(method: &Method, path: &str) -> Option<Endpoint> {
        Some(Path::parse(path).ok()?.classify(method)?.endpoint)
    }

    fn endpoint(method: Method, path: &str) -> Endpoint {
        endpoint_of(&method, path).expect("has a prefix")
    }

    #[test]
    fn plain_bytes_are_exactly_those_left_unencoded() {
        for b in 0..=255u8 {
            let encoded = percent_encoding::percent_encode(&[b], SEGMENT).to_string();
            assert_eq!(
                PLAIN[usize::from(b)],
                encoded.as_bytes() == [b],
                "byte {b:#04x}"
            );
        }
    }

    #[test]
    fn agora_prefix_names_the_app_id() {
        let path = Path::parse("/app-id/abc/users/u1/offline_msg_count").unwrap();
        let r = path.classify(&Method::GET).unwrap();
        assert_eq!(r.app, AppRef::Agora { app_id: "abc" });
        assert_eq!(r.endpoint, Endpoint::OfflineMsgCount);
        assert_eq!(r.user, "u1");
    }

    #[test]
    fn easemob_prefix_names_org_and_app() {
        let path = Path::parse("/org/app/users/u1/offline_msg_status/42").unwrap();
        let r = path.classify(&Method::GET).unwrap();
        assert_eq!(
            r.app,
            AppRef::Easemob {
                org: "org",
                app: "app"
            }
        );
        assert_eq!(
            (r.endpoint, r.user, r.param),
            (Endpoint::OfflineMsgStatus, "u1", "42")
        );
    }

    #[test]
    fn presence_paths_are_told_apart_by_method_and_depth() {
        let p = "/o/a/users/u/presence";
        assert_eq!(endpoint(Method::POST, p), Endpoint::PresenceBatchGet);
        assert_eq!(endpoint(Method::DELETE, p), Endpoint::PresenceUnsubscribe);
        assert_eq!(
            endpoint(Method::POST, "/o/a/users/u/presence/3600"),
            Endpoint::PresenceSubscribe
        );
        assert_eq!(
            endpoint(Method::GET, "/o/a/users/u/presence/sublist"),
            Endpoint::PresenceSublist
        );
        let path = Path::parse("/o/a/users/u/presence/android_1/1").unwrap();
        let set = path.classify(&Method::POST).unwrap();
        assert_eq!(
            (set.endpoint, set.param, set.status),
            (Endpoint::PresenceSet, "android_1", "1")
        );
    }

    #[test]
    fn token_and_messages_are_recognised_under_both_prefixes() {
        assert_eq!(endpoint(Method::POST, "/o/a/token"), Endpoint::Token);
        assert_eq!(endpoint(Method::POST, "/app-id/x/token"), Endpoint::Token);
        assert_eq!(
            endpoint(Method::POST, "/app-id/x/messages/users"),
            Endpoint::MessagesSend
        );
        let path = Path::parse("/o/a/messages").unwrap();
        let legacy = path.classify(&Method::POST).unwrap();
        assert_eq!(
            (legacy.endpoint, legacy.param),
            (Endpoint::MessagesSend, LEGACY_SEND)
        );
        assert_eq!(endpoint(Method::GET, "/o/a/messages"), Endpoint::Other);
    }

    #[test]
    fn wrong_method_or_unknown_suffix_is_other() {
        assert_eq!(
            endpoint(Method::POST, "/o/a/users/u/offline_msg_count"),
            Endpoint::Other
        );
        assert_eq!(endpoint(Method::GET, "/o/a/chatgroups"), Endpoint::Other);
        assert_eq!(
            endpoint(Method::GET, "/o/a/users/u/presence/a/b/c/d"),
            Endpoint::Other
        );
        assert_eq!(
            endpoint(Method::GET, "/o/a/users//offline_msg_count"),
            Endpoint::Other
        );
    }

    #[test]
    fn paths_without_an_app_prefix_are_not_classified() {
        for path in ["/", "/healthz", "//x", "no-slash"] {
            assert!(endpoint_of(&Method::GET, path).is_none(), "{path}");
        }
    }

    #[test]
    fn segments_are_decoded_once_and_re_encoded_canonically() {
        let path = Path::parse("/app-id/x/users/b%6Fb%20%E5%BC%A0/offline_msg_count").unwrap();
        let route = path.classify(&Method::GET).unwrap();
        assert_eq!(route.user, "bob 张");
        assert_eq!(route.endpoint, Endpoint::OfflineMsgCount);
        assert_eq!(path.suffix(), "/users/bob%20%E5%BC%A0/offline_msg_count");
        assert_eq!(Path::parse("/o/a").unwrap().suffix(), "");
        // A segment that is one byte to escape (found by fuzzing: it was kept raw).
        for raw in ["/o/a/users/\"/presence", "/o/a/users/%22/presence"] {
            assert_eq!(Path::parse(raw).unwrap().suffix(), "/users/%22/presence");
        }
        assert_eq!(
            Path::parse("/o/a/messages/users").unwrap().suffix(),
            "/messages/users"
        );
    }

    #[test]
    fn dot_segments_encoded_slashes_controls_and_bad_escapes_are_refused() {
        for (path, why) in [
            ("/app-id/x/../../admin", PathError::DotSegment),
            ("/o/a/users/./offline_msg_count", PathError::DotSegment),
            ("/o/a/users/%2e%2E/offline_msg_count", PathError::DotSegment),
            ("/o/%2e/users", PathError::DotSegment),
            (
                "/o/a/users/a%2fb/offline_msg_count",
                PathError::EncodedSlash,
            ),
            (
                "/o/a/users/a%5Cb/offline_msg_count",
                PathError::EncodedSlash,
            ),
            ("/o/a/users/a%00b/offline_msg_count", PathError::Control),
            ("/o/a/users/a%7fb/offline_msg_count", PathError::Control),
            ("/o/a/users/a%C2%85b/x", PathError::Control),
            ("/o/a/users/a%zzb/offline_msg_count", PathError::Malformed),
            ("/o/a/users/a%2/offline_msg_count", PathError::Malformed),
            ("/o/a/users/%FF/offline_msg_count", PathError::Malformed),
            ("/o/a/x/y/z/w/v/u/t/../s", PathError::DotSegment),
        ] {
            assert_eq!(Path::parse(path).unwrap_err(), why, "{path}");
        }
        // Dots inside a segment are ordinary characters.
        assert!(Path::parse("/o/a/users/a..b/offline_msg_count").is_ok());
    }

    #[test]
    fn endpoint_scopes_are_names_or_prefix_patterns() {
        let set = EndpointSet::from_patterns(["offline_msg_*", "presence_batch_get"]).unwrap();
        assert!(
            set.contains(Endpoint::OfflineMsgCount) && set.contains(Endpoint::OfflineMsgStatus)
        );
        assert!(set.contains(Endpoint::PresenceBatchGet));
        assert!(!set.contains(Endpoint::PresenceSet) && !set.contains(Endpoint::Other));
        let all = EndpointSet::from_patterns(["*"]).unwrap();
        assert!(Endpoint::ALL.iter().all(|e| all.contains(*e)));
        assert!(!EndpointSet::KNOWN.contains(Endpoint::Other));
        assert!(EndpointSet::KNOWN.contains(Endpoint::MessagesSend));
        assert!(EndpointSet::KNOWN
            .with(Endpoint::Other)
            .contains(Endpoint::Other));
        assert_eq!(EndpointSet::from_patterns(["users"]), Err("users"));
        assert_eq!(EndpointSet::from_patterns(["nope_*"]), Err("nope_*"));
    }

    #[test]
    fn endpoint_names_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(e.name()), Some(e));
            assert_eq!(Endpoint::ALL[e.index()], e);
        }
    }

    /// Paths made of segments likely to matter: escapes, dots, slashes, controls, non-ASCII.
    fn hostile_path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("users".to_owned()),
            Just("app-id".to_owned()),
            Just("offline_msg_count".to_owned()),
            Just("presence".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e%2E".to_owned()),
            Just("%2F".to_owned()),
            Just("%".to_owned()),
            Just("\"".to_owned()),
            "[a-z%0-9A-F.\\\\ \u{7f}\u{85}张]{0,8}",
            any::<String>(),
        ];
        prop::collection::vec(segment, 0..10).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #[test]
        fn any_path_classifies_without_panic_and_never_routes_a_dot_segment(
            raw in prop_oneof![hostile_path(), any::<String>()],
            method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::DELETE)],
        ) {
            let Ok(path) = Path::parse(&raw) else { return Ok(()) };
            let route = path.classify(&method);
            let suffix = path.suffix();
            for segment in suffix.split('/').skip(1) {
                let decoded = percent_decode_str(segment).decode_utf8().unwrap();
                prop_assert!(decoded != "." && decoded != "..", "{raw} → {suffix}");
                prop_assert!(!decoded.contains(['/', '\\']));
            }
            if let Some(route) = route {
                for part in [route.user, route.param, route.status] {
                    prop_assert!(part != "." && part != "..");
                    prop_assert!(!part.contains(['/', '\\']));
                }
            }
        }

        #[test]
        fn the_one_pass_split_agrees_with_splitting_at_every_slash(
            raw in prop_oneof![hostile_path(), any::<String>()],
        ) {
            let Ok(path) = Path::parse(&raw) else { return Ok(()) };
            let Some(rest) = raw.strip_prefix('/') else { return Ok(()) };
            let split: Vec<&str> = rest.split('/').collect();
            prop_assert_eq!(path.total, split.len());
            for (kept, raw_segment) in path.segments[..path.kept].iter().zip(&split) {
                prop_assert_eq!(kept, &percent_decode_str(raw_segment).decode_utf8().unwrap());
            }
            if path.plain {
                prop_assert_eq!(path.suffix(), suffix(&raw));
            }
        }

        #[test]
        fn the_canonical_path_round_trips(raw in prop_oneof![hostile_path(), any::<String>()]) {
            let Ok(path) = Path::parse(&raw) else { return Ok(()) };
            let prefix: Vec<_> = path.segments[..path.kept.min(2)]
                .iter()
                .map(|s| encode_segment(s).to_string())
                .collect();
            let canonical = format!("/{}{}", prefix.join("/"), path.suffix());
            prop_assume!(path.kept >= 2);
            let again = Path::parse(&canonical).expect("a canonical path parses");
            prop_assert_eq!(&again.segments, &path.segments);
            prop_assert_eq!(again.total, path.total);
            prop_assert_eq!(again.suffix(), path.suffix());
            prop_assert_eq!(
                again.classify(&Method::GET),
                path.classify(&Method::GET)
            );
            // Every canonical path is a valid URI path.
            prop_assert!(canonical.parse::<http::uri::PathAndQuery>().is_ok(), "{canonical}");
        }
    }
}
