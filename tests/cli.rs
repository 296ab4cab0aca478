//! The `imgate` binary: `imgate token agora` against the vectors of Agora's own library, its
//! argument errors, and a cross-check with the npm package `agora-token` when it is installed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::read::ZlibDecoder;
use rand::Rng;
use serde_json::{json, Value};

use imgate::token::agora::{ParsedToken, TokenSpec, PRIVILEGE_APP, PRIVILEGE_USER};

fn imgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(args)
        .output()
        .expect("run the imgate binary")
}

/// Runs `imgate token agora` with `args`; asserts exit 0 and one line on stdout, the token.
fn token_agora(args: &[&str]) -> (String, String) {
    let out = imgate(&[&["token", "agora"][..], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    (stdout.trim_end().to_owned(), stderr)
}

fn inflate(token: &str) -> Vec<u8> {
    let compressed = STANDARD
        .decode(token.strip_prefix("007").expect("007 prefix"))
        .unwrap();
    let mut payload = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .read_to_end(&mut payload)
        .unwrap();
    payload
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex32(rng: &mut impl Rng) -> String {
    hex(&rng.gen::<[u8; 16]>())
}

fn vectors() -> Vec<Value> {
    let text = include_str!("data/agora-token-vectors.json");
    serde_json::from_str::<Value>(text).unwrap()["vectors"]
        .as_array()
        .unwrap()
        .clone()
}

const APP_ID: &str = "0123456789abcdef0123456789abcdef";
const CERT: &str = "fedcba9876543210fedcba9876543210";

#[test]
fn token_agora_prints_a_token_that_verifies_with_the_certificate() {
    let args = [
        "--app-id",
        APP_ID,
        "--app-certificate",
        CERT,
        "--issued-at",
        "1700000000",
        "--salt",
        "12345",
        "--expire",
        "3600",
    ];
    let (token, stderr) = token_agora(&args);
    assert_eq!(stderr, "", "no warning within 24 h");
    let parsed = ParsedToken::parse(&token).unwrap();
    assert_eq!(
        parsed.spec,
        TokenSpec::app(APP_ID, 1_700_000_000, 3600, 12345)
    );
    assert_eq!(parsed.privileges, vec![(PRIVILEGE_APP, 3600)]);
    assert!(parsed.verify(CERT));
    assert!(!parsed.verify("00000000000000000000000000000000"));
}

#[test]
fn token_agora_payload_equals_the_official_library_vectors() {
    let vectors = vectors();
    assert!(vectors.len() >= 3, "the vectors file lost entries");
    for v in vectors {
        let input = &v["input"];
        let field = |name: &str| input[name].to_string().trim_matches('"').to_owned();
        let mut args = vec![
            "--app-id".to_owned(),
            field("appId"),
            "--app-certificate".to_owned(),
            field("appCertificate"),
            "--issued-at".to_owned(),
            field("issueTs"),
            "--salt".to_owned(),
            field("salt"),
            "--expire".to_owned(),
            field("expire"),
        ];
        if let Some(user) = input["userId"].as_str() {
            args.extend(["--user".to_owned(), user.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (token, _) = token_agora(&args);
        let payload = inflate(&token);
        assert_eq!(hex(&payload), v["payload_hex"], "{}", v["name"]);

        let parsed = ParsedToken::parse(&token).unwrap();
        assert_eq!(parsed.spec.payload(&field("appCertificate")), payload);
        let privilege = if input["userId"].is_string() {
            PRIVILEGE_USER
        } else {
            PRIVILEGE_APP
        };
        assert_eq!(parsed.privileges[0].0, privilege, "{}", v["name"]);
    }
}

#[test]
fn token_agora_refuses_a_malformed_app_id_or_certificate_with_exit_2() {
    let cases = [
        ("--app-id", "0123456789abcdef0123456789abcdeg"),
        ("--app-id", "0123456789abcdef0123456789abcde"),
        ("--app-id", "0123456789abcdef0123456789abcdef0"),
        ("--app-certificate", "not hex at all, but 32 chars...."),
        ("--app-certificate", ""),
    ];
    for (flag, bad) in cases {
        let (app_id, cert) = if flag == "--app-id" {
            (bad, CERT)
        } else {
            (APP_ID, bad)
        };
        let out = imgate(&[
            "token",
            "agora",
            "--app-id",
            app_id,
            "--app-certificate",
            cert,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {bad:?}: {stderr}");
        assert!(stderr.contains(flag), "names {flag}: {stderr}");
        assert!(out.stdout.is_empty(), "no token is printed");
    }
}

#[test]
fn token_agora_warns_above_24_hours_but_still_prints_the_token() {
    let args = [
        "--app-id",
        APP_ID,
        "--app-certificate",
        CERT,
        "--expire",
        "100000",
    ];
    let (token, stderr) = token_agora(&args);
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("100000"), "{stderr}");
    let parsed = ParsedToken::parse(&token).unwrap();
    assert_eq!(parsed.spec.expire, 100_000);
    assert!(parsed.verify(CERT));

    let (_, at_limit) = token_agora(&[
        "--app-id",
        APP_ID,
        "--app-certificate",
        CERT,
        "--expire",
        "86400",
    ]);
    assert_eq!(at_limit, "", "86400 s is what the vendor honours");
}

/// Parses each token with the npm package's `AccessToken2.from_string` and reports what it
/// read and whether `verifySignature` accepts the right and a wrong certificate.
const NODE_CHECK: &str = r#"
const { AccessToken2 } = require(process.env.AGORA_TOKEN_LIB);
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const report = cases.map(c => {
  const t = new AccessToken2();
  const parsed = t.from_string(c.token);
  const chat = t.getServices(5)[0];
  return {
    parsed,
    // getString() hands back Buffers.
    appId: String(t.appId), issueTs: t.issueTs, expire: t.expire, salt: t.salt,
    privileges: chat ? chat.__privileges : null,
    userId: chat ? String(chat.__user_id) : null,
    right: t.verifySignature(c.cert),
    wrong: t.verifySignature(c.wrongCert),
  };
});
process.stdout.write(JSON.stringify(report));
"#;

/// Where `agora-token`'s AccessToken2 implementation lives, if node and the package are there;
/// otherwise why not.
fn agora_token_lib() -> Result<PathBuf, String> {
    let dir = std::env::var_os("IMGATE_AGORA_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/node"));
    let lib = dir.join("node_modules/agora-token/src/AccessToken2.js");
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not on PATH".into());
    }
    if !lib.is_file() {
        return Err(format!(
            "{} is missing (npm install --no-save --no-package-lock agora-token@2.0.6 in {})",
            lib.display(),
            dir.display()
        ));
    }
    Ok(lib)
}

#[test]
#[ignore = "needs node and the npm package agora-token in .ci/node (.ci/run installs them)"]
fn token_agora_tokens_verify_with_the_official_npm_library() {
    let lib = agora_token_lib().unwrap_or_else(|why| panic!("{why}"));

    let mut rng = rand::thread_rng();
    let mut cases = Vec::new();
    for _ in 0..20 {
        let app_id = random_hex32(&mut rng);
        let cert = random_hex32(&mut rng);
        let salt: u32 = rng.gen_range(1..=99_999_999);
        let expire: u32 = rng.gen_range(1..=86_400);
        let issued_at: u32 = rng.gen_range(1_000_000_000..=2_000_000_000);
        let args = [
            "--app-id".to_owned(),
            app_id.clone(),
            "--app-certificate".to_owned(),
            cert.clone(),
            "--issued-at".to_owned(),
            issued_at.to_string(),
            "--salt".to_owned(),
            salt.to_string(),
            "--expire".to_owned(),
            expire.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (token, _) = token_agora(&args);
        let mut wrong_cert = random_hex32(&mut rng);
        while wrong_cert == cert {
            wrong_cert = random_hex32(&mut rng);
        }
        cases.push(json!({
            "token": token, "cert": cert, "wrongCert": wrong_cert,
            "appId": app_id, "issueTs": issued_at, "expire": expire, "salt": salt,
        }));
    }

    let mut child = Command::new("node")
        .arg("-e")
        .arg(NODE_CHECK)
        .env("AGORA_TOKEN_LIB", &lib)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let input = serde_json::to_vec(&cases).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed: {stderr}");
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report.len(), cases.len());

    for (case, seen) in cases.iter().zip(&report) {
        let expected = json!({
            "parsed": true,
            "appId": case["appId"], "issueTs": case["issueTs"],
            "expire": case["expire"], "salt": case["salt"],
            "privileges": { "2": case["expire"] },
            "userId": "",
            "right": true,
            "wrong": false,
        });
        assert_eq!(seen, &expected, "token {}", case["token"]);
    }
}
