//! The emulated endpoints: request validation as the vendor does it, and the vendor's exact
//! success bodies (numbers as strings where the vendor sends strings).

use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Value};

use super::control::lock;
use super::state::{AppData, SubscribeError};
use super::{App, Emulator};
use crate::route::{Endpoint, Route, LEGACY_SEND};
use crate::server::{json_response, HttpResponse};
use crate::vendor::{self, lenient_u64, VendorError};

/// Most recipients of one message.
const MAX_RECIPIENTS: usize = 600;

/// One authenticated, admitted call to a vendor endpoint.
pub(super) struct Call<'a> {
    pub app_data: &'a Mutex<AppData>,
    pub route: Route<'a>,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a Bytes,
}

/// Runs the endpoint a call names.
pub(super) fn dispatch(
    emulator: &Emulator,
    app: &App,
    call: Call<'_>,
) -> Result<HttpResponse, VendorError> {
    let route = call.route;
    let user = route.user;
    let now = vendor::now_secs();
    match route.endpoint {
        Endpoint::OfflineMsgCount => {
            let count = lock(call.app_data).offline_count(user);
            Ok(envelope(&call, "get", json!({ user: count })))
        }
        Endpoint::OfflineMsgStatus => {
            let delivered = lock(call.app_data).is_delivered(user, route.param);
            let status = if delivered {
                "delivered"
            } else {
                "undelivered"
            };
            Ok(envelope(&call, "get", json!({ route.param: status })))
        }
        Endpoint::PresenceSet => {
            let body = parse_json(call.body)?;
            let ext = match body.get("ext") {
                Some(Value::String(ext)) => ext.as_str(),
                _ => return Err(illegal("ext is required")),
            };
            if ext.len() > vendor::MAX_EXT_BYTES {
                return Err(illegal("ext is too big"));
            }
            lock(call.app_data).set_presence(user, route.param, route.status, ext, now);
            Ok(result(json!("ok")))
        }
        Endpoint::PresenceSubscribe => {
            let expiry = route
                .param
                .parse::<u64>()
                .map_err(|_| illegal("expiry must be a number of seconds"))?;
            if expiry > vendor::MAX_SUBSCRIPTION_SECS {
                return Err(illegal("expiry is too big, at most 30 days"));
            }
            let targets = usernames(
                parse_json(call.body)?.get("usernames"),
                "usernames",
                "too many sub presence",
            )?;
            for target in &targets {
                app.check_user(target)?;
            }
            let subscribed = lock(call.app_data)
                .subscribe(user, &targets, now + expiry, now, vendor::MAX_SUBSCRIPTIONS)
                .map_err(|err| match err {
                    SubscribeError::SelfSubscription => illegal("you can't sub yourself"),
                    SubscribeError::TooMany => illegal("too many sub presence"),
                })?;
            Ok(result(Value::Array(subscribed)))
        }
        Endpoint::PresenceBatchGet => {
            let targets = usernames(
                parse_json(call.body)?.get("usernames"),
                "usernames",
                "too many get presences",
            )?;
            emulator.stats.batch_size(targets.len());
            let data = lock(call.app_data);
            Ok(result(targets.iter().map(|t| data.presence(t)).collect()))
        }
        Endpoint::PresenceUnsubscribe => {
            // The vendor's table names a `users` field; its example sends a bare array.
            let body = parse_json(call.body)?;
            let list = if body.is_array() {
                Some(&body)
            } else {
                body.get("users")
            };
            let targets = usernames(list, "users", "too many unsub presence")?;
            lock(call.app_data).unsubscribe(user, &targets);
            Ok(result(json!("ok")))
        }
        Endpoint::PresenceSublist => {
            let page = query_number(call.query, "pageNum", 1)?;
            let size = query_number(call.query, "pageSize", 1)?;
            if page < 1 {
                return Err(illegal("pageNum must be at least 1"));
            }
            if !(1..=vendor::MAX_PAGE_SIZE).contains(&size) {
                return Err(illegal("pageSize must be between 1 and 500"));
            }
            let (total, items) =
                lock(call.app_data).sublist(user, now, page as usize, size as usize);
            Ok(result(
                json!({"totalnum": total.to_string(), "sublist": items}),
            ))
        }
        Endpoint::MessagesSend if route.param == LEGACY_SEND => {
            send_legacy_message(emulator, app, &call)
        }
        Endpoint::MessagesSend => send_message(emulator, app, &call),
        Endpoint::Token | Endpoint::Other => Err(VendorError::new(
            404,
            "service_resource_not_found",
            "Service resource not found",
        )),
    }
}

fn send_message(
    emulator: &Emulator,
    app: &App,
    call: &Call<'_>,
) -> Result<HttpResponse, VendorError> {
    let body = parse_json(call.body)?;
    let to = match body.get("to") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(list) => {
            string_list(list).ok_or_else(|| illegal("to must be an array of user names"))?
        }
        None => return Err(illegal("to is required")),
    };
    if to.is_empty() || to.len() > MAX_RECIPIENTS {
        return Err(illegal("to must name 1 to 600 users"));
    }
    if !body.get("type").is_some_and(Value::is_string) {
        return Err(illegal("type is required"));
    }
    if body.get("body").is_none() {
        return Err(illegal("body is required"));
    }
    for user in &to {
        app.check_user(user)?;
    }
    let mut data = serde_json::Map::new();
    let mut app_data = lock(call.app_data);
    for user in to {
        let id = emulator.new_message_id();
        app_data.deliver(&user, &id);
        data.insert(user, Value::String(id));
    }
    drop(app_data);
    Ok(envelope(call, "post", Value::Object(data)))
}

/// The legacy send, `POST {prefix}/messages`: `{"target_type":"users"|"chatgroups"|"chatrooms",
/// "target":[…],"msg":{"type":…},"from":…,"ext":{…}}` (`from` and `ext` optional). Messages to
/// users are stored like those of `messages/users`; groups and rooms are not modelled, so they
/// only get their `success`. The answer maps each target to `"success"`.
fn send_legacy_message(
    emulator: &Emulator,
    app: &App,
    call: &Call<'_>,
) -> Result<HttpResponse, VendorError> {
    let body = parse_json(call.body)?;
    let target_type = body.get("target_type").and_then(Value::as_str);
    if !matches!(target_type, Some("users" | "chatgroups" | "chatrooms")) {
        return Err(illegal(
            "target_type must be users, chatgroups or chatrooms",
        ));
    }
    let targets = body
        .get("target")
        .and_then(string_list)
        .ok_or_else(|| illegal("target must be an array"))?;
    if targets.is_empty() || targets.len() > MAX_RECIPIENTS {
        return Err(illegal("target must name 1 to 600 receivers"));
    }
    if !body
        .get("msg")
        .and_then(|m| m.get("type"))
        .is_some_and(Value::is_string)
    {
        return Err(illegal("msg.type is required"));
    }
    let to_users = target_type == Some("users");
    if to_users {
        for user in &targets {
            app.check_user(user)?;
        }
    }
    let mut data = serde_json::Map::new();
    let mut app_data = lock(call.app_data);
    for target in targets {
        if to_users {
            app_data.deliver(&target, &emulator.new_message_id());
        }
        data.insert(target, Value::from("success"));
    }
    drop(app_data);
    Ok(envelope(call, "post", Value::Object(data)))
}

/// `POST /{org}/{app}/token`: client credentials → a token this emulator will accept.
pub(super) fn issue_token(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<HttpResponse, VendorError> {
    if !vendor::content_type_accepted(Endpoint::Token, headers, !body.is_empty()) {
        return Err(unsupported_media_type());
    }
    let request = parse_json(body)?;
    let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
    let invalid = |msg: &str| VendorError::new(400, "invalid_grant", msg);
    if field("grant_type") != "client_credentials" {
        return Err(invalid("grant_type must be client_credentials"));
    }
    if field("client_id") != app.config.client_id {
        return Err(invalid("client_id does not match"));
    }
    if field("client_secret") != lock(&app.secrets).client_secret {
        return Err(invalid("client_secret does not match"));
    }
    let ttl = match request.get("ttl") {
        None | Some(Value::Null) => app.config.token_expires_in,
        Some(v) => lenient_u64(v).ok_or_else(|| illegal("ttl must be a number of seconds"))?,
    };
    let token = format!("YWMt{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
    let now = vendor::now_millis();
    let mut issued = lock(&app.issued);
    issued.retain(|_, until| until.is_none_or(|u| u > now));
    issued.insert(
        token.clone(),
        (ttl > 0).then(|| now.saturating_add(ttl.saturating_mul(1000))),
    );
    drop(issued);
    let body =
        json!({"access_token": token, "expires_in": ttl, "application": app.application_uuid});
    Ok(json_response(200, Bytes::from(body.to_string())))
}

fn envelope(call: &Call<'_>, action: &str, data: Value) -> HttpResponse {
    let suffix = crate::route::suffix(call.path);
    let body = json!({
        "action": action,
        "uri": format!("http://{}{}", call.host, call.path),
        "path": suffix,
        "entities": [],
        "data": data,
        "timestamp": vendor::now_millis(),
        "duration": 0,
        "count": 0,
    });
    json_response(200, Bytes::from(body.to_string()))
}

fn result(value: Value) -> HttpResponse {
    json_response(200, Bytes::from(json!({ "result": value }).to_string()))
}

/// The vendor's answer to a JSON endpoint called with another content type.
pub(super) fn unsupported_media_type() -> VendorError {
    VendorError::new(415, "web_application", "Unsupported Media Type")
}

fn illegal(msg: &str) -> VendorError {
    VendorError::new(400, "illegal_argument", msg)
}

fn parse_json(body: &[u8]) -> Result<Value, VendorError> {
    serde_json::from_slice(body).map_err(|_| {
        VendorError::new(
            400,
            "json_parse",
            "Unexpected character: the body is not valid JSON",
        )
    })
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The user names of `list` (the body's `field`): required, strings only, at most 100
/// (`too_many` otherwise).
fn usernames(
    list: Option<&Value>,
    field: &str,
    too_many: &str,
) -> Result<Vec<String>, VendorError> {
    let list = list
        .and_then(string_list)
        .ok_or_else(|| illegal(&format!("{field} must be an array of user names")))?;
    if list.len() > vendor::MAX_USERNAMES {
        return Err(illegal(too_many));
    }
    Ok(list)
}

fn query_number(query: &str, name: &str, default: u64) -> Result<u64, VendorError> {
    let value = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name);
    match value {
        None => Ok(default),
        Some((_, v)) => v
            .parse()
            .map_err(|_| illegal(&format!("{name} must be a number"))),
    }
}
