//! Cluster mode: several replicas on one Redis (each test starts its own `redis-server`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;

use common::redis::TestRedis;
use common::{demo_config, Http, TestEmulator, TestGateway};
use imgate::cluster::RawCluster;
use imgate::config::RawConfig;

/// `raw` in cluster mode on `redis`.
fn clustered(mut raw: RawConfig, redis: &TestRedis) -> RawConfig {
    raw.cluster = Some(RawCluster {
        redis_url: redis.url(),
        key_prefix: "test:".into(),
        timeout_ms: 200,
    });
    raw
}

/// The value of the first sample of `name` in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ').or_else(|| {
            let (_, after) = rest.strip_prefix('{')?.split_once("} ")?;
            Some(after)
        })?;
        value.trim().parse().ok()
    })
}

/// The first sample of `name` on the admin listener at `admin`.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let metrics = Http::new()
        .try_send(Method::GET, &format!("http://{admin}/metrics"), &[], None)
        .await
        .ok()?;
    sample(&metrics.text(), name)
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_joins_its_redis_and_follows_it_down_and_back() {
    let mut redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::start(clustered(demo_config(&emu.base()), &redis)).await;
    let up = || metric(gw.admin, "imgate_cluster_redis_up");
    assert!(eventually(Duration::from_secs(3), || async { up().await == Some(1.0) }).await);
    assert_eq!(
        sample(&gw.metrics().await, "imgate_cluster_replicas"),
        Some(1.0)
    );
    let members = redis.command("ZCARD test:{cluster}:replicas").unwrap();
    assert_eq!(members.trim(), ":1", "{members}");

    redis.kill();
    assert!(eventually(Duration::from_secs(3), || async { up().await == Some(0.0) }).await);
    redis.restart();
    assert!(
        eventually(Duration::from_secs(5), || async { up().await == Some(1.0) }).await,
        "back within 5 s of Redis's return"
    );
}
