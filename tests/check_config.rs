//! `imgate check-config` and `imgate serve` on configuration files: exit codes, masking, every
//! error in one run, warnings, and the example configuration.

use std::path::PathBuf;
use std::process::{Command, Output};

fn imgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs imgate")
}

fn example() -> String {
    format!("{}/config/imgate.example.toml", env!("CARGO_MANIFEST_DIR"))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("imgate-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_config_is_valid_and_printed_with_secrets_masked() {
    let secret_file = temp_file("easemob-secret", "canary-easemob-secret\n");
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "/run/secrets/easemob-client-secret",
        secret_file.to_str().unwrap(),
    );
    let config = temp_file("example.toml", &text);
    let out = imgate(
        &["check-config", "--config", config.to_str().unwrap()],
        EXAMPLE_SECRETS,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "the example draws no warning");
    assert!(stdout.contains("name = \"agora-prod\""), "{stdout}");
    assert!(stdout.contains("********"));
    for secret in [
        "canary",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "${AGORA_APP_CERTIFICATE}",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    std::fs::remove_file(config).unwrap();
    std::fs::remove_file(secret_file).unwrap();
}

/// The example's secrets, as canaries.
const EXAMPLE_SECRETS: &[(&str, &str)] = &[
    ("IMGATE_ADMIN_KEY", "canary-admin-key-0123"),
    (
        "IMGATE_CLIENT_TOKEN_KEY",
        "canary-signing-key-0123456789abcdef",
    ),
    ("AGORA_APP_CERTIFICATE", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    ("OPS_TOOLS_KEY", "canary-ops-key"),
];

#[test]
fn every_missing_secret_is_listed_in_one_run() {
    let out = imgate(&["check-config", "--config", &example()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 5, "{stderr}");
    for (field, source) in [
        ("apps[0].app_certificate", "AGORA_APP_CERTIFICATE"),
        (
            "apps[1].client_secret",
            "/run/secrets/easemob-client-secret",
        ),
        ("clients[1].key", "OPS_TOOLS_KEY"),
        ("admin.key", "IMGATE_ADMIN_KEY"),
        ("client_tokens.signing_key", "IMGATE_CLIENT_TOKEN_KEY"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("error: {field}: ")) && e.contains(source)),
            "{field} ({source}) is not listed:\n{stderr}"
        );
    }
    assert!(stderr.contains("5 errors"), "{stderr}");
}

#[test]
fn the_example_documents_every_field_check_config_prints() {
    let secret_file = temp_file("documented-secret", "canary-easemob-secret\n");
    let text = std::fs::read_to_string(example()).unwrap();
    let config = temp_file(
        "documented.toml",
        &text.replace(
            "/run/secrets/easemob-client-secret",
            secret_file.to_str().unwrap(),
        ),
    );
    let out = imgate(
        &["check-config", "--config", config.to_str().unwrap()],
        EXAMPLE_SECRETS,
    );
    assert!(out.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut fields = Vec::new();
    collect_fields("", &printed, &mut fields);
    assert!(fields.len() > 40, "{fields:?}");
    // Each field appears as `name = …`, set or commented out, and each table as a header.
    let documented = |path: &str| {
        let name = path.rsplit('.').next().unwrap();
        text.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{name} ="))
                || line.starts_with(&format!("[{path}]"))
                || line.starts_with(&format!("[[{path}]]"))
                || line.starts_with(&format!("[{path}."))
        })
    };
    let missing: Vec<&String> = fields.iter().filter(|path| !documented(path)).collect();
    assert!(missing.is_empty(), "undocumented: {missing:?}");
    assert!(
        text.contains("digest of the word \"test\""),
        "the example says whose digest key_sha256 is"
    );
    std::fs::remove_file(config).unwrap();
    std::fs::remove_file(secret_file).unwrap();
}

/// Dotted paths of every table and field of `value` (array entries share their table's path).
fn collect_fields(path: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, field) in table {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.push(here.clone());
                // Inline tables such as rate_limit = { per_second, burst } are one field.
                if field.is_table() && !matches!(key.as_str(), "rate_limit" | "client_default") {
                    collect_fields(&here, field, out);
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                collect_fields(path, item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn risky_settings_are_warnings_and_check_config_still_exits_0() {
    let config = temp_file(
        "risky.toml",
        "[admin]\nkey = \"short\"\n\
         [[apps]]\nname = \"e\"\nvendor = \"easemob\"\nupstream = \"http://a1.easemob.com\"\n\
         org = \"o\"\napp = \"a\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n\
         [[clients]]\nname = \"svc\"\nkey = \"svc-key-123\"\n",
    );
    let out = imgate(&["check-config", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    for (line, field) in
        warnings
            .iter()
            .zip(["apps[0].upstream", "admin.key", "client_tokens.signing_key"])
    {
        assert!(line.starts_with(&format!("warning: {field}: ")), "{line}");
    }
    assert!(
        !stderr.contains("\"short\""),
        "the admin key is not printed"
    );
    std::fs::remove_file(config).unwrap();
}

#[test]
fn listeners_on_one_port_are_refused_before_serve_tries_to_bind() {
    let config = temp_file(
        "clash.toml",
        "[server]\nlisten = \"0.0.0.0:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n\
         [[apps]]\nname = \"e\"\nvendor = \"easemob\"\nupstream = \"http://127.0.0.1:1\"\n\
         org = \"o\"\napp = \"a\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n",
    );
    for command in ["check-config", "serve"] {
        let out = imgate(&[command, "--config", config.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("error: server.admin_listen: \"127.0.0.1:18080\" takes the same port as server.listen \"0.0.0.0:18080\""),
            "{command}: {stderr}"
        );
    }
    std::fs::remove_file(config).unwrap();
}

#[test]
fn bad_configs_exit_2_for_check_and_serve_alike() {
    let bad = temp_file("bad.toml", "[[apps]]\nname = \"x\"\nvendor = \"agora\"\nupstream = \"https://h\"\napp_id = \"nothex\"\n");
    for command in ["check-config", "serve"] {
        let out = imgate(&[command, "--config", bad.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: apps[0].app_id: \"nothex\": must be 32 hex characters"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("error: apps[0].app_certificate: required for an agora app"),
            "{command}: every error at once: {stderr}"
        );
    }
    let out = imgate(&["serve", "--config", "/nonexistent/imgate.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = imgate(&["serve"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing flag is a usage error"
    );
    std::fs::remove_file(bad).unwrap();
}
