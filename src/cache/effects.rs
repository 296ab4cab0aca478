//! Writes that pass through imgate keep the cache true (docs/architecture.md, "The cache"): a
//! presence set invalidates that user's presence, and going online (status `1`) also the user's
//! offline count and `undelivered` statuses, since that is when the vendor delivers stored
//! messages; a subscription's answer refreshes the subscribed users' presence and invalidates
//! the subscriber's list; an unsubscription invalidates it too; a message (either send form)
//! invalidates its recipients' offline counts.

use bytes::Bytes;
use serde_json::Value;

use super::{presence, Cache, Invalidation, Kind};
use crate::route::{Endpoint, Route};
use crate::upstream::VendorResponse;

impl Cache {
    /// Applies the effects of a write the vendor accepted. `seq` is the sequence number read
    /// before the write was sent (entries refreshed from its answer are as old as that).
    pub async fn after_write(
        &self,
        app: &str,
        route: &Route<'_>,
        request_body: &[u8],
        response: &VendorResponse,
        seq: u64,
    ) {
        if !response.status.is_success() {
            return;
        }
        let user = route.user;
        match route.endpoint {
            Endpoint::PresenceSet => {
                let mut changes = vec![about(Kind::Presence, app, user)];
                if route.status == "1" {
                    changes.push(about(Kind::OfflineCount, app, user));
                    changes.push(about(Kind::OfflineStatus, app, user));
                }
                self.invalidate_everywhere(&changes).await;
            }
            Endpoint::PresenceSubscribe => {
                self.invalidate_everywhere(&[about(Kind::Sublist, app, user)])
                    .await;
                let entries = presence::split_result(&response.body).unwrap_or_default();
                for (uid, entry) in &entries {
                    if let Some(entry) = without_expiry(entry) {
                        self.store_presence(app, uid, entry, seq).await;
                    }
                }
                // Refreshed here; the other replicas fetch them again.
                let refreshed: Vec<_> = entries
                    .keys()
                    .map(|uid| about(Kind::Presence, app, uid.as_str()))
                    .collect();
                self.tell_others(&refreshed);
            }
            Endpoint::PresenceUnsubscribe => {
                self.invalidate_everywhere(&[about(Kind::Sublist, app, user)])
                    .await
            }
            Endpoint::MessagesSend => {
                let recipients = recipients(request_body);
                let changes: Vec<_> = recipients
                    .iter()
                    .map(|r| about(Kind::OfflineCount, app, r.as_str()))
                    .collect();
                self.invalidate_everywhere(&changes).await;
            }
            _ => {}
        }
    }
}

/// The reads of `kind` about `user` of `app`.
fn about<'a>(kind: Kind, app: &'a str, user: &'a str) -> Invalidation<'a> {
    Invalidation::User { kind, app, user }
}

/// A subscription's answer entry in the shape of a batch get's (which has no `expiry`).
fn without_expiry(entry: &[u8]) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(entry).ok()?;
    value.as_object_mut()?.shift_remove("expiry");
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// The users a message body sends to: its `to` (an array of users, or one user), or in the
/// legacy form its `target` when `target_type` is `users` (groups and rooms name no user).
fn recipients(body: &[u8]) -> Vec<String> {
    let Ok(mut body) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let legacy_to_users = body.get("target_type").and_then(Value::as_str) == Some("users");
    let field = if body.get("to").is_some() || !legacy_to_users {
        "to"
    } else {
        "target"
    };
    match body.get_mut(field).map_or(Value::Null, Value::take) {
        Value::String(one) => vec![one],
        Value::Array(list) => list
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_entries_lose_only_their_expiry() {
        let entry = br#"{"uid":"c2","last_time":"1","ext":"x","status":{"a":"1"},"expiry":"9"}"#;
        let out = without_expiry(entry).unwrap();
        assert_eq!(
            out,
            &br#"{"uid":"c2","last_time":"1","ext":"x","status":{"a":"1"}}"#[..]
        );
    }

    #[test]
    fn recipients_come_from_an_array_or_a_single_name() {
        assert_eq!(recipients(br#"{"to":["a","b"]}"#), vec!["a", "b"]);
        assert_eq!(recipients(br#"{"to":"a"}"#), vec!["a"]);
        assert!(recipients(b"nope").is_empty());
    }

    #[test]
    fn legacy_sends_name_their_users_but_not_their_groups() {
        let to_users =
            br#"{"target_type":"users","target":["a","b"],"msg":{"type":"txt","msg":"hi"}}"#;
        assert_eq!(recipients(to_users), vec!["a", "b"]);
        let to_groups = br#"{"target_type":"chatgroups","target":["g1"],"msg":{"type":"txt"}}"#;
        assert!(recipients(to_groups).is_empty());
    }
}
