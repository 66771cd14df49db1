//! What the `herald` binary says about settings a person got wrong (refused with the
//! setting named, or a warning that says what to do), its command-line tools, and what
//! it logs of a refused client.

use std::process::{Command, Stdio};

mod common;

fn herald(env: &[(&str, &str)], args: &[&str]) -> Command {
    herald_at("127.0.0.1:0", env, args)
}

fn herald_at(listen: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = common::herald_cmd();
    c.args(["serve", "--listen", listen])
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("HERALD_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs herald until it prints its listening line (or exits); returns its stderr so far.
fn started(mut c: Command) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "did not start: {line}");
    let err = stop(child);
    // Logs to a pipe carry no colour codes.
    assert!(!err.contains('\u{1b}'), "{err}");
    err
}

/// Kills a running herald; returns what it wrote to stderr.
fn stop(mut child: std::process::Child) -> String {
    use std::io::Read;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

fn refused(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "started anyway");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_invalid_log_filter_is_refused() {
    let err = refused(herald(&[("HERALD_LOG", "debug=[")], &["--dev-auth"]));
    assert!(
        err.contains("HERALD_LOG=`debug=[` is not a log filter"),
        "{err}"
    );
}

#[test]
fn weak_secrets_and_keys_are_warned_about() {
    let err = started(herald(
        &[
            ("HERALD_AUTH_JWT_SECRET", "short"),
            ("HERALD_API_KEYS", "k1"),
            ("HERALD_LOG", "warn"),
        ],
        &[],
    ));
    assert!(
        err.contains("auth.jwt_secret is shorter than 16 bytes"),
        "{err}"
    );
    assert!(
        err.contains("an API key (api.keys, api.scoped_keys) is shorter than 16 bytes"),
        "{err}"
    );
    assert!(
        !err.contains("short\""),
        "the secret itself is never logged: {err}"
    );
}

#[test]
fn jwt_algorithms_are_supported_or_refused_by_name() {
    let ok = started(herald(
        &[
            ("HERALD_AUTH_JWT_SECRET", "a-secret-of-more-than-16-bytes"),
            ("HERALD_AUTH_JWT_ALGORITHM", "HS512"),
        ],
        &[],
    ));
    assert!(!ok.contains("jwt_algorithm"), "{ok}");
    for alg in ["HS1", "RS256"] {
        let err = refused(herald(
            &[
                ("HERALD_AUTH_JWT_SECRET", "a-secret-of-more-than-16-bytes"),
                ("HERALD_AUTH_JWT_ALGORITHM", alg),
            ],
            &[],
        ));
        assert!(
            err.contains("auth.jwt_algorithm") && err.contains(alg),
            "{err}"
        );
    }
}

#[test]
fn a_host_name_is_a_valid_listen_address() {
    started(herald_at("localhost:0", &[], &["--dev-auth"]));
}

fn tool(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = common::herald_cmd();
    c.args(args).env_remove("HERALD_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn check_config_exits_0_or_2_with_the_reason() {
    let ok = tool(&["check-config", "--dev-auth"], &[]);
    assert_eq!(ok.status.code(), Some(0));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.starts_with("ok: listen 127.0.0.1:3000"), "{out}");
    // What a start would warn about is said, and the check still passes.
    let weak = tool(
        &["check-config"],
        &[
            ("HERALD_AUTH_JWT_SECRET", "short"),
            ("HERALD_API_KEYS", "k1"),
        ],
    );
    assert_eq!(weak.status.code(), Some(0));
    let err = String::from_utf8_lossy(&weak.stderr);
    assert!(
        err.contains("warning: auth.jwt_secret is shorter than 16 bytes")
            && err.contains("warning: an API key"),
        "{err}"
    );
    // Caught by the configuration's own checks, and by what only a start would try.
    for (env, reason) in [
        (
            ("HERALD_TRANSPORT_PING_INTERVAL_MS", "0"),
            "ping_interval_ms",
        ),
        (
            ("HERALD_AUTH_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            "jwt_public_key_file",
        ),
        (("HERALD_WEBHOOKS_URL", "ftp://x/"), "webhooks"),
    ] {
        let bad = tool(&["check-config"], &[env]);
        assert_eq!(bad.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains(reason), "{env:?}: {err}");
    }
}

#[test]
fn token_makes_a_jwt_the_server_takes() {
    let secret = "a-secret-of-more-than-16-bytes";
    let out = tool(
        &["token", "--user", "alice", "--ttl", "15m"],
        &[("HERALD_AUTH_JWT_SECRET", secret)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 900);
    // Without a secret, or with a bad ttl or user: a reason, no token.
    let none = tool(&["token", "--user", "alice"], &[]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("auth.jwt_secret"));
    for args in [
        ["--user", "alice", "--ttl", "1w"],
        ["--user", "", "--ttl", "1h"],
    ] {
        let bad = tool(
            &[&["token"][..], &args[..]].concat(),
            &[("HERALD_AUTH_JWT_SECRET", secret)],
        );
        assert!(!bad.status.success(), "{args:?}");
        assert!(bad.stdout.is_empty());
    }
}

#[test]
fn gen_config_writes_every_setting_and_check_config_accepts_it() {
    let out = tool(&["gen-config"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "listen = \"127.0.0.1:3000\"",
        "[webhooks]",
        "max_outbox = 1000000",
        "[store]",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // Every setting comes with its line of help.
    let settings = text.lines().filter(|l| l.contains(" = ")).count();
    let helps = text
        .lines()
        .filter(|l| l.starts_with("# ") && l.len() > 2)
        .count();
    assert!(
        helps > settings,
        "{helps} help lines for {settings} settings"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, &text).unwrap();
    let check = tool(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn a_refused_connect_is_logged_with_its_reason_and_address_never_the_token() {
    let mut child = herald(
        &[
            ("HERALD_AUTH_JWT_SECRET", "a-secret-of-more-than-16-bytes"),
            ("HERALD_LOG", "warn"),
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let addr = common::listening_addr(&mut child);
    let mut ws = common::Ws::connect(addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text(r#"40{"token":"eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXRva2VuLXRleHQ"}"#)
        .await;
    assert!(ws.text().await.starts_with("44{"));
    let err = stop(child);
    assert!(err.contains("client connect refused"), "{err}");
    assert!(err.contains("unauthorized: invalid token"), "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(
        !err.contains("c2VjcmV0LXRva2VuLXRleHQ"),
        "the token is never logged: {err}"
    );
}

#[test]
fn a_config_file_from_a_pipe_is_read_once() {
    use std::io::Write as _;
    let mut child = common::herald_cmd()
        .args(["config", "--config", "/dev/stdin"])
        .env_remove("HERALD_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"[api]\nkeys = [\"a-key-from-a-pipe-0123\"]\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("keys = [\"<hidden>\"]"), "{shown}");
}
