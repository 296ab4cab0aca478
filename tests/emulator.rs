//! The vendor emulator over HTTP on a loopback port: every endpoint under both prefixes.

mod common;

use common::{agora_token, TestEmulator};
use http::Method;

#[tokio::test]
async fn offline_count_answers_with_the_vendor_envelope() {
    let emu = TestEmulator::demo().await;
    let token = agora_token(600);
    let auth = format!("Bearer {token}");
    let resp = common::http(
        Method::GET,
        &format!("{}/users/u1/offline_msg_count", emu.agora()),
        &[("authorization", &auth)],
        None,
    )
    .await;
    let v = resp.json();
    assert_eq!(v["data"], serde_json::json!({"u1": 0}));
    assert_eq!(v["action"], "get");
}
