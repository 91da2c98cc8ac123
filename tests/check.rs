//! `edgeshard check --config FILE`: exit 0 for a valid config, exit 1 with
//! one line per error naming the key path otherwise.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const GOOD: &str = r#"
[server]
io_engine = "epoll"
shutdown_timeout = "30s"

[[listener]]
address = "127.0.0.1:0"

[[route]]
host = "api.example.com"
path_prefix = "/v1/"
methods = ["GET", "POST"]
headers = { "x-canary" = "1" }
upstream = "api"

[[route]]
host = "*.example.com"
path = "/exact"
upstream = "api"

[[route]]
upstream = "web"

[[upstream]]
name = "api"
balance = "weighted"
backends = [{ address = "127.0.0.1:9001", weight = 3 }, { address = "127.0.0.1:9002", weight = 1 }]
max_idle_per_backend = 64
idle_timeout = "60s"

[[upstream]]
name = "web"
balance = "round_robin"
backends = [{ address = "127.0.0.1:9003" }]

[timeouts]
client_header = "10s"
client_idle = "60s"
client_body = "30s"
upstream_connect = "3s"
upstream_response = "250ms"

[limits]
max_header_bytes = 16384
max_headers = 100
max_uri_bytes = 8192
max_body_bytes = "16MiB"
max_connections_per_shard = 65536
"#;

fn lines_with<'a>(out: &'a str, words: &[&str]) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            words.iter().all(|w| l.contains(&w.to_ascii_lowercase()))
        })
        .collect()
}

fn expect_error(config: &str, words: &[&str]) -> String {
    let (code, out) = run_check(config);
    assert_eq!(
        code,
        Some(1),
        "check must exit 1 for an invalid config; output:\n{out}"
    );
    assert!(
        !lines_with(&out, words).is_empty(),
        "check output must have a line naming {words:?}; output:\n{out}"
    );
    out
}

#[test]
fn check_accepts_full_valid_config() {
    let (code, out) = run_check(GOOD);
    assert_eq!(
        code,
        Some(0),
        "a valid config using every documented key must pass; output:\n{out}"
    );
}

#[test]
fn check_accepts_size_units() {
    let cfg = GOOD.replace("max_body_bytes = \"16MiB\"", "max_body_bytes = \"64KiB\"");
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "output:\n{out}");
    let cfg = GOOD.replace("max_body_bytes = \"16MiB\"", "max_body_bytes = 1048576");
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "output:\n{out}");
}

#[test]
fn check_rejects_unknown_key() {
    let cfg = GOOD.replace(
        "shutdown_timeout = \"30s\"",
        "shutdown_timeout = \"30s\"\nbogus_key = 1",
    );
    expect_error(&cfg, &["bogus_key"]);
}

#[test]
fn check_rejects_unknown_key_in_route() {
    let cfg = GOOD.replace(
        "upstream = \"web\"\n\n[[upstream]]",
        "upstream = \"web\"\ncolour = \"red\"\n\n[[upstream]]",
    );
    assert_ne!(cfg, GOOD);
    expect_error(&cfg, &["colour"]);
}

#[test]
fn check_rejects_undefined_upstream() {
    let cfg = GOOD.replace("upstream = \"web\"\n", "upstream = \"nope\"\n");
    assert_ne!(cfg, GOOD);
    expect_error(&cfg, &["route", "upstream"]);
}

#[test]
fn check_rejects_bad_listener_address() {
    let cfg = GOOD.replace("address = \"127.0.0.1:0\"", "address = \"not-an-address\"");
    expect_error(&cfg, &["listener", "address"]);
}

#[test]
fn check_rejects_bad_backend_address() {
    let cfg = GOOD.replace("127.0.0.1:9003", "300.1.1.1:80");
    expect_error(&cfg, &["address"]);
}

#[test]
fn check_rejects_bad_duration() {
    let cfg = GOOD.replace("client_header = \"10s\"", "client_header = \"ten seconds\"");
    expect_error(&cfg, &["client_header"]);
}

#[test]
fn check_rejects_bad_size() {
    let cfg = GOOD.replace("max_body_bytes = \"16MiB\"", "max_body_bytes = \"lots\"");
    expect_error(&cfg, &["max_body_bytes"]);
}

#[test]
fn check_reports_each_undefined_upstream_on_its_own_line() {
    let cfg = GOOD
        .replace("upstream = \"web\"\n", "upstream = \"nope1\"\n")
        .replacen("upstream = \"api\"\n", "upstream = \"nope2\"\n", 1);
    let out = expect_error(&cfg, &["upstream"]);
    let lines = lines_with(&out, &["route", "upstream"]);
    assert!(
        lines.len() >= 2,
        "two undefined upstreams must give two error lines; output:\n{out}"
    );
}

#[test]
fn check_reports_unknown_key_undefined_upstream_and_bad_address_together() {
    let cfg = GOOD
        .replace(
            "shutdown_timeout = \"30s\"",
            "shutdown_timeout = \"30s\"\nbogus_key = 1",
        )
        .replace("upstream = \"web\"\n", "upstream = \"nope\"\n")
        .replace("address = \"127.0.0.1:0\"", "address = \"not-an-address\"");
    let out = expect_error(&cfg, &["bogus_key"]);
    assert!(
        !lines_with(&out, &["route", "upstream"]).is_empty(),
        "missing the undefined-upstream line; output:\n{out}"
    );
    assert!(
        !lines_with(&out, &["listener", "address"]).is_empty(),
        "missing the bad-address line; output:\n{out}"
    );
}

#[test]
fn check_missing_file_fails() {
    let path = std::env::temp_dir().join(format!(
        "edgeshard-test-missing-{}.toml",
        std::process::id()
    ));
    let child = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = watch_exit(child)
        .recv_timeout(Duration::from_secs(20))
        .expect("check must exit within 20 s");
    assert!(!status.success(), "check on a missing file must fail");
}

#[test]
fn run_with_invalid_config_fails_without_ready() {
    let cfg = GOOD.replace("upstream = \"web\"\n", "upstream = \"nope\"\n");
    match Proxy::try_start(&cfg, Engine::Epoll) {
        Ok(p) => panic!(
            "edgeshard run became ready with an invalid config; output:\n{}",
            p.output()
        ),
        Err(msg) => assert!(msg.contains("exited before ready"), "{msg}"),
    }
}
