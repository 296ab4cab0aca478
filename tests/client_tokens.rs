//! Client tokens outlive the process that issued them: without `signing_key` they are signed
//! with keys derived from the apps' credentials, so every gateway with the same configuration
//! (another replica, the same one restarted, `imgate demo` run again) accepts them, and
//! changing a client's key still revokes its tokens.

mod common;

use common::*;
use http::Method;
use serde_json::json;

/// Client tokens for each (client, key) through both demo apps' token endpoints of `gw`.
async fn issue(gw: &TestGateway, clients: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut tokens = Vec::new();
    for (client, key) in clients {
        for base in [gw.agora(), gw.easemob()] {
            let body =
                json!({"grant_type":"client_credentials","client_id":client,"client_secret":key});
            let resp = http(
                Method::POST,
                &format!("{base}/token"),
                &[("content-type", "application/json")],
                Some(&body.to_string()),
            )
            .await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            let token = resp.json()["access_token"].as_str().unwrap().to_owned();
            tokens.push((client.to_string(), token));
        }
    }
    tokens
}

/// The status of an offline-count read through both demo apps of `gw` with `token`.
async fn statuses(gw: &TestGateway, token: &str) -> Vec<u16> {
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    for base in [gw.agora(), gw.easemob()] {
        let url = format!("{base}/users/u1/offline_msg_count");
        let resp = http(Method::GET, &url, &[("authorization", &auth)], None).await;
        out.push(resp.status.as_u16());
    }
    out
}

#[tokio::test]
async fn client_tokens_work_on_every_instance_and_after_restarts_until_the_key_changes() {
    let emu = TestEmulator::demo().await;
    let clients = [("demo", "demo-key"), ("demo-limited", "demo-limited-key")];
    let first = TestGateway::demo(&emu).await;
    let tokens = issue(&first, &clients).await;
    let second = TestGateway::demo(&emu).await;
    for (client, token) in &tokens {
        assert_eq!(statuses(&first, token).await, [200, 200], "{client} on A");
        assert_eq!(statuses(&second, token).await, [200, 200], "{client} on B");
    }
    drop(first);
    let restarted = TestGateway::demo(&emu).await;
    for (client, token) in &tokens {
        assert_eq!(statuses(&restarted, token).await, [200, 200], "{client}");
    }

    // The demo client's key changes: its tokens stop working, the other client's still do.
    let mut raw = demo_config(&emu.base());
    let demo = raw.clients.iter_mut().find(|c| c.name == "demo").unwrap();
    demo.key = Some("a-new-demo-key".into());
    let rekeyed = TestGateway::start(raw).await;
    for (client, token) in &tokens {
        let expected = if client == "demo" { 401 } else { 200 };
        assert_eq!(statuses(&rekeyed, token).await, [expected; 2], "{client}");
    }
}
