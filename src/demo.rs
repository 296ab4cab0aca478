//! `imgate demo`: the emulator and the gateway in one process, with the demo identities (the
//! README's "Try it"; the emulator's default configuration uses them too), and curl commands
//! to paste.

use std::net::SocketAddr;

use crate::config::{ConfigErrors, RawConfig, Settings};

/// Demo Agora App ID.
pub const AGORA_APP_ID: &str = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";
/// Demo Agora App Certificate.
pub const AGORA_APP_CERTIFICATE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// Demo Easemob org name.
pub const EASEMOB_ORG: &str = "demo-org";
/// Demo Easemob app name.
pub const EASEMOB_APP: &str = "demo-app";
/// Demo Easemob client id.
pub const EASEMOB_CLIENT_ID: &str = "demo-client-id";
/// Demo Easemob client secret.
pub const EASEMOB_CLIENT_SECRET: &str = "demo-client-secret";
/// Key of the demo client without a quota.
pub const CLIENT_KEY: &str = "demo-key";

/// The embedded demo configuration.
pub const CONFIG: &str = include_str!("../config/demo.toml");

/// Where the demo's three servers listen.
#[derive(Debug, Clone, Copy)]
pub struct DemoAddrs {
    /// Gateway API listener.
    pub listen: SocketAddr,
    /// Gateway admin listener.
    pub admin_listen: SocketAddr,
    /// Emulator listener (the gateway's upstream).
    pub emulator_listen: SocketAddr,
}

/// The demo configuration pointed at the given addresses.
pub fn settings(addrs: DemoAddrs) -> Result<Settings, ConfigErrors> {
    let mut raw = RawConfig::parse(CONFIG)?;
    raw.server.listen = addrs.listen.to_string();
    raw.server.admin_listen = addrs.admin_listen.to_string();
    for app in &mut raw.apps {
        app.upstream = format!("http://{}", addrs.emulator_listen);
    }
    raw.validate()
}

/// Commands a new user can paste to try every endpoint through the gateway under both prefixes.
pub fn curl_commands(addrs: DemoAddrs) -> String {
    let gateway = format!("http://{}", addrs.listen);
    let auth = format!("-H 'Authorization: Bearer {CLIENT_KEY}'");
    let json = "-H 'Content-Type: application/json'";
    let mut out = String::new();
    let prefixes = [
        ("Agora Chat (声网 IM)", format!("/app-id/{AGORA_APP_ID}")),
        ("Easemob (环信)", format!("/{EASEMOB_ORG}/{EASEMOB_APP}")),
    ];
    for (vendor, prefix) in prefixes {
        let base = format!("{gateway}{prefix}");
        out.push_str(&format!(
            "\n# {vendor}: send bob a message while he is offline; keep its id in $MSG\n\
             MSG=$(curl -s -X POST {base}/messages/users {auth} {json} -d '{{\"from\":\"alice\",\"to\":[\"bob\"],\"type\":\"txt\",\"body\":{{\"msg\":\"hello\"}}}}' | tee /dev/stderr | grep -o '\"bob\":\"[0-9]*\"' | cut -d'\"' -f4); echo\n\
             # bob's offline count and the message's status (1, undelivered)\n\
             curl -s {base}/users/bob/offline_msg_count {auth}; echo\n\
             curl -s {base}/users/bob/offline_msg_status/$MSG {auth}; echo\n\
             # bob comes online on a phone: his messages are delivered (0, delivered)\n\
             curl -s -X POST {base}/users/bob/presence/android_1/1 {auth} {json} -d '{{\"ext\":\"on the bus\"}}'; echo\n\
             curl -s {base}/users/bob/offline_msg_count {auth}; echo\n\
             curl -s {base}/users/bob/offline_msg_status/$MSG {auth}; echo\n\
             # alice looks up presence, subscribes to bob and carol, lists and unsubscribes\n\
             curl -s -X POST {base}/users/alice/presence {auth} {json} -d '{{\"usernames\":[\"bob\",\"carol\"]}}'; echo\n\
             curl -s -X POST {base}/users/alice/presence/3600 {auth} {json} -d '{{\"usernames\":[\"bob\",\"carol\"]}}'; echo\n\
             curl -s '{base}/users/alice/presence/sublist?pageNum=1&pageSize=10' {auth}; echo\n\
             curl -s -X DELETE {base}/users/alice/presence {auth} {json} -d '[\"bob\",\"carol\"]'; echo\n"
        ));
    }
    out.push_str(&format!(
        "\n# the gateway's own metrics\ncurl -s http://{}/metrics | grep -E '^imgate_(http|upstream)_requests_total'\n",
        addrs.admin_listen
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> DemoAddrs {
        DemoAddrs {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin_listen: "127.0.0.1:9090".parse().unwrap(),
            emulator_listen: "127.0.0.1:8081".parse().unwrap(),
        }
    }

    #[test]
    fn the_embedded_config_is_valid_and_follows_the_addresses() {
        let s = settings(DemoAddrs {
            emulator_listen: "127.0.0.1:18081".parse().unwrap(),
            ..addrs()
        })
        .unwrap();
        assert_eq!(s.apps[0].upstream.to_string(), "http://127.0.0.1:18081/");
        assert_eq!(s.apps[0].name, "agora-demo");
        assert_eq!(s.apps[1].name, "easemob-demo");
    }

    #[test]
    fn curl_commands_cover_both_prefixes_and_the_gateway_address() {
        let text = curl_commands(addrs());
        assert!(text.contains("http://127.0.0.1:8080/app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6/users/bob/offline_msg_count"));
        assert!(text.contains("http://127.0.0.1:8080/demo-org/demo-app/users/alice/presence/3600"));
        assert!(
            !text.contains(":8081"),
            "callers never talk to the emulator directly"
        );
    }
}
