//! The emulated vendor's data for one app: presence per device, offline messages, subscriptions.
//! Pure logic with explicit clocks, so the rules of docs/vendor-api.md are unit-tested here.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

/// One user's presence and mail.
#[derive(Debug, Default)]
struct User {
    /// Status per device resource: `0` offline, `1` online, anything else custom.
    devices: BTreeMap<String, String>,
    ext: String,
    last_time: u64,
    /// Subscribed user → absolute expiry (Unix seconds).
    subscriptions: BTreeMap<String, u64>,
    /// Ids of messages stored while the user had no online device.
    undelivered: HashSet<String>,
}

impl User {
    fn is_online(&self) -> bool {
        self.devices.values().any(|s| s == "1")
    }
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// A user may not subscribe to themselves.
    SelfSubscription,
    /// The user would hold more than the vendor's maximum.
    TooMany,
}

/// All data of one emulated app.
#[derive(Debug, Default)]
pub struct AppData {
    users: HashMap<String, User>,
}

impl AppData {
    fn user(&mut self, name: &str) -> &mut User {
        self.users.entry(name.to_owned()).or_default()
    }

    /// Number of stored, undelivered messages of `user`.
    pub fn offline_count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.undelivered.len())
    }

    /// Whether `msg_id` has been delivered to `user`. The vendor keeps only undelivered messages
    /// in its offline store, so any id not waiting there reads as delivered.
    pub fn is_delivered(&self, user: &str, msg_id: &str) -> bool {
        self.users
            .get(user)
            .is_none_or(|u| !u.undelivered.contains(msg_id))
    }

    /// Stores a message for `to`: delivered at once when online, else kept as offline.
    pub fn deliver(&mut self, to: &str, msg_id: &str) {
        let user = self.user(to);
        if !user.is_online() {
            user.undelivered.insert(msg_id.to_owned());
        }
    }

    /// Sets one device's status; going online delivers every stored message.
    pub fn set_presence(&mut self, name: &str, resource: &str, status: &str, ext: &str, now: u64) {
        let user = self.user(name);
        user.devices.insert(resource.to_owned(), status.to_owned());
        user.ext = ext.to_owned();
        user.last_time = now;
        if status == "1" {
            user.undelivered.clear();
        }
    }

    /// `{"uid","last_time","ext","status"}` of `name`, as the batch get answers.
    pub fn presence(&self, name: &str) -> Value {
        let (last_time, ext, status) = match self.users.get(name) {
            Some(u) => {
                let status: Map<String, Value> = u
                    .devices
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                (u.last_time, u.ext.as_str(), status)
            }
            None => (0, "", Map::new()),
        };
        json!({"uid": name, "last_time": last_time.to_string(), "ext": ext, "status": status})
    }

    /// Subscribes `name` to `targets` until `expiry` (absolute); answers their presence.
    pub fn subscribe(
        &mut self,
        name: &str,
        targets: &[String],
        expiry: u64,
        now: u64,
        max: usize,
    ) -> Result<Vec<Value>, SubscribeError> {
        if targets.iter().any(|t| t == name) {
            return Err(SubscribeError::SelfSubscription);
        }
        let user = self.user(name);
        user.subscriptions.retain(|_, until| *until > now);
        let new = targets
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|t| !user.subscriptions.contains_key(*t))
            .count();
        if user.subscriptions.len() + new > max {
            return Err(SubscribeError::TooMany);
        }
        for target in targets {
            user.subscriptions.insert(target.clone(), expiry);
        }
        Ok(targets
            .iter()
            .map(|t| {
                let mut entry = self.presence(t);
                entry["expiry"] = Value::from(expiry.to_string());
                entry
            })
            .collect())
    }

    /// Removes the subscriptions of `name` to `targets`.
    pub fn unsubscribe(&mut self, name: &str, targets: &[String]) {
        if let Some(user) = self.users.get_mut(name) {
            for target in targets {
                user.subscriptions.remove(target);
            }
        }
    }

    /// Live subscriptions of `name`, ordered by user: (total, the requested page).
    pub fn sublist(
        &mut self,
        name: &str,
        now: u64,
        page: usize,
        size: usize,
    ) -> (usize, Vec<Value>) {
        let Some(user) = self.users.get_mut(name) else {
            return (0, Vec::new());
        };
        user.subscriptions.retain(|_, until| *until > now);
        let total = user.subscriptions.len();
        let skip = page.saturating_sub(1).saturating_mul(size);
        let items = user
            .subscriptions
            .iter()
            .skip(skip)
            .take(size)
            .map(|(uid, expiry)| json!({"uid": uid, "expiry": expiry.to_string()}))
            .collect();
        (total, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn messages_to_an_offline_user_are_counted_until_a_device_comes_online() {
        let mut app = AppData::default();
        app.deliver("bob", "m1");
        app.deliver("bob", "m2");
        assert_eq!(app.offline_count("bob"), 2);
        assert!(!app.is_delivered("bob", "m1"));
        app.set_presence("bob", "ios_1", "2", "busy", 10);
        assert_eq!(app.offline_count("bob"), 2, "a custom status is not online");
        app.set_presence("bob", "android_1", "1", "", 11);
        assert_eq!(app.offline_count("bob"), 0);
        assert!(app.is_delivered("bob", "m1"));
    }

    #[test]
    fn messages_to_an_online_user_are_delivered_at_once() {
        let mut app = AppData::default();
        app.set_presence("amy", "web_1", "1", "", 5);
        app.deliver("amy", "m1");
        assert_eq!(app.offline_count("amy"), 0);
        assert!(app.is_delivered("amy", "m1"));
    }

    #[test]
    fn presence_lists_every_device_with_the_last_ext_and_time() {
        let mut app = AppData::default();
        app.set_presence("c2", "android", "1", "a", 100);
        app.set_presence("c2", "ios_9", "0", "b", 200);
        let p = app.presence("c2");
        assert_eq!(
            p,
            json!({"uid":"c2","last_time":"200","ext":"b","status":{"android":"1","ios_9":"0"}})
        );
        assert_eq!(app.presence("nobody")["status"], json!({}));
    }

    #[test]
    fn subscriptions_refuse_self_and_the_maximum_and_expire() {
        let mut app = AppData::default();
        assert_eq!(
            app.subscribe("u", &names(&["u"]), 50, 0, 10),
            Err(SubscribeError::SelfSubscription)
        );
        let result = app.subscribe("u", &names(&["a", "b"]), 50, 0, 2).unwrap();
        assert_eq!(result[0]["expiry"], "50");
        assert_eq!(
            app.subscribe("u", &names(&["c"]), 50, 0, 2),
            Err(SubscribeError::TooMany)
        );
        assert!(
            app.subscribe("u", &names(&["a"]), 90, 0, 2).is_ok(),
            "renewal is not new"
        );
        assert_eq!(app.sublist("u", 60, 1, 10).0, 1, "b expired at 50");
        app.unsubscribe("u", &names(&["a"]));
        assert_eq!(app.sublist("u", 60, 1, 10).0, 0);
    }

    #[test]
    fn sublist_pages_in_user_order() {
        let mut app = AppData::default();
        app.subscribe("u", &names(&["c", "a", "b"]), 100, 0, 10)
            .unwrap();
        let (total, page) = app.sublist("u", 1, 2, 2);
        assert_eq!(total, 3);
        assert_eq!(page, vec![json!({"uid":"c","expiry":"100"})]);
    }
}
