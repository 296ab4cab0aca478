//! Classification of a vendor request: method + path → (app, [`Endpoint`], path parameters).
//!
//! Pure and allocation-free: every parameter borrows from the request path. The gateway and the
//! emulator share it, so both agree on what each path means.

use http::Method;

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

/// The part of a path after its two app-prefix segments (`/app-id/{id}` or `/{org}/{app}`),
/// e.g. `/users/u1/offline_msg_count`; the vendor's `path` field.
pub fn suffix(path: &str) -> &str {
    path.match_indices('/')
        .nth(2)
        .map_or("", |(i, _)| &path[i..])
}

/// Classifies `method` + `path` (no query string). `None` when the path has no app prefix.
pub fn classify<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let first = segments.next().filter(|s| !s.is_empty())?;
    let second = segments.next().filter(|s| !s.is_empty())?;
    let app = if first == "app-id" {
        AppRef::Agora { app_id: second }
    } else {
        AppRef::Easemob {
            org: first,
            app: second,
        }
    };
    let mut rest = [""; 5];
    let mut len = 0;
    for segment in segments {
        if len == rest.len() {
            return Some(Route::other(app));
        }
        rest[len] = segment;
        len += 1;
    }
    Some(match_suffix(app, method, &rest[..len]))
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

    fn endpoint(method: Method, path: &str) -> Endpoint {
        classify(&method, path).expect("has a prefix").endpoint
    }

    #[test]
    fn agora_prefix_names_the_app_id() {
        let r = classify(&Method::GET, "/app-id/abc/users/u1/offline_msg_count").unwrap();
        assert_eq!(r.app, AppRef::Agora { app_id: "abc" });
        assert_eq!(r.endpoint, Endpoint::OfflineMsgCount);
        assert_eq!(r.user, "u1");
    }

    #[test]
    fn easemob_prefix_names_org_and_app() {
        let r = classify(&Method::GET, "/org/app/users/u1/offline_msg_status/42").unwrap();
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
        let set = classify(&Method::POST, "/o/a/users/u/presence/android_1/1").unwrap();
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
        let legacy = classify(&Method::POST, "/o/a/messages").unwrap();
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
        assert!(classify(&Method::GET, "/").is_none());
        assert!(classify(&Method::GET, "/healthz").is_none());
        assert!(classify(&Method::GET, "//x").is_none());
        assert!(classify(&Method::GET, "no-slash").is_none());
    }

    #[test]
    fn suffix_follows_the_app_prefix() {
        assert_eq!(
            suffix("/app-id/x/users/u/offline_msg_count"),
            "/users/u/offline_msg_count"
        );
        assert_eq!(suffix("/o/a/messages/users"), "/messages/users");
        assert_eq!(suffix("/o/a"), "");
    }

    #[test]
    fn endpoint_names_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(e.name()), Some(e));
            assert_eq!(Endpoint::ALL[e.index()], e);
        }
    }
}
