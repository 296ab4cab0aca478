//! The admin listener: `/healthz`, `/readyz`, `/metrics`, the status page (`/` and
//! `/status.json`, see [`crate::status`]), and the admin API under `/admin/` (which requires the
//! admin key as `Authorization: Bearer …`).

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::{bearer, digests_equal};
use crate::cache::{Invalidation, Kind};
use crate::gateway::{App, Gateway, Snapshot};
use crate::limit::retry_after_secs;
use crate::route::Endpoint;
use crate::server::{json_response, HttpResponse};
use crate::status;
use crate::token::TokenError;
use crate::vendor::error_body;

/// Answers one admin request.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> HttpResponse {
    let snapshot = gateway.snapshot();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => status::page(),
        (&Method::GET, "/status.json") => status::snapshot_json(gateway).await,
        (&Method::GET, "/healthz") => json_response(200, Bytes::from_static(br#"{"status":"ok"}"#)),
        (&Method::GET, "/readyz") if gateway.is_draining() => {
            json_response(503, Bytes::from_static(br#"{"status":"draining"}"#))
        }
        (&Method::GET, "/readyz") => readiness(&snapshot),
        (&Method::GET, "/metrics") => {
            gateway
                .metrics
                .cache_entries(&gateway.cache.entry_counts().await);
            let mut response = json_response(200, Bytes::from(gateway.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/admin/tokens/rotate") => {
            if let Some(refused) = refusal(&snapshot, &req) {
                return refused;
            }
            rotate(&snapshot, req.uri().query()).await
        }
        (&Method::POST, "/admin/cache/purge") => {
            if let Some(refused) = refusal(&snapshot, &req) {
                return refused;
            }
            purge(gateway, &snapshot, req.uri().query()).await
        }
        _ => error(404, "imgate_no_route", "no admin endpoint at this path"),
    }
}

/// Ready when every app holds a valid token; otherwise 503 naming the degraded apps and why
/// (it turns 200 again by itself once their tokens are renewed).
fn readiness(snapshot: &Snapshot) -> HttpResponse {
    let mut apps = Map::new();
    let mut reasons = Map::new();
    for app in &snapshot.apps {
        let state = match app.tokens.readiness() {
            Ok(()) => "ok",
            Err(reason) => {
                reasons.insert(app.name.clone(), Value::from(reason));
                "degraded"
            }
        };
        apps.insert(app.name.clone(), Value::from(state));
    }
    let body = if reasons.is_empty() {
        json!({"status": "ready", "apps": apps})
    } else {
        json!({"status": "degraded", "apps": apps, "reasons": reasons})
    };
    let status = if reasons.is_empty() { 200 } else { 503 };
    json_response(status, Bytes::from(body.to_string()))
}

/// The answer to an admin request without the admin key; `None` when it carries the key.
fn refusal(snapshot: &Snapshot, req: &Request<Incoming>) -> Option<HttpResponse> {
    let Some(expected) = snapshot.admin_key_sha256 else {
        let why = "the admin API is off: set admin.key";
        return Some(error(403, "imgate_admin_disabled", why));
    };
    let presented: Option<[u8; 32]> =
        bearer(req.headers()).map(|k| Sha256::digest(k.as_bytes()).into());
    let matches = presented.is_some_and(|p| digests_equal(&p, &expected));
    let why = "imgate refused the request: missing or invalid admin key";
    (!matches).then(|| error(401, "unauthorized", why))
}

/// `POST /admin/tokens/rotate[?app=NAME]`: a new token now, for one app or all.
async fn rotate(snapshot: &Snapshot, query: Option<&str>) -> HttpResponse {
    let wanted = param(query, "app");
    let apps: Vec<_> = match wanted.as_deref() {
        Some(name) => match snapshot.app_named(name) {
            Some(app) => vec![app.clone()],
            None => return error(404, "imgate_unknown_app", &format!("no app named {name:?}")),
        },
        None => snapshot.apps.clone(),
    };
    let mut rotated = Vec::new();
    for app in &apps {
        if let Err(err) = app.tokens.rotate().await {
            let message = format!("app {}: {err}", app.name);
            tracing::warn!(app = %app.name, error = %err, "token rotation failed");
            if let TokenError::RotationLimited { retry_after, .. } = err {
                let mut refused = error(429, "imgate_rotation_limited", &message);
                refused.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(retry_after)),
                );
                return refused;
            }
            return error(503, "imgate_token_unavailable", &message);
        }
        rotated.push(app.name.clone());
    }
    tracing::info!(apps = ?rotated, "app tokens rotated");
    json_response(200, Bytes::from(json!({ "rotated": rotated }).to_string()))
}

/// `POST /admin/cache/purge[?app=NAME][&endpoint=NAME][&user=ID]`: drops what matches all
/// the given filters (everything without any).
async fn purge(gateway: &Gateway, snapshot: &Snapshot, query: Option<&str>) -> HttpResponse {
    let given = |name: &str| param(query, name).filter(|v| !v.is_empty());
    let (app_param, endpoint_param, user_param) = (given("app"), given("endpoint"), given("user"));
    let apps: Vec<&App> = match app_param.as_deref() {
        Some(name) => match snapshot.app_named(name) {
            Some(app) => vec![app],
            None => return error(404, "imgate_unknown_app", &format!("no app named {name:?}")),
        },
        None => snapshot.apps.iter().map(|a| &**a).collect(),
    };
    let keys: Vec<&str> = apps.iter().map(|a| a.key.as_str()).collect();
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    let kinds: Vec<Kind> = match endpoint_param.as_deref() {
        Some(name) => match Endpoint::from_name(name).and_then(Kind::cached_by) {
            Some(kind) => vec![kind],
            None => {
                let why = "endpoint must be offline_msg_count, offline_msg_status, presence_batch_get or presence_sublist";
                return error(400, "imgate_bad_request", why);
            }
        },
        None => Kind::ALL.to_vec(),
    };
    let user = user_param.as_deref();
    let everything = user.is_none() && app_param.is_none() && endpoint_param.is_none();
    let changes: Vec<Invalidation<'_>> = if everything {
        vec![Invalidation::All]
    } else {
        keys.iter()
            .flat_map(|&app| {
                kinds.iter().map(move |&kind| match user {
                    Some(user) => Invalidation::User { kind, app, user },
                    None => Invalidation::App { kind, app },
                })
            })
            .collect()
    };
    gateway.cache.invalidate_everywhere(&changes).await;
    let body = json!({"purged": {"apps": names, "endpoints": kinds.iter().map(|k| k.name()).collect::<Vec<_>>(), "user": user_param}});
    json_response(200, Bytes::from(body.to_string()))
}

/// The first value of the query parameter `name`, decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn error(status: u16, name: &str, description: &str) -> HttpResponse {
    let mut response = json_response(status, error_body(name, "ImgateException", description));
    if status == StatusCode::UNAUTHORIZED.as_u16() {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
