//! Cluster mode, what replicas share besides quotas: invalidations (pub/sub), the Easemob app
//! token (sealed in Redis, one fetch for the fleet) and client tokens. Each test starts its own
//! `redis-server`, an emulator, and `imgate serve` processes in cluster mode.

mod common;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use common::redis::TestRedis;
use common::{agora_token, demo_config, Http, Resp, Served, TestEmulator};
use imgate::cluster::RawCluster;
use imgate::demo;

/// The longest an invalidation may take to reach another replica.
const CROSSING: Duration = Duration::from_millis(50);
/// The demo's two apps: Agora and Easemob path prefixes.
const PREFIXES: [&str; 2] = [
    concat!("/app-id/", "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"),
    "/demo-org/demo-app",
];
const ADMIN_KEY: &str = "demo-admin-key";
const SECOND_KEY: &str = "second-key";

/// One `imgate serve` process in cluster mode.
struct Replica {
    served: Served,
    http: Http,
}

impl Replica {
    /// Starts a replica of the demo configuration in front of `emu` on `redis`; `name` tells
    /// it apart.
    fn spawn(name: &str, emu: &TestEmulator, redis: &TestRedis) -> Replica {
        let mut raw = demo_config(&emu.base());
        // A second caller without a quota (the tests poll).
        let mut second = raw.clients[0].clone();
        second.name = "second".into();
        second.key = Some(SECOND_KEY.into());
        raw.clients.push(second);
        raw.cluster = Some(RawCluster {
            redis_url: redis.url(),
            key_prefix: "test:".into(),
            timeout_ms: 250,
        });
        Replica {
            served: Served::spawn(&format!("cluster-share-{name}"), raw, &[]),
            http: Http::new(),
        }
    }

    /// Waits until the replica is ready (every app holds a token).
    async fn ready(mut self) -> Replica {
        self.served.wait_ready().await;
        self
    }

    async fn send(&self, method: Method, path: &str, key: &str, body: Option<&str>) -> Resp {
        let url = format!("{}{path}", self.served.base());
        let auth = format!("Bearer {key}");
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.http.send(method, &url, &headers, body).await
    }

    /// A presence batch get of `users` by `viewer`.
    async fn presence(&self, prefix: &str, key: &str, viewer: &str, users: &[&str]) -> Resp {
        let body = json!({ "usernames": users }).to_string();
        let path = format!("{prefix}/users/{viewer}/presence");
        let resp = self.send(Method::POST, &path, key, Some(&body)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp
    }

    /// The offline count of `user`.
    async fn count(&self, prefix: &str, key: &str, user: &str) -> (u64, String) {
        let path = format!("{prefix}/users/{user}/offline_msg_count");
        let resp = self.send(Method::GET, &path, key, None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let count = resp.json()["data"][user].as_u64().unwrap();
        (count, resp.header("x-cache").unwrap_or("").to_owned())
    }

    async fn admin(&self, path: &str) -> Resp {
        let url = format!("http://{}{path}", self.served.admin);
        let auth = format!("Bearer {ADMIN_KEY}");
        self.http
            .send(Method::POST, &url, &[("authorization", &auth)], None)
            .await
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.served.admin);
        self.http.send(Method::GET, &url, &[], None).await.text()
    }
}

/// Three replicas started together on one Redis and one emulator.
async fn fleet(emu: &TestEmulator, redis: &TestRedis) -> [Replica; 3] {
    let spawned = ["a", "b", "c"].map(|name| Replica::spawn(name, emu, redis));
    let [a, b, c] = spawned;
    [a.ready().await, b.ready().await, c.ready().await]
}

/// Polls `read` until `holds` accepts its value; returns how long that took after `since`, or
/// panics with the last value after a second.
async fn crossing<T: std::fmt::Debug, F, Fut>(
    since: Instant,
    mut read: F,
    holds: impl Fn(&T) -> bool,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    loop {
        let value = read().await;
        if holds(&value) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "never crossed: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `ext` of each user in a presence batch answer.
fn exts(resp: &Resp) -> Vec<String> {
    resp.json()["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["ext"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A presence set through `writer` reaches `reader`'s cached batch get, and a message sent
/// through `writer` reaches `reader`'s cached offline count, both within [`CROSSING`]. Returns
/// the slowest crossing.
async fn writes_cross(writer: &Replica, reader: &Replica, round: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    let callers = [(PREFIXES[0], demo::CLIENT_KEY), (PREFIXES[1], SECOND_KEY)];
    for (i, (prefix, key)) in callers.into_iter().enumerate() {
        let (viewer, user) = (format!("viewer-{round}-{i}"), format!("pu-{round}-{i}"));
        let users = [user.as_str(), "someone-else"];
        reader.presence(prefix, key, &viewer, &users).await;
        let cached = reader.presence(prefix, key, &viewer, &users).await;
        assert_eq!(
            cached.header("x-cache"),
            Some("HIT"),
            "{round}: cached on the reader"
        );
        let set = format!("{prefix}/users/{user}/presence/web_1/1");
        let ext = format!("{{\"ext\":\"{round}\"}}");
        let resp = writer.send(Method::POST, &set, key, Some(&ext)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let took = crossing(
            Instant::now(),
            || reader.presence(prefix, key, &viewer, &users),
            |resp| exts(resp)[0] == round,
        )
        .await;
        slowest = slowest.max(took);

        let recipient = format!("oc-{round}-{i}");
        assert_eq!(reader.count(prefix, key, &recipient).await.0, 0);
        assert_eq!(reader.count(prefix, key, &recipient).await.1, "HIT");
        let message =
            json!({"from":"x","to":[recipient, "another"],"type":"txt","body":{"msg":"hi"}});
        let path = format!("{prefix}/messages/users");
        let resp = writer
            .send(Method::POST, &path, key, Some(&message.to_string()))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let took = crossing(
            Instant::now(),
            || reader.count(prefix, key, &recipient),
            |(count, _)| *count == 1,
        )
        .await;
        slowest = slowest.max(took);
    }
    assert!(slowest <= CROSSING, "{round}: slowest crossing {slowest:?}");
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_purges_on_one_replica_reach_the_others_within_50_ms() {
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let [a, b, c] = fleet(&emu, &redis).await;
    let took = [
        writes_cross(&a, &b, "ab").await,
        writes_cross(&b, &c, "bc").await,
        writes_cross(&c, &a, "ca").await,
    ];
    println!("slowest crossings: {took:?}");

    // A purge through A's admin API clears B and C: a count changed behind imgate's back
    // (straight at the vendor) shows up at once; by user on Easemob, everything on Agora.
    let purges = [
        (
            PREFIXES[1],
            emu.easemob(),
            emu.easemob_token().await,
            "/admin/cache/purge?app=easemob-demo&user=behind",
        ),
        (
            PREFIXES[0],
            emu.agora(),
            agora_token(600),
            "/admin/cache/purge",
        ),
    ];
    for (prefix, vendor, vendor_token, purge) in purges {
        for reader in [&b, &c] {
            assert_eq!(reader.count(prefix, "demo-key", "behind").await.0, 0);
        }
        let message = json!({"from":"x","to":["behind"],"type":"txt","body":{"msg":"hi"}});
        let resp = Http::new()
            .send(
                Method::POST,
                &format!("{vendor}/messages/users"),
                &[
                    ("authorization", &format!("Bearer {vendor_token}")),
                    ("content-type", "application/json"),
                ],
                Some(&message.to_string()),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        for reader in [&b, &c] {
            let (count, cache) = reader.count(prefix, "demo-key", "behind").await;
            assert_eq!(
                (count, cache.as_str()),
                (0, "HIT"),
                "not through imgate: stale"
            );
        }
        assert_eq!(a.admin(purge).await.status, 200);
        let since = Instant::now();
        for reader in [&b, &c] {
            let took = crossing(
                since,
                || reader.count(prefix, "demo-key", "behind"),
                |(count, _)| *count == 1,
            )
            .await;
            assert!(took <= CROSSING, "{purge}: {took:?}");
        }
    }
}

/// The `imgate_token_expiry_timestamp_seconds` of the Easemob demo app.
fn easemob_expiry(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("imgate_token_expiry_timestamp_seconds")
                && l.contains(r#"app="easemob-demo""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Easemob token expiry in {metrics}"))
}

/// The fleet's stored token for the Easemob demo app, read with a plain Redis client: the
/// generation and the sealed bytes.
async fn stored_token(redis: &TestRedis) -> (u64, Vec<u8>) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let (generation, sealed): (u64, Vec<u8>) = redis::cmd("HMGET")
        .arg("test:{easemob-demo}:token")
        .arg("generation")
        .arg("sealed")
        .query_async(&mut connection)
        .await
        .unwrap();
    (generation, sealed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shares_one_sealed_easemob_token_and_renews_it_once() {
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let fleet = fleet(&emu, &redis).await;
    assert_eq!(
        emu.requests("token").await,
        1,
        "one fetch at the fleet's start"
    );

    // Sealed: Redis alone never yields the token, the app's credentials open it.
    let (generation, sealed) = stored_token(&redis).await;
    assert_eq!(generation, 1);
    let credentials = imgate::token::Credentials::Easemob {
        org: demo::EASEMOB_ORG.into(),
        app: demo::EASEMOB_APP.into(),
        client_id: demo::EASEMOB_CLIENT_ID.into(),
        client_secret: demo::EASEMOB_CLIENT_SECRET.into(),
        ttl_secs: None,
    };
    let opened = imgate::token::seal::Sealer::new(&credentials)
        .open(generation, &sealed)
        .expect("sealed with the app's credentials");
    let plain = secrecy::ExposeSecret::expose_secret(&opened.token).to_owned();
    assert!(plain.starts_with("YWMt"), "an Easemob token");
    assert!(
        !sealed.windows(plain.len()).any(|w| w == plain.as_bytes())
            && !sealed.windows(4).any(|w| w == b"YWMt"),
        "the token is stored in clear"
    );
    let direct = Http::new()
        .send(
            Method::GET,
            &format!("{}/users/u/offline_msg_count", emu.easemob()),
            &[("authorization", &format!("Bearer {plain}"))],
            None,
        )
        .await;
    assert_eq!(direct.status, 200, "the fleet's token is the one in Redis");

    // The vendor revokes every token: one call through each replica in turn, each 200, one
    // fetch for the fleet (the replicas after the first pick up its token).
    let revoked = Http::new()
        .send(
            Method::POST,
            &format!("{}/__emulator/revoke-tokens", emu.base()),
            &[],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200);
    let keys = [demo::CLIENT_KEY, SECOND_KEY, demo::CLIENT_KEY];
    for (i, (replica, key)) in fleet.iter().zip(keys).enumerate() {
        let path = format!("{}/users/revoked-{i}/offline_msg_count", PREFIXES[1]);
        let resp = replica.send(Method::GET, &path, key, None).await;
        assert_eq!(resp.status, 200, "replica {i}: {}", resp.text());
    }
    assert_eq!(
        emu.requests("token").await,
        2,
        "one fetch after the revocation"
    );
    assert_eq!(stored_token(&redis).await.0, 2);

    // A rotation on A: one fetch, and every replica moves to the new token.
    let before = easemob_expiry(&fleet[1].metrics().await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = fleet[0]
        .admin("/admin/tokens/rotate?app=easemob-demo")
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    assert_eq!(emu.requests("token").await, 3);
    assert_eq!(stored_token(&redis).await.0, 3);
    let expiry = easemob_expiry(&fleet[0].metrics().await);
    assert!(
        expiry > before + 1.0,
        "a new token on A: {before} → {expiry}"
    );
    for replica in &fleet[1..] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while (easemob_expiry(&replica.metrics().await) - expiry).abs() > 0.01 {
            assert!(
                Instant::now() < deadline,
                "replica {} kept its token",
                replica.served.api
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (i, replica) in fleet.iter().enumerate() {
        let path = format!("{}/users/rotated-{i}/offline_msg_count", PREFIXES[1]);
        let resp = replica
            .send(Method::GET, &path, demo::CLIENT_KEY, None)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(emu.requests("token").await, 3, "no further fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_work_on_every_replica_and_invalidation_survives_a_redis_restart() {
    let mut redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let [a, b, c] = fleet(&emu, &redis).await;

    // Client tokens issued by A, for two clients and both apps, work on B, C and a replica
    // started later.
    let mut tokens = Vec::new();
    for (client, key) in [("demo", demo::CLIENT_KEY), ("second", SECOND_KEY)] {
        for prefix in PREFIXES {
            let body =
                json!({"grant_type":"client_credentials","client_id":client,"client_secret":key});
            let resp = a
                .send(
                    Method::POST,
                    &format!("{prefix}/token"),
                    "",
                    Some(&body.to_string()),
                )
                .await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            tokens.push(resp.json()["access_token"].as_str().unwrap().to_owned());
        }
    }
    let later = Replica::spawn("later", &emu, &redis).ready().await;
    for replica in [&b, &c, &later] {
        for token in &tokens {
            for prefix in PREFIXES {
                let path = format!("{prefix}/users/t/offline_msg_count");
                let resp = replica.send(Method::GET, &path, token, None).await;
                assert_eq!(resp.status, 200, "{}", resp.text());
            }
        }
    }

    // Redis dies and comes back: once the replicas have resubscribed, writes cross again.
    writes_cross(&a, &b, "before").await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for replica in [&a, &b, &c] {
        while !replica
            .metrics()
            .await
            .contains("imgate_cluster_redis_up 1")
        {
            assert!(
                Instant::now() < deadline,
                "replica {} did not rejoin",
                replica.served.api
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Resubscription follows the reconnection within its backoff (at most a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writes_cross(&b, &c, "after").await;
    writes_cross(&c, &a, "after2").await;
}
