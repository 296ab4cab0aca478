//! The request path, as named phases in a fixed order (docs/architecture.md):
//!
//! 1. classify: the path decoded once into canonical segments (dot segments, encoded slashes,
//!    control characters → 400 before routing), then method + segments → endpoint
//! 2. authenticate: client key or imgate client token → client (401), then the app (unknown →
//!    404, only now), may use the app (403), may call the endpoint (403); `POST {prefix}/token`
//!    is answered here with a client token, never forwarded
//! 3. limit (client): the client's quota (cache hits count too) → 429 `imgate_rate_limited`
//! 4. cache: offline counts and statuses, subscription lists and presence per user, from the
//!    cache or from one coalesced vendor call ([`crate::cache`])
//! 5. limit (vendor): every call that goes to the vendor takes a permit of the app's quota,
//!    waiting up to `max_wait` ([`crate::forward`]; stale cache entries stand in when it cannot)
//! 6. upstream: the canonical path with an allow-list of the caller's headers, the app token
//!    injected, over the pooled client; on a vendor 401 renew the token once and replay the
//!    (buffered) request once ([`crate::forward`])
//! 7. effects: writes the vendor accepted invalidate or refresh cache entries
//! 8. respond: the vendor's answer verbatim (or rebuilt from the cache), with `X-Cache`, `Age`
//!
//! A request works with the configuration snapshot it started with, whatever reloads happen.
//! Every request, answered or refused, ends in [`handle`]: one metrics record, one access-log line,
//! and `X-Request-Id` on the response. An error becomes a response in one place:
//! [`GatewayError::to_response`].

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use serde_json::{json, Value};

use crate::cache::presence::{self, BatchError, PresenceApp, SendBatch};
use crate::cache::{json_content_type, Answer, CacheStatus, Entry, Fetch, Key, Kind};
use crate::error::GatewayError;
use crate::forward::{VendorCall, X_REQUEST_ID};
use crate::gateway::{App, Gateway, Snapshot};
use crate::limit::{retry_after_secs, Permit};
use crate::logging::{self, AccessRecord};
use crate::metrics::Scope;
use crate::route::{self, Endpoint, Route};
use crate::server::{self, BodyError, HttpResponse};
use crate::trace::{self, RequestId, TraceContext, TRACEPARENT};
use crate::upstream::{forward_headers, UpstreamError, VendorResponse};
use crate::vendor;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static AGE: HeaderName = HeaderName::from_static("age");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What one request did, for its metrics and access-log line.
struct Trace<'g> {
    /// When the request arrived: the one clock reading its cache lookups and `Age` use.
    started: Instant,
    client: &'g str,
    /// The app and endpoint, once classified.
    route: Option<(&'g App, Endpoint)>,
    cache: Option<CacheStatus>,
    vendor_status: Option<u16>,
    vendor_seconds: f64,
    /// The client's `RateLimit-Policy` value, what is left of its quota and seconds until a
    /// permit frees, for the `RateLimit` headers.
    rate: Option<(&'g HeaderValue, u32, u64)>,
    /// Whether a request body may still be arriving (unread): an HTTP/1 connection is then
    /// closed after the answer rather than kept for a body nobody will read.
    body_pending: bool,
    /// Whether the response carries `X-Request-Id` and the `RateLimit` headers already (a
    /// cached answer is made with them).
    headers_complete: bool,
}

impl Trace<'_> {
    /// The app's name, or `-` before classification.
    fn app(&self) -> &str {
        self.route.map_or("-", |(app, _)| app.name.as_str())
    }

    /// The endpoint's name, or `-` before classification.
    fn endpoint(&self) -> &'static str {
        self.route.map_or("-", |(_, endpoint)| endpoint.name())
    }
}

/// Answers one API request from `peer`; never fails (errors become vendor-shaped responses).
pub async fn handle(
    gateway: &Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let started = Instant::now();
    let (caller_id, traceparent) = trace::caller_ids(req.headers(), &X_REQUEST_ID);
    let request_id = RequestId::from_value(caller_id);
    let trace_context = TraceContext::from_value(traceparent, &request_id);
    let method = req.method().clone();
    let version = req.version();
    let snapshot = gateway.snapshot_for_request();
    let mut trace = Trace {
        started,
        client: "-",
        route: None,
        cache: None,
        vendor_status: None,
        vendor_seconds: 0.0,
        rate: None,
        body_pending: false,
        headers_complete: false,
    };
    let ids = Ids {
        request: &request_id,
        trace: trace_context,
    };
    // Boxed: hyper moves the request's future around, and the request path's state is
    // kilobytes; one allocation costs less than copying it on every move.
    let processed = Box::pin(process(
        gateway,
        &snapshot,
        req,
        peer.ip(),
        &ids,
        &mut trace,
    ));
    let mut response = match processed.await {
        Ok(response) => response,
        Err(err) => {
            // Quota refusals are counted in metrics; under overload a line each would flood.
            if err.fault() != crate::error::Fault::Caller && err.retry_after().is_none() {
                tracing::warn!(error = %err, app = trace.app(), endpoint = trace.endpoint(), "request failed");
            }
            let mut response = err.to_response();
            if trace.body_pending && version < http::Version::HTTP_2 {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    gateway.metrics.request(
        trace.client,
        trace.app(),
        trace.endpoint(),
        status.as_str(),
        seconds,
    );
    if let (Some(cache), Some((app, endpoint))) = (trace.cache, trace.route) {
        gateway.metrics.cache_lookup(endpoint, cache);
        app.record_cache(endpoint, cache);
    }
    logging::access(gateway.access_log(), || AccessRecord {
        request_id: request_id.as_str(),
        trace_id: trace_context.trace_id(),
        client: trace.client,
        app: trace.app(),
        endpoint: trace.endpoint(),
        method: method.as_str(),
        status: status.as_u16(),
        cache: trace.cache.map(CacheStatus::label),
        vendor_status: trace.vendor_status,
        vendor_ms: logging::millis(trace.vendor_seconds),
        total_ms: logging::millis(seconds),
    });
    if !trace.headers_complete {
        let headers = response.headers_mut();
        if let Some((policy, remaining, reset)) = trace.rate {
            headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
            headers.insert(RATELIMIT.clone(), rate_limit_value(remaining, reset));
        }
        headers.insert(X_REQUEST_ID.clone(), request_id.into_header_value());
    }
    response
}

/// What identifies a request toward the vendor: its request id and its trace (a `traceparent`
/// is made only for calls that really go to the vendor, not for cache hits).
struct Ids<'r> {
    request: &'r RequestId,
    trace: TraceContext,
}

async fn process<'s>(
    gateway: &Arc<Gateway>,
    snapshot: &'s Snapshot,
    req: Request<Incoming>,
    source: IpAddr,
    ids: &Ids<'_>,
    trace: &mut Trace<'s>,
) -> Result<HttpResponse, GatewayError> {
    let (parts, body) = req.into_parts();
    trace.body_pending = !body.is_end_stream();

    // 1. classify: refused paths never reach routing, let alone the vendor.
    let path = route::Path::parse(parts.uri.path()).map_err(GatewayError::BadPath)?;
    let route = path.classify(&parts.method).ok_or(GatewayError::NoRoute)?;
    if route.endpoint == Endpoint::Token {
        // Never forwarded: the vendor's client credentials are imgate's alone.
        let token = TokenRequest {
            gateway,
            snapshot,
            route,
            parts: &parts,
            source,
        };
        return Box::pin(token.issue(body, trace)).await;
    }

    // 2. authenticate, before an unknown app is refused: an unauthenticated caller learns
    //    nothing about which apps exist (the app labels the request's metrics all the same).
    let app = snapshot.app(route.app);
    trace.route = app.map(|(_, app)| (&**app, route.endpoint));
    let client = snapshot
        .clients
        .authenticate(&parts.headers, &snapshot.client_tokens, vendor::now_secs)
        .ok_or(GatewayError::Unauthenticated)?;
    trace.client = &client.name;
    let (app_index, app) = app.ok_or(GatewayError::UnknownApp)?;
    if !client.may_use(app_index) {
        return Err(GatewayError::Forbidden);
    }
    if !client.may_call(route.endpoint) {
        return Err(GatewayError::EndpointNotForwarded);
    }
    // The vendor would answer 415: no vendor call (nor quota) spent to learn it.
    if !vendor::content_type_accepted(route.endpoint, &parts.headers, !body.is_end_stream()) {
        return Err(GatewayError::UnsupportedMediaType);
    }

    // 3. limit (client)
    if let (Some(limit), Some(header)) = (&client.limit, &client.limit_header) {
        let policy = limit.policy();
        match limit.try_acquire().await {
            Permit::Granted { remaining } => trace.rate = Some((header.local(), remaining, 0)),
            Permit::Denied { retry_after } => {
                trace.rate = Some((header.local(), 0, retry_after_secs(retry_after)));
                gateway.metrics.rate_limited(Scope::Client);
                return Err(GatewayError::RateLimited {
                    per_second: policy.per_second,
                    retry_after,
                });
            }
        }
    }
    // Boxed, like every branch off the cache-hit path, so that the request's future (which
    // hyper moves around) stays small.
    let body = if trace.body_pending {
        Box::pin(read_request_body(gateway, snapshot, body, trace)).await?
    } else {
        Bytes::new()
    };
    let call = Call {
        gateway,
        app,
        route,
        path: &path,
        parts: &parts,
        ids,
    };

    // 4. cache
    if let Some(kind) = Kind::of(route.endpoint) {
        return call.cached_read(kind, trace).await;
    }
    if route.endpoint == Endpoint::PresenceBatchGet {
        if let Some(users) = presence::parse_request(&body, vendor::MAX_USERNAMES) {
            return Box::pin(call.presence_read(&users, trace)).await;
        }
    }

    // 6. upstream
    let seq = gateway.cache.current_seq();
    let response = call.vendor(Bytes::clone(&body), false)?.await?;
    trace.vendor_status = Some(response.status.as_u16());
    trace.vendor_seconds = response.elapsed.as_secs_f64();

    // 7. effects
    let effects = gateway
        .cache
        .after_write(&app.key, &route, &body, &response, seq);
    Box::pin(effects).await;

    // 8. respond
    Ok(respond(&response))
}

/// One authenticated request, as the cache and the vendor call need it.
struct Call<'r> {
    gateway: &'r Arc<Gateway>,
    app: &'r Arc<App>,
    route: Route<'r>,
    path: &'r route::Path<'r>,
    parts: &'r Parts,
    ids: &'r Ids<'r>,
}

impl Call<'_> {
    /// The canonical path: the app's own prefix and the decoded segments re-encoded. It is
    /// the request's path itself when that is canonical already (no allocation).
    fn canonical_path(&self) -> Cow<'_, str> {
        let raw = self.parts.uri.path();
        let suffix = self.path.suffix();
        let prefix = &self.app.prefix;
        match suffix {
            Cow::Borrowed(s)
                if raw.len() == prefix.len() + s.len() && raw.starts_with(prefix.as_str()) =>
            {
                Cow::Borrowed(raw)
            }
            suffix => Cow::Owned(format!("{prefix}{suffix}")),
        }
    }

    /// The vendor call this request stands for, ready to run on its own: the canonical path
    /// and the caller's query. `identity`: the answer is shared or cached, so it is asked for
    /// without content encoding (and decoded if the vendor encodes it anyway).
    fn vendor(&self, body: Bytes, identity: bool) -> Result<Fetch, GatewayError> {
        let path = match self.parts.uri.query() {
            Some(query) => format!("{}?{query}", self.canonical_path()),
            None => self.canonical_path().into_owned(),
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = path
            .parse()
            .map_err(|_| UpstreamError::Failed("unusable request path".into()))?;
        *request.headers_mut() = forward_headers(&self.parts.headers);
        request
            .headers_mut()
            .insert(TRACEPARENT.clone(), self.ids.trace.child());
        let call = VendorCall::new(
            self.gateway,
            self.app,
            self.route.endpoint,
            request,
            &self.ids.request.header_value(),
        )?;
        let call = if identity { call.identity() } else { call };
        Ok(Box::pin(call.send()))
    }

    /// An offline count, offline status or subscription list, through the cache.
    async fn cached_read(
        &self,
        kind: Kind,
        trace: &mut Trace<'_>,
    ) -> Result<HttpResponse, GatewayError> {
        let path = self.canonical_path();
        let extra = match kind {
            Kind::OfflineStatus => self.route.param,
            Kind::Sublist => self.parts.uri.query().unwrap_or(""),
            _ => "",
        };
        let key = Key {
            kind,
            app: &self.app.key,
            user: self.route.user,
            extra,
        };
        let fetch = || {
            self.vendor(Bytes::new(), true)
                .unwrap_or_else(|err| Box::pin(std::future::ready(Err(err))))
        };
        let suffix = path.get(self.app.prefix.len()..).unwrap_or("");
        let render = |entry: &Entry| entry.body_bytes(&path, suffix, self.route.user);
        let answer = self
            .gateway
            .cache
            .read(&key, &path, trace.started, render, fetch)
            .await
            .map_err(GatewayError::Shared)?;
        Ok(match answer {
            Answer::Cached(found, status) => {
                trace.cache = Some(status);
                let age = trace
                    .started
                    .saturating_duration_since(found.entry.stored_at);
                cached_response(found.body.clone(), status, age, self.ids.request, trace)
            }
            Answer::Vendor(response, status) => {
                trace.cache = Some(status);
                trace.vendor_status = Some(response.status.as_u16());
                trace.vendor_seconds = response.elapsed.as_secs_f64();
                shared_response(&response, status)
            }
        })
    }

    /// A presence batch get, answered per user from the cache and merged vendor calls.
    async fn presence_read(
        &self,
        users: &[String],
        trace: &mut Trace<'_>,
    ) -> Result<HttpResponse, GatewayError> {
        let (gateway, app, request_id, trace_context) = (
            self.gateway.clone(),
            self.app.clone(),
            self.ids.request.clone(),
            self.ids.trace,
        );
        let send: SendBatch = Arc::new(move |caller: &str, users: &[String]| -> Fetch {
            let caller = route::encode_segment(caller);
            let request = Request::post(format!("{}/users/{caller}/presence", app.prefix))
                .header(CONTENT_TYPE, json_content_type())
                .header(&TRACEPARENT, trace_context.child())
                .body(Bytes::from(json!({ "usernames": users }).to_string()))
                .map_err(|_| UpstreamError::Failed("unusable request path".into()).into());
            let call = request.and_then(|request| {
                VendorCall::new(
                    &gateway,
                    &app,
                    Endpoint::PresenceBatchGet,
                    request,
                    &request_id.header_value(),
                )
            });
            match call {
                Ok(call) => Box::pin(call.identity().send()),
                Err(err) => Box::pin(std::future::ready(Err(err))),
            }
        });
        let presence_app = PresenceApp {
            key: &self.app.key,
            instance: self.app.instance,
        };
        let answer = self
            .gateway
            .cache
            .presence(
                presence_app,
                self.route.user,
                users,
                send,
                self.gateway.metrics.presence_batch_users(),
            )
            .await;
        match answer {
            Ok(answer) => {
                trace.cache = Some(answer.status);
                Ok(cached_response(
                    answer.body,
                    answer.status,
                    answer.age,
                    self.ids.request,
                    trace,
                ))
            }
            Err(BatchError::Vendor(response)) => {
                trace.cache = Some(CacheStatus::Miss);
                trace.vendor_status = Some(response.status.as_u16());
                Ok(shared_response(&response, CacheStatus::Miss))
            }
            Err(BatchError::Gateway(err)) => Err(GatewayError::Shared(err)),
        }
    }
}

/// The whole request body, within `server.max_body_bytes` and `server.body_read_timeout_ms`.
async fn read_request_body(
    gateway: &Gateway,
    snapshot: &Snapshot,
    body: Incoming,
    trace: &mut Trace<'_>,
) -> Result<Bytes, GatewayError> {
    let limits = &gateway.conn_limits;
    let body = server::read_body(body, snapshot.max_body_bytes, limits.body_read_timeout)
        .await
        .map_err(|err| match err {
            BodyError::TooLarge(limit) => GatewayError::BodyTooLarge(limit),
            BodyError::Read => GatewayError::BodyUnreadable,
            BodyError::Timeout(_) => GatewayError::BodyTimeout,
        })?;
    trace.body_pending = false;
    Ok(body)
}

/// `POST {prefix}/token` with the client's name and key, as vendor SDKs send it.
struct TokenRequest<'r, 's> {
    gateway: &'r Gateway,
    snapshot: &'s Snapshot,
    route: Route<'r>,
    parts: &'r Parts,
    source: IpAddr,
}

impl<'s> TokenRequest<'_, 's> {
    /// Answers with an imgate client token in the vendor's response shape. Wrong credentials
    /// count against the source address's failure limit, which is checked first (so that a
    /// limited source learns nothing, even from the right secret); they are checked before
    /// the app is looked up, so that they tell nothing about which apps exist.
    async fn issue(
        self,
        body: Incoming,
        trace: &mut Trace<'s>,
    ) -> Result<HttpResponse, GatewayError> {
        let (snapshot, parts) = (self.snapshot, self.parts);
        if let Some(retry_after) = self.gateway.auth_failures.blocked(self.source).await {
            self.gateway.metrics.rate_limited(Scope::Client);
            return Err(GatewayError::TooManyFailures { retry_after });
        }
        if !vendor::content_type_accepted(Endpoint::Token, &parts.headers, !body.is_end_stream()) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let body = read_request_body(self.gateway, snapshot, body, trace).await?;
        let request: Value = serde_json::from_slice(&body).map_err(|_| GatewayError::BadJson)?;
        let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
        if field("grant_type") != "client_credentials" {
            return Err(GatewayError::UnsupportedGrant);
        }
        let Some(client) = snapshot
            .clients
            .by_name(field("client_id"))
            .filter(|c| c.has_key(field("client_secret")))
        else {
            self.gateway.auth_failures.record(self.source).await;
            return Err(GatewayError::InvalidGrant);
        };
        trace.client = &client.name;
        let (app_index, app) = snapshot
            .app(self.route.app)
            .ok_or(GatewayError::UnknownApp)?;
        trace.route = Some((app, Endpoint::Token));
        if !client.may_use(app_index) {
            return Err(GatewayError::Forbidden);
        }
        let max = snapshot.client_token_ttl;
        let ttl = match request.get("ttl").and_then(vendor::lenient_u64) {
            Some(asked) if asked > 0 => max.min(Duration::from_secs(asked)),
            _ => max,
        };
        let token = snapshot
            .client_tokens
            .issue(client, &app.name, vendor::now_secs(), ttl)
            .ok_or(GatewayError::InvalidGrant)?;
        let body =
            json!({"access_token": token, "expires_in": ttl.as_secs(), "application": app.name});
        Ok(server::json_response(200, Bytes::from(body.to_string())))
    }
}

/// The vendor's answer to a call of this request alone, as received.
fn respond(vendor: &VendorResponse) -> HttpResponse {
    let mut response = Response::new(Full::new(vendor.body.clone()));
    *response.status_mut() = vendor.status;
    *response.headers_mut() = vendor.headers.clone();
    response
}

/// A vendor answer shared through the cache (this request's own call, or one it joined): only
/// the headers that describe the body go on, never ones the vendor may have meant for the
/// caller whose request made the call.
fn shared_response(vendor: &VendorResponse, cache: CacheStatus) -> HttpResponse {
    let mut response = Response::new(Full::new(vendor.body.clone()));
    *response.status_mut() = vendor.status;
    let headers = response.headers_mut();
    for name in [CONTENT_TYPE, RETRY_AFTER] {
        if let Some(value) = vendor.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(cache.header()));
    headers.insert(AGE.clone(), age_value(Duration::ZERO));
    response
}

/// A 200 JSON answer from the cache, with every header it ends with (the request's id and,
/// for a client with a quota, the `RateLimit` pair).
fn cached_response(
    body: Bytes,
    status: CacheStatus,
    age: Duration,
    request_id: &RequestId,
    trace: &mut Trace<'_>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    let common = [
        json_content_type(),
        HeaderValue::from_static(status.header()),
        age_value(age),
        request_id.header_value(),
    ];
    *response.headers_mut() = match trace.rate {
        Some((policy, remaining, reset)) => filled(
            &HIT_HEADERS_RATED,
            common
                .into_iter()
                .chain([policy.clone(), rate_limit_value(remaining, reset)]),
        ),
        None => filled(&HIT_HEADERS, common),
    };
    trace.headers_complete = true;
    response
}

/// The headers of a cached answer, in order; the last two (the `RateLimit` pair) only for a
/// client with a quota. Values are set per answer ([`filled`]).
static HIT_HEADER_NAMES: [&HeaderName; 6] = [
    &CONTENT_TYPE,
    &X_CACHE,
    &AGE,
    &X_REQUEST_ID,
    &RATELIMIT_POLICY,
    &RATELIMIT,
];
static HIT_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| template(&HIT_HEADER_NAMES[..4]));
static HIT_HEADERS_RATED: LazyLock<HeaderMap> = LazyLock::new(|| template(&HIT_HEADER_NAMES));

/// A header map with these names (and empty values), in this order.
fn template(names: &[&HeaderName]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for name in names {
        map.append((*name).clone(), HeaderValue::from_static(""));
    }
    map
}

/// `template` with these values, one per name in order. Cloning a made map and setting its
/// values in place hashes no header name (every insert into a map would).
fn filled(template: &HeaderMap, values: impl IntoIterator<Item = HeaderValue>) -> HeaderMap {
    let mut headers = template.clone();
    // `values_mut` walks the entries in insertion order: the names' order.
    for (slot, value) in headers.values_mut().zip(values) {
        *slot = value;
    }
    headers
}

/// The IETF `RateLimit` value (draft-ietf-httpapi-ratelimit-headers; `RateLimit-Policy` is
/// made once per client): what is left of the client's burst and seconds until a permit
/// frees. Written with `itoa` into a stack buffer: no formatting machinery per request.
fn rate_limit_value(remaining: u32, reset: u64) -> HeaderValue {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let mut value = [0u8; 64];
    let mut len = 0;
    for part in [
        b"\"client\";r=".as_slice(),
        r.format(remaining).as_bytes(),
        b";t=",
        t.format(reset).as_bytes(),
    ] {
        value[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    HeaderValue::from_bytes(&value[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// `Age` in whole seconds, from a table for the common ages (no formatting on a hit). The
/// table's values are static (one string made once): cloning one touches no reference count.
fn age_value(age: Duration) -> HeaderValue {
    const COMMON: u64 = 3600;
    static TABLE: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        let numbers: Vec<String> = (0..=COMMON).map(|n| n.to_string()).collect();
        let digits: &'static str = String::leak(numbers.concat());
        let mut at = 0;
        numbers
            .iter()
            .map(|n| {
                at += n.len();
                HeaderValue::from_static(&digits[at - n.len()..at])
            })
            .collect()
    });
    let secs = age.as_secs();
    usize::try_from(secs)
        .ok()
        .and_then(|i| TABLE.get(i).cloned())
        .unwrap_or_else(|| HeaderValue::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_template_pairs_each_name_with_its_value() {
        let values = ["a", "b", "c", "d", "e", "f"].map(HeaderValue::from_static);
        let headers = filled(&HIT_HEADERS_RATED, values.clone());
        assert_eq!(headers.len(), 6);
        for (name, value) in HIT_HEADER_NAMES
            .into_iter()
            .zip(["a", "b", "c", "d", "e", "f"])
        {
            assert_eq!(headers[name], value, "{name}");
        }
        assert_eq!(filled(&HIT_HEADERS, values).len(), 4);
    }

    #[test]
    fn ages_in_and_beyond_the_table() {
        for (secs, text) in [
            (0, "0"),
            (7, "7"),
            (59, "59"),
            (3600, "3600"),
            (3601, "3601"),
        ] {
            assert_eq!(age_value(Duration::from_secs(secs)), text);
        }
    }
}
