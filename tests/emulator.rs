//! The vendor emulator over HTTP on a loopback port: every endpoint under both prefixes, the
//! vendor's validation errors, authentication, quotas, faults and the control API.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{agora_token, Http, Resp, TestEmulator};
use http::Method;
use serde_json::{json, Value};

use imgate::demo;
use imgate::emulator::EmulatorConfig;
use imgate::token::agora::TokenSpec;

/// One app prefix as a client sees it: its base URL and a valid bearer header.
struct Prefix {
    label: &'static str,
    url: String,
    auth: String,
    http: Http,
}

impl Prefix {
    /// The Agora prefix (with a locally minted AccessToken2) and the Easemob prefix (with a
    /// token from the emulator's token endpoint).
    async fn both(emu: &TestEmulator) -> [Prefix; 2] {
        let http = Http::new();
        [
            Prefix {
                label: "agora /app-id/{app_id}",
                url: emu.agora(),
                auth: format!("Bearer {}", agora_token(600)),
                http: http.clone(),
            },
            Prefix {
                label: "easemob /demo-org/demo-app",
                url: emu.easemob(),
                auth: format!("Bearer {}", emu.easemob_token().await),
                http,
            },
        ]
    }

    fn url(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.url)
    }

    async fn call(&self, method: Method, suffix: &str, body: Option<&str>) -> Resp {
        let headers = [
            ("authorization", self.auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ];
        self.http
            .send(method, &self.url(suffix), &headers, body)
            .await
    }

    async fn get(&self, suffix: &str) -> Resp {
        self.call(Method::GET, suffix, None).await
    }

    async fn post(&self, suffix: &str, body: &str) -> Resp {
        self.call(Method::POST, suffix, Some(body)).await
    }

    async fn delete(&self, suffix: &str, body: &str) -> Resp {
        self.call(Method::DELETE, suffix, Some(body)).await
    }

    /// The same request without any Authorization header.
    async fn anonymous(&self, method: Method, suffix: &str) -> Resp {
        self.http.send(method, &self.url(suffix), &[], None).await
    }

    async fn offline_count(&self, user: &str) -> Value {
        let suffix = format!("/users/{user}/offline_msg_count");
        envelope(&self.get(&suffix).await, self, &suffix, "get")[user].clone()
    }

    async fn offline_status(&self, user: &str, msg_id: &str) -> Value {
        let suffix = format!("/users/{user}/offline_msg_status/{msg_id}");
        envelope(&self.get(&suffix).await, self, &suffix, "get")[msg_id].clone()
    }

    async fn set_presence(&self, user: &str, resource: &str, status: &str, ext: &str) {
        let suffix = format!("/users/{user}/presence/{resource}/{status}");
        let body = json!({ "ext": ext }).to_string();
        assert_eq!(result(&self.post(&suffix, &body).await), json!("ok"));
    }

    /// Sends one message from `from` to `to`; the message ids per recipient.
    async fn send(&self, from: &str, to: &[&str]) -> Value {
        let body = json!({"from": from, "to": to, "type": "txt", "body": {"msg": "hi"}});
        let resp = self.post("/messages/users", &body.to_string()).await;
        envelope(&resp, self, "/messages/users", "post")
    }
}

/// Runs `scenario` under the Agora prefix and then under the Easemob prefix; the label goes
/// to stderr first so that a failure says which prefix it was.
async fn for_both(emu: &TestEmulator, scenario: impl AsyncFn(&Prefix)) {
    for prefix in Prefix::both(emu).await {
        eprintln!("scenario under {}", prefix.label);
        scenario(&prefix).await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Asserts the vendor's success envelope, field by field and with no extra field, for the
/// request `suffix` under `prefix`; returns its `data` for the caller to compare exactly.
fn envelope(resp: &Resp, prefix: &Prefix, suffix: &str, action: &str) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut v = resp.json();
    let timestamp = v["timestamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("timestamp in {v}"));
    assert!(
        timestamp.abs_diff(now_millis()) < 60_000,
        "timestamp is epoch ms: {v}"
    );
    assert!(v["duration"].is_u64(), "{v}");
    let data = v["data"].take();
    assert!(data.is_object(), "{data}");
    v["timestamp"] = json!(0);
    v["duration"] = json!(0);
    let expected = json!({
        "action": action,
        "uri": prefix.url(suffix),
        "path": suffix,
        "entities": [],
        "data": null,
        "timestamp": 0,
        "duration": 0,
        "count": 0,
    });
    assert_eq!(v, expected);
    data
}

/// Asserts a presence success body `{"result": …}` with nothing else; returns the result.
fn result(resp: &Resp) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut v = resp.json();
    let result = v["result"].take();
    assert_eq!(v, json!({ "result": null }), "only `result` is expected");
    result
}

/// Checks that `entry[field]` is a string of Unix seconds in `lo..=hi` (the vendor sends these
/// numbers as strings) and replaces it with `label`, so the whole body compares exactly.
fn pin_secs(entry: &mut Value, field: &str, lo: u64, hi: u64, label: &str) {
    let text = entry[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} must be a string: {entry}"));
    let secs: u64 = text
        .parse()
        .unwrap_or_else(|_| panic!("{field} not digits: {entry}"));
    assert!(
        (lo..=hi).contains(&secs),
        "{field} {secs} not in {lo}..={hi}"
    );
    entry[field] = json!(label);
}

fn usernames(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i}")).collect()
}

/// The demo config with `edit` applied to both apps.
fn demo_config_with(edit: impl Fn(&mut imgate::emulator::EmulatedApp)) -> EmulatorConfig {
    let mut config = EmulatorConfig::demo();
    config.apps.iter_mut().for_each(edit);
    config
}

async fn put_faults(emu: &TestEmulator, body: &str) -> Resp {
    let url = format!("{}/__emulator/faults", emu.base());
    common::http(
        Method::PUT,
        &url,
        &[("content-type", "application/json")],
        Some(body),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Endpoints and their exact success bodies

#[tokio::test]
async fn offline_count_answers_with_the_vendor_envelope() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let resp = p.get("/users/u1/offline_msg_count").await;
        let data = envelope(&resp, p, "/users/u1/offline_msg_count", "get");
        assert_eq!(data, json!({"u1": 0}));
    })
    .await;
}

#[tokio::test]
async fn envelope_uri_names_the_requested_authority_over_http2_too() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        // HTTP/2 carries the authority in `:authority`, not in a Host header.
        let h2 = Prefix {
            http: Http::h2(),
            label: p.label,
            url: p.url.clone(),
            auth: p.auth.clone(),
        };
        let resp = h2.get("/users/u1/offline_msg_count").await;
        assert_eq!(resp.version, http::Version::HTTP_2);
        let data = envelope(&resp, &h2, "/users/u1/offline_msg_count", "get");
        assert_eq!(data, json!({"u1": 0}));
    })
    .await;
}

#[tokio::test]
async fn offline_status_answers_with_the_vendor_envelope() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let id = p.send("alice", &["bob"]).await["bob"]
            .as_str()
            .unwrap()
            .to_owned();
        let suffix = format!("/users/bob/offline_msg_status/{id}");
        let data = envelope(&p.get(&suffix).await, p, &suffix, "get");
        assert_eq!(data, json!({ id: "undelivered" }));
    })
    .await;
}

#[tokio::test]
async fn message_send_answers_one_distinct_id_per_recipient() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let data = p.send("alice", &["bob", "carol", "dave"]).await;
        let ids: Vec<&str> = ["bob", "carol", "dave"]
            .iter()
            .map(|u| {
                data[u]
                    .as_str()
                    .unwrap_or_else(|| panic!("id of {u} in {data}"))
            })
            .collect();
        assert_eq!(data.as_object().unwrap().len(), 3, "{data}");
        assert!(ids
            .iter()
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())));
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{data}"
        );
    })
    .await;
}

#[tokio::test]
async fn message_to_a_single_recipient_given_as_a_string_is_accepted() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let body = r#"{"from":"a","to":"bob","type":"txt","body":{"msg":"hi"}}"#;
        let data = envelope(
            &p.post("/messages/users", body).await,
            p,
            "/messages/users",
            "post",
        );
        assert!(data["bob"].is_string(), "{data}");
        assert_eq!(p.offline_count("bob").await, json!(1));
    })
    .await;
}

#[tokio::test]
async fn legacy_send_to_users_answers_success_per_target_and_stores_offline_messages() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        // The form ease-restapi sends: `from` may be null, `ext` an empty object.
        let body = json!({"target_type": "users", "target": ["lee", "kim"],
            "msg": {"type": "txt", "msg": "hello"}, "from": null, "ext": {}});
        let data = envelope(
            &p.post("/messages", &body.to_string()).await,
            p,
            "/messages",
            "post",
        );
        assert_eq!(data, json!({"lee": "success", "kim": "success"}));
        assert_eq!(p.offline_count("lee").await, json!(1));
        assert_eq!(p.offline_count("kim").await, json!(1));
        // Groups are not modelled: their sends succeed and store nothing for any user.
        let to_group = json!({"target_type": "chatgroups", "target": ["lee"],
            "msg": {"type": "txt", "msg": "hi"}, "from": "kim"});
        let data = envelope(
            &p.post("/messages", &to_group.to_string()).await,
            p,
            "/messages",
            "post",
        );
        assert_eq!(data, json!({"lee": "success"}));
        assert_eq!(p.offline_count("lee").await, json!(1));
    })
    .await;
    assert_eq!(emu.requests("messages_users").await, 4);
}

#[tokio::test]
async fn legacy_send_bodies_are_checked_as_the_vendor_does() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        for body in [
            json!({"target": ["a"], "msg": {"type": "txt", "msg": "x"}}),
            json!({"target_type": "people", "target": ["a"], "msg": {"type": "txt"}}),
            json!({"target_type": "users", "target": "a", "msg": {"type": "txt"}}),
            json!({"target_type": "users", "target": [], "msg": {"type": "txt"}}),
            json!({"target_type": "users", "target": ["a"], "msg": {"msg": "no type"}}),
            // The new form's body is not the legacy one.
            json!({"from": "a", "to": ["b"], "type": "txt", "body": {"msg": "hi"}}),
        ] {
            p.post("/messages", &body.to_string())
                .await
                .assert_error(400, "illegal_argument");
        }
        p.post("/messages", "not json")
            .await
            .assert_error(400, "json_parse");
        assert_eq!(p.offline_count("a").await, json!(0));
    })
    .await;
}

#[tokio::test]
async fn message_to_an_offline_user_is_undelivered_until_a_device_comes_online() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let id = p.send("alice", &["bob"]).await["bob"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(p.offline_count("bob").await, json!(1));
        assert_eq!(p.offline_status("bob", &id).await, json!("undelivered"));

        p.set_presence("bob", "android_1", "1", "").await;
        assert_eq!(p.offline_count("bob").await, json!(0));
        assert_eq!(p.offline_status("bob", &id).await, json!("delivered"));

        // Delivered is final: going offline again does not bring the message back.
        p.set_presence("bob", "android_1", "0", "").await;
        assert_eq!(p.offline_status("bob", &id).await, json!("delivered"));
        assert_eq!(p.offline_count("bob").await, json!(0));
    })
    .await;
}

#[tokio::test]
async fn message_to_an_online_user_is_delivered_at_once() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        p.set_presence("amy", "web_1", "1", "").await;
        let id = p.send("alice", &["amy"]).await["amy"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(p.offline_count("amy").await, json!(0));
        assert_eq!(p.offline_status("amy", &id).await, json!("delivered"));
    })
    .await;
}

#[tokio::test]
async fn a_custom_presence_status_is_not_online() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        p.set_presence("bob", "ios_1", "2", "busy").await;
        let id = p.send("alice", &["bob"]).await["bob"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(p.offline_count("bob").await, json!(1));
        assert_eq!(p.offline_status("bob", &id).await, json!("undelivered"));
    })
    .await;
}

#[tokio::test]
async fn offline_messages_of_one_prefix_are_not_seen_under_the_other() {
    let emu = TestEmulator::demo().await;
    let [agora, easemob] = Prefix::both(&emu).await;
    agora.send("alice", &["bob"]).await;
    assert_eq!(agora.offline_count("bob").await, json!(1));
    assert_eq!(easemob.offline_count("bob").await, json!(0));
}

#[tokio::test]
async fn batch_get_reports_presence_in_request_order_with_duplicates_and_unknown_users() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let t0 = now_secs();
        p.set_presence("c2", "android", "1", "ext-a").await;
        p.set_presence("c2", "ios_6b56", "0", "ext-b").await;
        p.set_presence("c3", "web_1", "2", "").await;
        let t1 = now_secs();

        let body = r#"{"usernames":["c3","ghost","c2","c3"]}"#;
        let mut got = result(&p.post("/users/caller/presence", body).await);
        for i in [0, 2, 3] {
            pin_secs(&mut got[i], "last_time", t0, t1, "T");
        }
        let expected = json!([
            {"uid": "c3", "last_time": "T", "ext": "", "status": {"web_1": "2"}},
            {"uid": "ghost", "last_time": "0", "ext": "", "status": {}},
            {"uid": "c2", "last_time": "T", "ext": "ext-b",
             "status": {"android": "1", "ios_6b56": "0"}},
            {"uid": "c3", "last_time": "T", "ext": "", "status": {"web_1": "2"}},
        ]);
        assert_eq!(got, expected);

        // The answer does not depend on who asks.
        let mut other = result(&p.post("/users/someone_else/presence", body).await);
        for i in [0, 2, 3] {
            pin_secs(&mut other[i], "last_time", t0, t1, "T");
        }
        assert_eq!(other, expected);
    })
    .await;
}

#[tokio::test]
async fn subscribe_answers_the_presence_of_each_user_with_its_expiry() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        p.set_presence("c2", "android", "1", "123").await;
        let t0 = now_secs();
        let resp = p
            .post("/users/c1/presence/3600", r#"{"usernames":["c2","c3"]}"#)
            .await;
        let t1 = now_secs();
        let mut got = result(&resp);
        pin_secs(&mut got[0], "last_time", t0.saturating_sub(5), t1, "T");
        for entry in got.as_array_mut().unwrap() {
            pin_secs(entry, "expiry", t0 + 3600, t1 + 3600, "now+3600");
        }
        let expected = json!([
            {"uid": "c2", "last_time": "T", "ext": "123", "status": {"android": "1"},
             "expiry": "now+3600"},
            {"uid": "c3", "last_time": "0", "ext": "", "status": {}, "expiry": "now+3600"},
        ]);
        assert_eq!(got, expected);
    })
    .await;
}

#[tokio::test]
async fn presence_round_trip_set_get_subscribe_list_and_unsubscribe() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        p.set_presence("c2", "android_1", "1", "at work").await;
        let got = result(
            &p.post("/users/c1/presence", r#"{"usernames":["c2"]}"#)
                .await,
        );
        assert_eq!(got[0]["ext"], "at work");
        assert_eq!(got[0]["status"], json!({"android_1": "1"}));
        assert!(
            got[0].get("expiry").is_none(),
            "batch get has no expiry: {got}"
        );

        let t0 = now_secs();
        let subscribed = p
            .post(
                "/users/c1/presence/1000",
                r#"{"usernames":["c4","c2","c3"]}"#,
            )
            .await;
        assert_eq!(result(&subscribed).as_array().unwrap().len(), 3);
        // Subscribing again overwrites the expiry instead of adding an entry.
        p.post("/users/c1/presence/2000", r#"{"usernames":["c3"]}"#)
            .await;
        let t1 = now_secs();

        let mut page = result(
            &p.get("/users/c1/presence/sublist?pageNum=1&pageSize=2")
                .await,
        );
        for entry in page["sublist"].as_array_mut().unwrap() {
            pin_secs(entry, "expiry", t0 + 1000, t1 + 2000, "E");
        }
        let expected = json!({"totalnum": "3", "sublist": [
            {"uid": "c2", "expiry": "E"}, {"uid": "c3", "expiry": "E"}
        ]});
        assert_eq!(page, expected);
        let page2 = result(
            &p.get("/users/c1/presence/sublist?pageNum=2&pageSize=2")
                .await,
        );
        assert_eq!(page2["totalnum"], "3");
        assert_eq!(page2["sublist"].as_array().unwrap().len(), 1);
        assert_eq!(page2["sublist"][0]["uid"], "c4");
        let c3 = page["sublist"][1].clone();
        assert_eq!(c3["uid"], "c3");
        let all = result(
            &p.get("/users/c1/presence/sublist?pageNum=1&pageSize=500")
                .await,
        );
        let c3_expiry: u64 = all["sublist"][1]["expiry"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (t0 + 2000..=t1 + 2000).contains(&c3_expiry),
            "renewed expiry: {all}"
        );
        let beyond = result(
            &p.get("/users/c1/presence/sublist?pageNum=3&pageSize=2")
                .await,
        );
        assert_eq!(beyond, json!({"totalnum": "3", "sublist": []}));

        assert_eq!(
            result(&p.delete("/users/c1/presence", r#"["c2"]"#).await),
            json!("ok")
        );
        let body = r#"{"users":["c3","c4"]}"#;
        assert_eq!(
            result(&p.delete("/users/c1/presence", body).await),
            json!("ok")
        );
        let empty = result(
            &p.get("/users/c1/presence/sublist?pageNum=1&pageSize=100")
                .await,
        );
        assert_eq!(empty, json!({"totalnum": "0", "sublist": []}));
    })
    .await;
}

#[tokio::test]
async fn sublist_of_a_user_without_subscriptions_is_empty() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let got = result(
            &p.get("/users/nobody/presence/sublist?pageNum=1&pageSize=10")
                .await,
        );
        assert_eq!(got, json!({"totalnum": "0", "sublist": []}));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Validation errors

#[tokio::test]
async fn presence_ext_over_64_bytes_is_too_big() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let at_limit = json!({"ext": "x".repeat(64)}).to_string();
        assert_eq!(
            p.post("/users/u/presence/web_1/1", &at_limit).await.status,
            200
        );
        // 33 two-byte characters: under 64 characters but over 64 bytes.
        for ext in ["x".repeat(65), "é".repeat(33)] {
            let body = json!({ "ext": ext }).to_string();
            let v = p
                .post("/users/u/presence/web_1/1", &body)
                .await
                .assert_error(400, "illegal_argument");
            assert_eq!(v["error_description"], "ext is too big");
        }
    })
    .await;
}

#[tokio::test]
async fn more_than_100_usernames_are_refused_on_batch_get_and_subscribe() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let hundred = json!({"usernames": usernames(100)}).to_string();
        let too_many = json!({"usernames": usernames(101)}).to_string();
        assert_eq!(
            result(&p.post("/users/me/presence", &hundred).await)
                .as_array()
                .unwrap()
                .len(),
            100
        );
        let v = p
            .post("/users/me/presence", &too_many)
            .await
            .assert_error(400, "illegal_argument");
        assert_eq!(v["error_description"], "too many get presences");

        assert_eq!(p.post("/users/me/presence/60", &hundred).await.status, 200);
        let v = p
            .post("/users/me/presence/60", &too_many)
            .await
            .assert_error(400, "illegal_argument");
        assert_eq!(v["error_description"], "too many sub presence");
    })
    .await;
}

#[tokio::test]
async fn subscribing_to_oneself_is_refused() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let resp = p
            .post("/users/c1/presence/60", r#"{"usernames":["c2","c1"]}"#)
            .await;
        let v = resp.assert_error(400, "illegal_argument");
        assert_eq!(v["error_description"], "you can't sub yourself");
        // Nothing of the refused request is kept.
        let list = result(
            &p.get("/users/c1/presence/sublist?pageNum=1&pageSize=10")
                .await,
        );
        assert_eq!(list["totalnum"], "0");
    })
    .await;
}

#[tokio::test]
async fn subscription_expiry_is_at_most_30_days() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let body = r#"{"usernames":["c2"]}"#;
        assert_eq!(p.post("/users/c1/presence/2592000", body).await.status, 200);
        p.post("/users/c1/presence/2592001", body)
            .await
            .assert_error(400, "illegal_argument");
        p.post("/users/c1/presence/soon", body)
            .await
            .assert_error(400, "illegal_argument");
    })
    .await;
}

#[tokio::test]
async fn sublist_page_size_and_page_num_are_bounded() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        for query in [
            "pageNum=1&pageSize=0",
            "pageNum=1&pageSize=501",
            "pageNum=0&pageSize=10",
        ] {
            let resp = p.get(&format!("/users/c1/presence/sublist?{query}")).await;
            resp.assert_error(400, "illegal_argument");
        }
        let ok = p
            .get("/users/c1/presence/sublist?pageNum=1&pageSize=500")
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text());
    })
    .await;
}

#[tokio::test]
async fn non_json_bodies_are_json_parse_errors() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let cases = [
            (Method::POST, "/users/u/presence/web_1/1"),
            (Method::POST, "/users/u/presence/60"),
            (Method::POST, "/users/u/presence"),
            (Method::DELETE, "/users/u/presence"),
            (Method::POST, "/messages/users"),
        ];
        for (method, suffix) in cases {
            eprintln!("{method} {suffix}");
            p.call(method, suffix, Some("{not json"))
                .await
                .assert_error(400, "json_parse");
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_apps_are_404_organization_application_not_found() {
    let emu = TestEmulator::demo().await;
    let [agora, easemob] = Prefix::both(&emu).await;
    let other_agora = format!(
        "{}/app-id/{}",
        emu.base(),
        "ffffffffffffffffffffffffffffffff"
    );
    let urls = [
        (
            format!("{other_agora}/users/u1/offline_msg_count"),
            &agora.auth,
        ),
        (
            format!(
                "{}/demo-org/other-app/users/u1/offline_msg_count",
                emu.base()
            ),
            &easemob.auth,
        ),
        (
            format!(
                "{}/other-org/demo-app/users/u1/offline_msg_count",
                emu.base()
            ),
            &easemob.auth,
        ),
    ];
    for (url, auth) in urls {
        let resp = common::http(Method::GET, &url, &[("authorization", auth)], None).await;
        resp.assert_error(404, "organization_application_not_found");
    }
    let token = format!("{}/other-org/demo-app/token", emu.base());
    let body = r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret"}"#;
    let resp = common::http(
        Method::POST,
        &token,
        &[("content-type", "application/json")],
        Some(body),
    )
    .await;
    resp.assert_error(404, "organization_application_not_found");
}

#[tokio::test]
async fn unknown_users_are_404_when_the_config_lists_users() {
    let config = demo_config_with(|app| app.users = Some(vec!["alice".into(), "bob".into()]));
    let emu = TestEmulator::start(config).await;
    for_both(&emu, async |p| {
        assert_eq!(p.offline_count("alice").await, json!(0));
        p.get("/users/mallory/offline_msg_count")
            .await
            .assert_error(404, "service_resource_not_found");
        p.post("/users/mallory/presence/web_1/1", r#"{"ext":""}"#)
            .await
            .assert_error(404, "service_resource_not_found");
        p.post("/users/alice/presence/60", r#"{"usernames":["mallory"]}"#)
            .await
            .assert_error(404, "service_resource_not_found");
        let to_unknown =
            r#"{"from":"alice","to":["bob","mallory"],"type":"txt","body":{"msg":"hi"}}"#;
        p.post("/messages/users", to_unknown)
            .await
            .assert_error(404, "service_resource_not_found");
        // A refused message is not half-delivered.
        assert_eq!(p.offline_count("bob").await, json!(0));
    })
    .await;
}

#[tokio::test]
async fn token_endpoint_errors_follow_the_vendor() {
    let emu = TestEmulator::demo().await;
    let url = format!("{}/token", emu.easemob());
    let good = json!({"grant_type": "client_credentials", "client_id": demo::EASEMOB_CLIENT_ID,
                      "client_secret": demo::EASEMOB_CLIENT_SECRET})
    .to_string();
    let json_ct = [("content-type", "application/json")];

    for headers in [&[][..], &[("content-type", "text/plain")][..]] {
        let resp = common::http(Method::POST, &url, headers, Some(&good)).await;
        let v = resp.assert_error(415, "web_application");
        assert_eq!(v["error_description"], "Unsupported Media Type");
    }
    let with_charset = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(
        common::http(Method::POST, &url, &with_charset, Some(&good))
            .await
            .status,
        200
    );

    let wrong_id = good.replace(demo::EASEMOB_CLIENT_ID, "someone-else");
    let v = common::http(Method::POST, &url, &json_ct, Some(&wrong_id))
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(v["error_description"], "client_id does not match");
    let wrong_secret = good.replace(demo::EASEMOB_CLIENT_SECRET, "guess");
    let v = common::http(Method::POST, &url, &json_ct, Some(&wrong_secret))
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(v["error_description"], "client_secret does not match");

    common::http(
        Method::POST,
        &url,
        &json_ct,
        Some("grant_type=client_credentials"),
    )
    .await
    .assert_error(400, "json_parse");
}

#[tokio::test]
async fn token_endpoint_exists_only_under_the_easemob_prefix() {
    let emu = TestEmulator::demo().await;
    let url = format!("{}/token", emu.agora());
    let body = r#"{"grant_type":"client_credentials","client_id":"x","client_secret":"y"}"#;
    let json_ct = ("content-type", "application/json");
    common::http(Method::POST, &url, &[json_ct], Some(body))
        .await
        .assert_error(401, "unauthorized");
    let auth = format!("Bearer {}", agora_token(600));
    let resp = common::http(
        Method::POST,
        &url,
        &[json_ct, ("authorization", &auth)],
        Some(body),
    )
    .await;
    resp.assert_error(404, "service_resource_not_found");
}

#[tokio::test]
async fn bodies_over_1_mib_are_413() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let huge = format!(r#"{{"usernames":[],"pad":"{}"}}"#, "x".repeat(1 << 20));
        p.post("/users/u/presence", &huge)
            .await
            .assert_error(413, "Request Entity Too Large");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// An Agora app token for the demo app with explicit times and certificate.
fn agora_token_with(app_id: &str, cert: &str, issue_ts: u64, expire: u32) -> String {
    TokenSpec::app(app_id, issue_ts as u32, expire, 7).build(cert)
}

async fn agora_with_token(emu: &TestEmulator, token: &str) -> Resp {
    let url = format!("{}/users/u1/offline_msg_count", emu.agora());
    common::http(
        Method::GET,
        &url,
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
}

async fn easemob_with_token(emu: &TestEmulator, token: &str) -> Resp {
    let url = format!("{}/users/u1/offline_msg_count", emu.easemob());
    common::http(
        Method::GET,
        &url,
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401_unauthorized() {
    let emu = TestEmulator::demo().await;
    for_both(&emu, async |p| {
        let v = p
            .anonymous(Method::GET, "/users/u1/offline_msg_count")
            .await
            .assert_error(401, "unauthorized");
        assert_eq!(v["error_description"], "Unable to authenticate (OAuth)");
        let token = p.auth.strip_prefix("Bearer ").unwrap();
        for header in [
            format!("Basic {token}"),
            "Bearer ".to_owned(),
            token.to_owned(),
        ] {
            let headers = [("authorization", header.as_str())];
            let resp = p
                .http
                .send(
                    Method::GET,
                    &p.url("/users/u1/offline_msg_count"),
                    &headers,
                    None,
                )
                .await;
            resp.assert_error(401, "unauthorized");
        }
    })
    .await;
}

#[tokio::test]
async fn expired_agora_token_is_401_unauthorized() {
    let emu = TestEmulator::demo().await;
    let (id, cert) = (demo::AGORA_APP_ID, demo::AGORA_APP_CERTIFICATE);
    let expired = agora_token_with(id, cert, now_secs() - 100, 10);
    agora_with_token(&emu, &expired)
        .await
        .assert_error(401, "unauthorized");
    // The same past issue time with a lifetime reaching into the future is still good.
    let alive = agora_token_with(id, cert, now_secs() - 100, 600);
    assert_eq!(agora_with_token(&emu, &alive).await.status, 200);
}

#[tokio::test]
async fn forged_agora_tokens_are_auth_bad_access_token() {
    let emu = TestEmulator::demo().await;
    let now = now_secs();
    let other_cert = agora_token_with(
        demo::AGORA_APP_ID,
        "00112233445566778899aabbccddeeff",
        now,
        600,
    );
    let other_app = agora_token_with(
        "ffffffffffffffffffffffffffffffff",
        demo::AGORA_APP_CERTIFICATE,
        now,
        600,
    );
    let mut truncated = agora_token(600);
    truncated.truncate(truncated.len() - 6);
    for token in [
        other_cert,
        other_app,
        truncated,
        "007garbage".to_owned(),
        "not-a-token".to_owned(),
    ] {
        agora_with_token(&emu, &token)
            .await
            .assert_error(401, "auth_bad_access_token");
    }
}

#[tokio::test]
async fn agora_user_token_is_refused() {
    let emu = TestEmulator::demo().await;
    let spec = TokenSpec {
        user_id: Some("u1".into()),
        ..TokenSpec::app(demo::AGORA_APP_ID, now_secs() as u32, 600, 9)
    };
    let resp = agora_with_token(&emu, &spec.build(demo::AGORA_APP_CERTIFICATE)).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let error = resp.json()["error"].clone();
    assert!(
        error == "auth_bad_access_token" || error == "unauthorized",
        "{error}"
    );
}

#[tokio::test]
async fn easemob_tokens_the_emulator_never_issued_are_refused() {
    let emu = TestEmulator::demo().await;
    let real = emu.easemob_token().await;
    let mut altered = real.clone();
    altered.push('A');
    for token in [altered, "YWMtnever-issued".to_owned(), agora_token(600)] {
        easemob_with_token(&emu, &token)
            .await
            .assert_error(401, "auth_bad_access_token");
    }
    assert_eq!(easemob_with_token(&emu, &real).await.status, 200);
}

/// Requests an Easemob token with `ttl` (any JSON) and returns the whole answer.
async fn easemob_token_with_ttl(emu: &TestEmulator, ttl: Value) -> Value {
    let body = json!({"grant_type": "client_credentials", "client_id": demo::EASEMOB_CLIENT_ID,
                      "client_secret": demo::EASEMOB_CLIENT_SECRET, "ttl": ttl});
    let url = format!("{}/token", emu.easemob());
    let resp = common::http(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[tokio::test]
async fn easemob_token_answers_the_vendor_fields() {
    let emu = TestEmulator::demo().await;
    let v = easemob_token_with_ttl(&emu, json!(1024000)).await;
    assert_eq!(v["expires_in"], 1024000);
    assert!(
        v["access_token"].as_str().unwrap().starts_with("YWMt"),
        "{v}"
    );
    let application = v["application"].as_str().unwrap();
    let groups: Vec<usize> = application.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "a UUID: {application}");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["access_token", "expires_in", "application"]);
}

#[tokio::test]
async fn easemob_token_with_ttl_1_expires() {
    let emu = TestEmulator::demo().await;
    let v = easemob_token_with_ttl(&emu, json!(1)).await;
    assert_eq!(v["expires_in"], 1);
    let token = v["access_token"].as_str().unwrap();
    // Expiry has one-second resolution, so 1.1 s is past it wherever in the second it began.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    easemob_with_token(&emu, token)
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn easemob_ttl_may_be_a_string_and_0_never_expires() {
    let emu = TestEmulator::demo().await;
    let v = easemob_token_with_ttl(&emu, json!("3600")).await;
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(
        easemob_with_token(&emu, v["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );

    let forever = easemob_token_with_ttl(&emu, json!(0)).await;
    assert_eq!(forever["expires_in"], 0);
    assert_eq!(
        easemob_with_token(&emu, forever["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );

    let default = easemob_token_with_ttl(&emu, Value::Null).await;
    assert_eq!(default["expires_in"], 5_184_000, "the configured default");
}

// ---------------------------------------------------------------------------------------------
// Quotas

#[tokio::test]
async fn quota_admits_the_limit_then_429_until_the_window_slides() {
    let config = demo_config_with(|app| {
        app.quotas.insert("offline_msg_count".into(), 5);
    });
    let emu = TestEmulator::start(config).await;
    let prefixes = Prefix::both(&emu).await;
    for p in &prefixes {
        eprintln!("under {}", p.label);
        let started = Instant::now();
        for _ in 0..5 {
            let resp = p.get("/users/u1/offline_msg_count").await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        let v = p
            .get("/users/u1/offline_msg_count")
            .await
            .assert_error(429, "reach_limit");
        assert_eq!(v["error_description"], "This request has reached api limit");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "the six calls shared one window"
        );
        // Quotas are per endpoint: another endpoint of the same app still answers.
        assert_eq!(p.get("/users/u1/offline_msg_status/1").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1050)).await;
    for p in &prefixes {
        assert_eq!(
            p.get("/users/u1/offline_msg_count").await.status,
            200,
            "under {}",
            p.label
        );
    }
}

#[tokio::test]
async fn unauthorized_calls_use_no_quota() {
    let config = demo_config_with(|app| {
        app.quotas.insert("offline_msg_count".into(), 5);
    });
    let emu = TestEmulator::start(config).await;
    for_both(&emu, async |p| {
        for _ in 0..8 {
            p.anonymous(Method::GET, "/users/u1/offline_msg_count")
                .await
                .assert_error(401, "unauthorized");
        }
        for _ in 0..5 {
            assert_eq!(p.get("/users/u1/offline_msg_count").await.status, 200);
        }
        p.get("/users/u1/offline_msg_count")
            .await
            .assert_error(429, "reach_limit");
        // Authentication comes first even when the quota is spent.
        p.anonymous(Method::GET, "/users/u1/offline_msg_count")
            .await
            .assert_error(401, "unauthorized");
    })
    .await;
}

#[tokio::test]
async fn token_endpoint_has_a_quota_of_its_own() {
    let config = demo_config_with(|app| {
        app.quotas.insert("token".into(), 3);
    });
    let emu = TestEmulator::start(config).await;
    for _ in 0..3 {
        emu.easemob_token().await;
    }
    let url = format!("{}/token", emu.easemob());
    let body = r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret"}"#;
    let resp = common::http(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        Some(body),
    )
    .await;
    resp.assert_error(429, "reach_limit");
}

// ---------------------------------------------------------------------------------------------
// Faults and the control API

#[tokio::test]
async fn latency_fault_delays_vendor_calls_but_not_the_control_api() {
    let emu = TestEmulator::demo().await;
    let [agora, _] = Prefix::both(&emu).await;
    let resp = put_faults(&emu, r#"{"latency_ms":300}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["latency_ms"], 300);

    let started = Instant::now();
    assert_eq!(agora.get("/users/u1/offline_msg_count").await.status, 200);
    let delayed = started.elapsed();
    assert!(delayed >= Duration::from_millis(300), "{delayed:?}");
    assert!(delayed < Duration::from_millis(2000), "{delayed:?}");

    let started = Instant::now();
    emu.stats().await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "control calls are not delayed"
    );

    put_faults(&emu, "{}").await;
    let started = Instant::now();
    agora.get("/users/u1/offline_msg_count").await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "clearing the faults removes the delay"
    );
}

#[tokio::test]
async fn error_fault_answers_the_configured_status_and_counts_it() {
    let emu = TestEmulator::demo().await;
    let prefixes = Prefix::both(&emu).await;
    let resp = put_faults(&emu, r#"{"error_rate":1.0,"error_status":503}"#).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for p in &prefixes {
        for _ in 0..3 {
            p.get("/users/u1/offline_msg_count")
                .await
                .assert_error(503, "server_error");
        }
    }
    let stats = emu.stats().await;
    assert_eq!(stats["responses"]["503"], 6, "{stats}");
    assert_eq!(stats["requests"]["offline_msg_count"], 6, "{stats}");

    put_faults(&emu, r#"{"error_rate":0.0}"#).await;
    assert_eq!(
        prefixes[0].get("/users/u1/offline_msg_count").await.status,
        200
    );
}

#[tokio::test]
async fn reset_fault_drops_the_connection_without_an_answer() {
    let emu = TestEmulator::demo().await;
    let auth = format!("Bearer {}", agora_token(600));
    let url = format!("{}/users/u1/offline_msg_count", emu.agora());
    assert_eq!(put_faults(&emu, r#"{"reset_rate":1.0}"#).await.status, 200);
    for _ in 0..3 {
        let outcome = Http::new()
            .try_send(Method::GET, &url, &[("authorization", &auth)], None)
            .await;
        let err = outcome.expect_err("the connection must be dropped");
        assert!(
            !err.is_connect(),
            "connected, then lost the connection: {err:?}"
        );
    }
    // The control API stays reachable and saw the requests.
    assert_eq!(emu.requests("offline_msg_count").await, 3);
    put_faults(&emu, r#"{"reset_rate":0.0}"#).await;
    let resp = Http::new()
        .try_send(Method::GET, &url, &[("authorization", &auth)], None)
        .await;
    assert_eq!(resp.expect("answered again").status, 200);
}

#[tokio::test]
async fn faults_never_apply_to_the_control_api() {
    let emu = TestEmulator::demo().await;
    let all = r#"{"latency_ms":0,"error_rate":1.0,"error_status":500,"reset_rate":1.0}"#;
    assert_eq!(put_faults(&emu, all).await.status, 200);
    let base = emu.base();
    let http = Http::new();
    let stats = http
        .try_send(Method::GET, &format!("{base}/__emulator/stats"), &[], None)
        .await;
    assert_eq!(stats.expect("stats answered").status, 200);
    let faults = http
        .try_send(Method::GET, &format!("{base}/__emulator/faults"), &[], None)
        .await;
    assert_eq!(faults.expect("faults answered").json()["error_status"], 500);
    let reset = http
        .try_send(Method::POST, &format!("{base}/__emulator/reset"), &[], None)
        .await;
    assert_eq!(reset.expect("reset answered").status, 200);
}

#[tokio::test]
async fn invalid_faults_bodies_are_400_and_change_nothing() {
    let emu = TestEmulator::demo().await;
    assert_eq!(put_faults(&emu, r#"{"latency_ms":5}"#).await.status, 200);
    let bad = [
        r#"{"error_rate":1.5}"#,
        r#"{"reset_rate":-0.1}"#,
        r#"{"error_status":200}"#,
        r#"{"error_status":600}"#,
        r#"{"latency_ms":60001}"#,
        r#"{"latency_ms":"fast"}"#,
        r#"{"latnecy_ms":10}"#,
        "not json",
        "",
    ];
    for body in bad {
        let resp = put_faults(&emu, body).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
    }
    let url = format!("{}/__emulator/faults", emu.base());
    let current = common::http(Method::GET, &url, &[], None).await.json();
    let expected =
        json!({"latency_ms": 5, "error_rate": 0.0, "error_status": 503, "reset_rate": 0.0});
    assert_eq!(current, expected);
}

#[tokio::test]
async fn stats_count_requests_per_endpoint_and_responses_per_status() {
    let emu = TestEmulator::demo().await;
    let prefixes = Prefix::both(&emu).await;
    let reset = common::http(
        Method::POST,
        &format!("{}/__emulator/reset", emu.base()),
        &[],
        None,
    )
    .await;
    assert_eq!(
        reset.status, 200,
        "the setup's token request is not part of the count"
    );

    let token_body =
        json!({"grant_type": "client_credentials", "client_id": demo::EASEMOB_CLIENT_ID,
                            "client_secret": demo::EASEMOB_CLIENT_SECRET})
        .to_string();
    for (p, batch) in prefixes
        .iter()
        .zip([r#"{"usernames":["a","b","c"]}"#, r#"{"usernames":["a"]}"#])
    {
        // Under the Agora prefix `token` is not an endpoint: authenticated, then 404.
        p.post("/token", &token_body).await;
        p.get("/users/u1/offline_msg_count").await;
        p.get("/users/u1/offline_msg_status/1").await;
        p.post("/users/u1/presence/web_1/1", r#"{"ext":""}"#).await;
        p.post("/users/u1/presence/60", r#"{"usernames":["u2"]}"#)
            .await;
        p.post("/users/u1/presence", batch).await;
        p.delete("/users/u1/presence", r#"["u2"]"#).await;
        p.get("/users/u1/presence/sublist?pageNum=1&pageSize=10")
            .await;
        p.send("u1", &["u2"]).await;
        p.get("/chatgroups").await;
    }
    prefixes[0]
        .anonymous(Method::GET, "/users/u1/offline_msg_count")
        .await;

    let stats = emu.stats().await;
    let expected_requests = json!({
        "token": 2, "offline_msg_count": 3, "offline_msg_status": 2, "presence_set": 2,
        "presence_subscribe": 2, "presence_batch_get": 2, "presence_unsubscribe": 2,
        "presence_sublist": 2, "messages_users": 2, "other": 2,
    });
    assert_eq!(stats["requests"], expected_requests);
    assert_eq!(stats["responses"], json!({"200": 17, "401": 1, "404": 3}));
    assert_eq!(stats["presence_batch_sizes"], json!([3, 1]));
}

#[tokio::test]
async fn reset_zeroes_the_stats_but_keeps_the_state() {
    let emu = TestEmulator::demo().await;
    let [agora, easemob] = Prefix::both(&emu).await;
    agora.send("alice", &["bob"]).await;
    easemob
        .post("/users/c1/presence", r#"{"usernames":["a","b"]}"#)
        .await;
    assert_eq!(emu.requests("messages_users").await, 1);

    let url = format!("{}/__emulator/reset", emu.base());
    let resp = common::http(Method::POST, &url, &[], None).await;
    assert_eq!(resp.json(), json!({"result": "ok"}));

    let stats = emu.stats().await;
    let requests = stats["requests"].as_object().unwrap();
    assert_eq!(requests.len(), 10, "{stats}");
    assert!(requests.values().all(|n| n == 0), "{stats}");
    assert_eq!(stats["responses"], json!({}));
    assert_eq!(stats["presence_batch_sizes"], json!([]));
    assert_eq!(
        agora.offline_count("bob").await,
        json!(1),
        "state survives the reset"
    );
}

#[tokio::test]
async fn unknown_control_paths_are_404() {
    let emu = TestEmulator::demo().await;
    let url = format!("{}/__emulator/nothing", emu.base());
    common::http(Method::GET, &url, &[], None)
        .await
        .assert_error(404, "service_resource_not_found");
    // Wrong method on a known control path.
    let url = format!("{}/__emulator/reset", emu.base());
    common::http(Method::GET, &url, &[], None)
        .await
        .assert_error(404, "service_resource_not_found");
}

// ---------------------------------------------------------------------------------------------
// Run-time credentials and revocation

async fn put_credentials(emu: &TestEmulator, body: Value) -> Resp {
    let url = format!("{}/__emulator/credentials", emu.base());
    common::http(Method::PUT, &url, &[], Some(&body.to_string())).await
}

#[tokio::test]
async fn a_second_agora_certificate_is_accepted_alongside_the_first_until_it_replaces_it() {
    const NEW: &str = "00112233445566778899aabbccddeeff";
    let emu = TestEmulator::demo().await;
    let now = now_secs();
    let old_token = agora_token_with(demo::AGORA_APP_ID, demo::AGORA_APP_CERTIFICATE, now, 600);
    let new_token = agora_token_with(demo::AGORA_APP_ID, NEW, now, 600);
    assert_eq!(agora_with_token(&emu, &new_token).await.status, 401);
    let body = json!({"app_id": demo::AGORA_APP_ID, "app_certificate": NEW, "keep_previous": true});
    assert_eq!(put_credentials(&emu, body).await.status, 200);
    assert_eq!(agora_with_token(&emu, &old_token).await.status, 200);
    assert_eq!(agora_with_token(&emu, &new_token).await.status, 200);
    let body = json!({"app_id": demo::AGORA_APP_ID, "app_certificate": NEW});
    assert_eq!(put_credentials(&emu, body).await.status, 200);
    agora_with_token(&emu, &old_token)
        .await
        .assert_error(401, "auth_bad_access_token");
    assert_eq!(agora_with_token(&emu, &new_token).await.status, 200);
}

#[tokio::test]
async fn a_new_easemob_secret_is_required_for_new_tokens_while_issued_ones_stay_valid() {
    let emu = TestEmulator::demo().await;
    let issued = emu.easemob_token().await;
    let body = json!({"org": demo::EASEMOB_ORG, "app": demo::EASEMOB_APP, "client_secret": "s2"});
    assert_eq!(put_credentials(&emu, body).await.status, 200);
    assert_eq!(easemob_with_token(&emu, &issued).await.status, 200);
    let old_secret = json!({"grant_type":"client_credentials","client_id":demo::EASEMOB_CLIENT_ID,"client_secret":demo::EASEMOB_CLIENT_SECRET});
    let url = format!("{}/token", emu.easemob());
    let json_type = [("content-type", "application/json")];
    common::http(
        Method::POST,
        &url,
        &json_type,
        Some(&old_secret.to_string()),
    )
    .await
    .assert_error(400, "invalid_grant");
    let new_secret = json!({"grant_type":"client_credentials","client_id":demo::EASEMOB_CLIENT_ID,"client_secret":"s2"});
    let resp = common::http(
        Method::POST,
        &url,
        &json_type,
        Some(&new_secret.to_string()),
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn credential_changes_must_name_an_app_and_fit_its_vendor() {
    let emu = TestEmulator::demo().await;
    let cases = [
        (json!({"app_certificate": "x"}), 400),
        (
            json!({"app_id": "ffffffffffffffffffffffffffffffff", "app_certificate": "x"}),
            404,
        ),
        (
            json!({"app_id": demo::AGORA_APP_ID, "client_secret": "x"}),
            400,
        ),
        (
            json!({"org": demo::EASEMOB_ORG, "app": demo::EASEMOB_APP, "app_certificate": "x"}),
            400,
        ),
        (json!({"unknown": 1}), 400),
    ];
    for (body, status) in cases {
        assert_eq!(
            put_credentials(&emu, body.clone()).await.status,
            status,
            "{body}"
        );
    }
}

#[tokio::test]
async fn revoking_tokens_invalidates_issued_easemob_tokens_and_older_agora_tokens() {
    let emu = TestEmulator::demo().await;
    let easemob = emu.easemob_token().await;
    let now = now_secs();
    let earlier = agora_token_with(
        demo::AGORA_APP_ID,
        demo::AGORA_APP_CERTIFICATE,
        now - 5,
        600,
    );
    let url = format!("{}/__emulator/revoke-tokens", emu.base());
    assert_eq!(
        common::http(Method::POST, &url, &[], None).await.status,
        200
    );
    assert_eq!(easemob_with_token(&emu, &easemob).await.status, 401);
    agora_with_token(&emu, &earlier)
        .await
        .assert_error(401, "unauthorized");
    let fresh = agora_token_with(
        demo::AGORA_APP_ID,
        demo::AGORA_APP_CERTIFICATE,
        now_secs(),
        600,
    );
    assert_eq!(
        agora_with_token(&emu, &fresh).await.status,
        200,
        "issued this second"
    );
    let reissued = emu.easemob_token().await;
    assert_eq!(easemob_with_token(&emu, &reissued).await.status, 200);
}
