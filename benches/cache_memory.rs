//! Memory of the offline-count cache: fills it with 1,000,000 entries through the cache's own
//! read path (as vendor answers would) and reports resident memory. Target: under 256 MiB.
//!
//!     cargo bench --bench cache_memory
//!
//! `ENTRIES=200000 cargo bench --bench cache_memory` for a quicker run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use imgate::cache::{Cache, CachePolicy, CacheSettings, Key, Kind};
use imgate::upstream::VendorResponse;
use serde_json::json;

#[path = "../src/allocator.rs"]
mod allocator;

/// The binary's allocator (src/main.rs): resident memory depends on it.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

const APP_ID: &str = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn policy(max_entries: u64) -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(600),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        stale_timeout: Duration::ZERO,
        max_entries,
    }
}

/// The emulator's answer for `user`, field for field.
fn vendor_answer(path: &str, user: &str, count: u64) -> VendorResponse {
    let body = json!({
        "action": "get",
        "uri": format!("http://127.0.0.1:8081{path}"),
        "path": imgate::route::suffix(path),
        "entities": [],
        "data": { user: count },
        "timestamp": 1_795_310_220_515u64,
        "duration": 0,
        "count": 0,
    });
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    VendorResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body.to_string()),
        elapsed: Duration::ZERO,
    }
}

fn main() {
    let entries: u64 = std::env::var("ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = Arc::new(Cache::new(CacheSettings {
            offline_count: policy(entries),
            offline_status: policy(1_000),
            delivered_ttl: Duration::from_secs(3600),
            presence: policy(1_000),
            sublist: policy(1_000),
            batch_window: Duration::from_millis(2),
            max_batch_users: 100,
        }));
        let before = resident_bytes();
        let started = Instant::now();
        for i in 0..entries {
            let user = format!("user{i:07}");
            let path = format!("/app-id/{APP_ID}/users/{user}/offline_msg_count");
            let key = Key { kind: Kind::OfflineCount, app: "agora-demo", user: &user, extra: "" };
            let answer = vendor_answer(&path, &user, i % 7);
            let fetch = move || Box::pin(std::future::ready(Ok(answer))) as imgate::cache::Fetch;
            let suffix = &path["/app-id/".len() + APP_ID.len()..];
            let render = |e: &imgate::cache::Entry| e.body_bytes(&path, suffix, &user);
            let read = cache.read(&key, &path, Instant::now(), render, fetch);
            if read.await.is_err() {
                panic!("the synthetic vendor answer was refused");
            }
        }
        let counts = cache.entry_counts().await;
        let after = resident_bytes();
        let held = counts.iter().find(|(k, _)| *k == Kind::OfflineCount).map_or(0, |(_, n)| *n);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "offline-count cache: {held} entries in {:.1} s; resident {:.1} MiB before, {:.1} MiB after (+{:.1} MiB, {:.0} bytes/entry); target < 256 MiB",
            started.elapsed().as_secs_f64(),
            mib(before),
            mib(after),
            mib(after.saturating_sub(before)),
            after.saturating_sub(before) as f64 / held.max(1) as f64,
        );
    });
}
