//! `edgeshard check --config FILE`: exit 0 for a valid config, exit 1 with
//! one line per error naming the key path otherwise.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A valid config that uses every key docs/CONFIG.md documents (checked by
/// `check_accepts_full_valid_config`), with `token`; `token_file` is the one documented key
/// it cannot hold at the same time (they exclude each other), covered by a variant.
const GOOD: &str = r#"
[server]
io_engine = "epoll"
huge_pages = false
shutdown_timeout = "30s"
drain_grace = "1s"
splice = "auto"
splice_min_bytes = "256KiB"
splice_pipe_bytes = "1MiB"
splice_max_pipes = 1024
client_congestion = "reno"
upstream_congestion = "reno"
user = "nobody"
group = "@GROUP@"
server_header = "edge"
hide_response_headers = ["X-Backend"]
error_pages = { "502" = "@CERTS@/502.html", "503" = "@CERTS@/503.json" }
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]

[[listener]]
address = "127.0.0.1:0"
allow = ["10.0.0.0/8", "127.0.0.1"]
deny = ["10.6.6.0/24"]
rate_limit = { rate = 1000, burst = 2000, key = "listener" }
request_headers = { set = { "X-Edge" = "${scheme}" }, add = { "X-Hop" = "edge" }, remove = ["X-Debug"] }
response_headers = { set = { "X-Edge-Id" = "${request_id}" }, add = { "X-Edge" = "1" }, remove = ["X-Internal"], preset = "security" }

[[listener]]
address = "127.0.0.1:0"
tls = { certificates = [{ cert = "@CERTS@/a.pem", key = "@CERTS@/a.key", ocsp = "@CERTS@/a.ocsp", default = true }], versions = ["1.2", "1.3"], cipher_suites = ["TLS13_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"], handshake_timeout = "10s", max_handshakes = 1024, client_auth = { ca = "@CERTS@/ca.pem", required = false, subject_header = "X-Client-Subject" }, hsts = "max-age=31536000" }

[[listener]]
address = "127.0.0.1:0"
redirect_https = { port = 443, status = 301, except = ["/.well-known/acme-challenge/"] }
proxy_protocol = true

[[route]]
host = "api.example.com"
path_prefix = "/v1/"
methods = ["GET", "POST"]
headers = { "x-canary" = "1" }
upstream = "api"
allow = ["10.0.0.0/8"]
deny = ["10.6.6.0/24"]
rate_limit = { rate = 50, burst = 100, key = "client_ip", ipv6_prefix = 64 }

[[route]]
name = "exact"
host = "*.example.com"
path = "/exact"
upstream = "api"
access_log = false
error_pages = { "503" = "@CERTS@/503.json" }

[[route]]
path_prefix = "/hash/"
upstream = "hash"
max_body_bytes = "64MiB"
mirror = { upstream = "api", sample = 0.5, max_in_flight = 32, max_body = "1MiB" }

[[route]]
path_prefix = "/staff/"
upstream = "api"
auth = { basic = { realm = "staff", users = "@CERTS@/users", cache_ttl = "5m", forward_authorization = false } }

[[route]]
path_prefix = "/app/"
upstream = "api"
auth = { forward = { upstream = "hash", uri = "/check", copy_headers = ["X-User"], timeout = "2s", max_body = "64KiB" } }

[[route]]
name = "rules"
path_prefix = "/rules/"
upstream = "api"
strip_prefix = "/rules"
rewrite = { regex = "^/old/(.*)$", replace = "/new/$1" }
add_prefix = "/v2"
upstream_host = "api.internal"
compress = { types = ["text/html", "application/json"], min_length = 1024, algorithms = ["zstd", "br", "gzip"], gzip_level = 6, br_quality = 4, zstd_level = 3 }
request_headers = { set = { "X-Route" = "${route} ${host}${path}?${query}" }, add = { "X-Client" = "${client_ip}" }, remove = ["X-Debug"] }
response_headers = { set = { "X-Id" = "${request_id}" }, add = { "X-Scheme" = "${scheme}" }, remove = ["X-Internal"], preset = "security" }

[[route]]
path_prefix = "/moved/"
upstream = "api"
redirect = { status = 301, to = "https://www.example.com${path}", query = false }

[[route]]
path = "/robots.txt"
respond = { status = 200, body = "User-agent: *\nDisallow: /\n", content_type = "text/plain", headers = { "Cache-Control" = "max-age=86400" } }

[[route]]
path_prefix = "/closed/"
respond = { status = 503, file = "@CERTS@/502.html" }

[[route]]
cache = { size = "64MiB", max_object = "1MiB", policy = "tinylfu", stale_while_revalidate_max = "1h", stale_if_error_max = "1d", background_revalidations = 16, fill_memory = "4MiB", valid = { "200" = "10m", "404" = "1m" }, bypass = ["cookie:session", "header:X-Debug"] }
upstream = "web"

[[upstream]]
name = "api"
balance = "weighted"
backends = [{ address = "127.0.0.1:9001", weight = 3 }, { address = "127.0.0.1:9002", weight = 1, backup = true }]
max_idle_per_backend = 64
idle_timeout = "60s"
connect_timeout = "2s"
response_timeout = "120s"
buffer_request_body = "1MiB"
slow_start = "10s"
sticky = { cookie = "srv", ttl = "1h", secret = "a-fleet-wide-secret-of-32-chars!", secure = true, same_site = "Lax" }

[upstream.health_check]
type = "http"
interval = "5s"
timeout = "2s"
rise = 2
fall = 3
jitter = 0.1
initial = "unknown"
method = "GET"
path = "/health"
host = "api.internal"
expect_status = "200-399"
body_contains = "ok"

[upstream.outlier]
consecutive = 5
on = ["connect-failure", "reset", "timeout", "5xx"]
base_ejection = "30s"
max_ejection = "300s"
max_ejection_percent = 50

[upstream.breaker]
max_connections = 1000
max_pending = 100
max_requests = 1000
queue = 500
queue_timeout = "2s"

[upstream.retry]
attempts = 2
on = ["connect-failure", "reset", "503"]
budget = 0.2
min_retries_per_sec = 3
budget_window = "10s"
per_try_timeout = "1s"
total_timeout = "5s"

[[upstream]]
name = "web"
balance = "round_robin"
backends = [{ address = "127.0.0.1:9003" }, { address = "web.internal:9003" }, { srv = "_http._tcp.web.internal" }]
tls = { sni = "web.internal", ca = "@CERTS@/ca.pem", verify = true }
fail_timeout = "2s"

[[upstream]]
name = "hash"
balance = "consistent_hash"
hash_key = "header:x-user"
bounded_load = 1.25
backends = [{ address = "127.0.0.1:9004" }, { address = "127.0.0.1:9005" }]
proxy_protocol = "v2"

[rate_limits]
max_keys = 100000
store = "redis://:p%40ss@127.0.0.1:6379"
sync_interval = "50ms"

[dns]
servers = ["127.0.0.1:5353"]
min_ttl = "1s"
max_ttl = "5m"

[timeouts]
client_header = "10s"
client_idle = "60s"
client_body = "30s"
client_send = "60s"
upstream_connect = "3s"
upstream_response = "250ms"
tunnel_idle = "1h"
tunnel_half_closed = "30s"
client_keepalive_time = "1h"
lingering_timeout = "1s"
lingering_time = "30s"

[limits]
max_header_bytes = 16384
max_headers = 100
max_uri_bytes = 8192
max_body_bytes = "16MiB"
max_connections_per_shard = 65536
max_idle_upstream_per_shard = 8192
max_connections = 1000000
max_connections_per_client = 4096
per_client_ipv6_prefix = 56
client_body_min_rate = 500
client_send_min_rate = "1KiB"
auth_cache_entries = 1024
auth_pending = 16
max_requests_per_connection = 1000
compress_memory = "64MiB"
buffer_memory = "64MiB"

[admin]
address = "127.0.0.1:9901"
token = "s3cret"
allow_remote_without_token = false
max_connections = 64
header_timeout = "2s"
send_timeout = "5s"

[log]
level = "info"
error_rate = 10
access = "stdout"
access_format = '{"client":"$remote_addr","request":"$request","status":$status,"cache":"$upstream_cache_status"}'
access_escape = "json"
access_sample = 1.0
access_keep_status = 500
access_keep_slower_than = "2s"
access_buffer = "64KiB"
access_flush = "1s"
access_queue = 64

[request_id]
header = "X-Request-Id"
respond = true
"#;

fn lines_with<'a>(out: &'a str, words: &[&str]) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            words.iter().all(|w| l.contains(&w.to_ascii_lowercase()))
        })
        .collect()
}

/// [`GOOD`] with its certificate paths pointing at files made once per test process.
fn good() -> String {
    static DIR: std::sync::OnceLock<std::mem::ManuallyDrop<crate::support::tls::CertDir>> =
        std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let ca = crate::support::tls::TestCa::new("check ca");
        let leaf = ca.leaf(&["api.example.com"]);
        let dir = crate::support::tls::CertDir::kept(&format!("check-{}", std::process::id()));
        dir.write("a.pem", &leaf.cert_pem);
        dir.write("a.key", &leaf.key_pem);
        dir.write("a.ocsp", "not checked by edgeshard: stapled as is");
        dir.write("ca.pem", &ca.pem);
        dir.write("502.html", "<h1>we will be right back</h1>\n");
        dir.write("503.json", "{\"error\": \"busy\"}\n");
        dir.write(
            "users",
            &format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap()),
        );
        dir
    });
    // `server.group`: nobody's primary group, whose name differs between distributions
    // (nogroup on Debian, nobody on Fedora); check looks both names up on this host.
    static GROUP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let group = GROUP.get_or_init(|| {
        let out = Command::new("id")
            .args(["-gn", "nobody"])
            .output()
            .expect("run id");
        assert!(out.status.success(), "this host has no user `nobody`");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    GOOD.replace("@CERTS@", &dir.dir.display().to_string())
        .replace("@GROUP@", group)
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

/// The keys the docs document, as paths without indices (`server.splice`,
/// `upstream.backends.weight`, `upstream.health_check.type`, `route.headers`): the first
/// cell of every `| Key | ...` table row of docs/CONFIG.md, under the section heading it sits
/// in, and of docs/HEALTH.md, whose upstream sub-tables (`health_check`, `outlier`, `breaker`,
/// `retry`) each follow a line that names them in bold.
fn documented_keys() -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for name in ["CONFIG.md", "HEALTH.md"] {
        let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        keys_in(&doc, &mut keys);
    }
    keys
}

fn keys_in(doc: &str, keys: &mut std::collections::BTreeSet<String>) {
    let mut section: Option<String> = None;
    let mut in_key_table = false;
    for line in doc.lines() {
        // HEALTH.md: "**`[upstream.retry]`**: ..." names the sub-table of the table below.
        if let Some(t) = line.strip_prefix("**`[upstream.") {
            section = t.split(']').next().map(|sub| format!("upstream.{sub}"));
            in_key_table = false;
            continue;
        }
        if let Some(h) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            // "## `[server]`", "## `[[upstream]]`", "### `[upstream.health_check]`, ...":
            // the section is the first table name in backticks, without brackets and without
            // a sub-table part (sub-table keys carry it themselves: `health_check.type`).
            section = h.split('`').nth(1).map(|t| {
                let t = t.trim_matches(|c| c == '[' || c == ']');
                t.split('.').next().unwrap().to_string()
            });
            in_key_table = false;
            continue;
        }
        if line.starts_with("Each entry of `backends`") {
            section = Some("upstream.backends".into());
            continue;
        }
        if line.starts_with("| Key |") {
            in_key_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let Some(section) = section.as_ref().filter(|_| in_key_table) else {
            continue;
        };
        let cell = line.split('|').nth(1).unwrap_or("");
        if cell.starts_with("---") {
            continue;
        }
        // "`health_check.interval` / `timeout`": names after the first share its prefix.
        let mut group = String::new();
        for (i, name) in cell.split('`').skip(1).step_by(2).enumerate() {
            let full = match name.rsplit_once('.') {
                Some((g, _)) if i == 0 => {
                    group = format!("{g}.");
                    name.to_string()
                }
                _ => format!("{group}{name}"),
            };
            keys.insert(format!("{section}.{full}"));
        }
    }
}

/// Every leaf key path of a TOML text, without array indices (`upstream.backends.address`).
fn used_keys(text: &str) -> std::collections::BTreeSet<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
                for x in a {
                    walk(prefix, x, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let table: toml::Table = text.parse().expect("GOOD is TOML");
    let mut out = std::collections::BTreeSet::new();
    walk("", &toml::Value::Table(table), &mut out);
    out
}

#[test]
fn check_accepts_full_valid_config() {
    let token_file =
        std::env::temp_dir().join(format!("edgeshard-test-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let with_file = good().replace(
        "token = \"s3cret\"",
        &format!("token_file = \"{}\"", token_file.display()),
    );
    // "Every documented key": the two variants together use each key docs/CONFIG.md and
    // docs/HEALTH.md list (a table-valued key such as `sticky` or `headers` counts when used with its
    // contents), and use no key it does not list.
    let documented = documented_keys();
    assert!(
        documented.len() > 80,
        "too few keys found in docs/CONFIG.md and docs/HEALTH.md: {documented:?}"
    );
    let used: std::collections::BTreeSet<String> = used_keys(GOOD)
        .into_iter()
        .chain(used_keys(&with_file))
        .collect();
    let covers = |doc: &String, u: &String| u == doc || u.starts_with(&format!("{doc}."));
    let missing: Vec<&String> = documented
        .iter()
        .filter(|d| !used.iter().any(|u| covers(d, u)))
        .collect();
    assert!(
        missing.is_empty(),
        "documented keys the valid config does not use: {missing:?}"
    );
    let undocumented: Vec<&String> = used
        .iter()
        .filter(|u| !documented.iter().any(|d| covers(d, u)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys the valid config uses that docs/CONFIG.md does not list: {undocumented:?}"
    );
    let results = [
        ("with token", run_check(&good())),
        ("with token_file", run_check(&with_file)),
    ];
    let _ = std::fs::remove_file(&token_file);
    for (what, (code, out)) in results {
        assert_eq!(
            code,
            Some(0),
            "a valid config using every documented key ({what}) must pass; output:\n{out}"
        );
    }
}

#[test]
fn check_accepts_size_units() {
    let cfg = good().replace("max_body_bytes = \"16MiB\"", "max_body_bytes = \"64KiB\"");
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "output:\n{out}");
    let cfg = good().replace("max_body_bytes = \"16MiB\"", "max_body_bytes = 1048576");
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "output:\n{out}");
}

#[test]
fn check_rejects_unknown_key() {
    let cfg = good().replace(
        "shutdown_timeout = \"30s\"",
        "shutdown_timeout = \"30s\"\nbogus_key = 1",
    );
    expect_error(&cfg, &["bogus_key"]);
}

#[test]
fn check_rejects_unknown_key_in_route() {
    let cfg = good().replace(
        "upstream = \"web\"\n\n[[upstream]]",
        "upstream = \"web\"\ncolour = \"red\"\n\n[[upstream]]",
    );
    assert_ne!(cfg, good());
    expect_error(&cfg, &["colour"]);
}

#[test]
fn check_rejects_undefined_upstream() {
    let cfg = good().replace("upstream = \"web\"\n", "upstream = \"nope\"\n");
    assert_ne!(cfg, good());
    expect_error(&cfg, &["route", "upstream"]);
}

#[test]
fn check_rejects_bad_listener_address() {
    let cfg = good().replace("address = \"127.0.0.1:0\"", "address = \"not-an-address\"");
    expect_error(&cfg, &["listener", "address"]);
}

#[test]
fn check_rejects_bad_backend_address() {
    let cfg = good().replace("127.0.0.1:9003", "300.1.1.1:80");
    expect_error(&cfg, &["address"]);
}

#[test]
fn check_rejects_bad_duration() {
    let cfg = good().replace("client_header = \"10s\"", "client_header = \"ten seconds\"");
    expect_error(&cfg, &["client_header"]);
}

#[test]
fn check_rejects_bad_size() {
    let cfg = good().replace("max_body_bytes = \"16MiB\"", "max_body_bytes = \"lots\"");
    expect_error(&cfg, &["max_body_bytes"]);
    // TOML numbers that are not whole bytes say so.
    let cfg = good().replace("max_body_bytes = \"16MiB\"", "max_body_bytes = -5");
    expect_error(&cfg, &["limits.max_body_bytes", "-5 is negative"]);
    let cfg = good().replace("max_body_bytes = \"16MiB\"", "max_body_bytes = 1.5");
    expect_error(
        &cfg,
        &["limits.max_body_bytes", "not a whole number of bytes"],
    );
}

#[test]
fn check_refuses_a_backend_listed_twice_in_one_upstream() {
    // Accepted before: a drain took the first copy only, the metrics had each series twice
    // and the copies shared one counter after a reload (found by a review).
    let hash = "backends = [{ address = \"127.0.0.1:9004\" }, { address = \"127.0.0.1:9005\" }]";
    assert!(good().contains(hash));
    let twice = |backends: &str| good().replace(hash, &format!("backends = [{backends}]"));
    let out = expect_error(
        &twice("{ address = \"127.0.0.1:9004\" }, { address = \"127.0.0.1:9005\" }, { address = \"127.0.0.1:9004\", weight = 2 }"),
        &["upstream[2].backends[2].address: 127.0.0.1:9004 is listed twice", "backends[0]"],
    );
    assert!(
        lines_with(&out, &["listed twice"])
            .iter()
            .all(|l| l.contains(".toml: ")),
        "{out}"
    );
    // A host name (case and a final dot aside) and an SRV name, likewise.
    expect_error(
        &twice("{ address = \"web.internal:9004\" }, { address = \"Web.Internal.:9004\" }"),
        &[
            "upstream[2].backends[1].address: web.internal:9004 is listed twice",
            "backends[0]",
        ],
    );
    expect_error(
        &twice("{ srv = \"_http._tcp.web.internal\" }, { address = \"127.0.0.1:9004\" }, { srv = \"_http._tcp.web.internal\" }"),
        &["upstream[2].backends[2].srv", "listed twice", "backends[0]"],
    );
    // The same address in two upstreams, or a name on another port, is fine.
    let (code, out) = run_check(&twice(
        "{ address = \"127.0.0.1:9003\" }, { address = \"web.internal:9004\" }, { address = \"web.internal:9005\" }",
    ));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_refuses_a_route_named_as_the_unrouted_label() {
    // `route="none"` labels the requests that matched no route: a route of that name had
    // its series twice in /metrics (found by a review).
    let cfg = good().replace("name = \"exact\"", "name = \"none\"");
    assert_ne!(cfg, good());
    let out = expect_error(&cfg, &["route[1].name", "\"none\" is reserved"]);
    assert!(
        lines_with(&out, &["reserved"])
            .iter()
            .all(|l| l.contains(".toml: ")),
        "{out}"
    );
    // Another spelling is another label, and fine.
    let (code, out) = run_check(&good().replace("name = \"exact\"", "name = \"None\""));
    assert_eq!(code, Some(0), "{out}");
    // `-` is what the access log writes for no route or no upstream.
    let cfg = good().replace("name = \"exact\"", "name = \"-\"");
    expect_error(&cfg, &["route[1].name", "\"-\" is reserved", "access log"]);
    let cfg = good()
        .replace("name = \"web\"", "name = \"-\"")
        .replace("upstream = \"web\"", "upstream = \"-\"");
    expect_error(&cfg, &[".name", "\"-\" is reserved", "access log"]);
}

#[test]
fn check_names_what_is_wrong_in_an_access_log_template() {
    let template = "access_format = '{\"client\":\"$remote_addr\"";
    assert!(good().contains(template));
    let cfg = good().replace(template, "access_format = '{\"client\":\"$remote_adr\"");
    expect_error(
        &cfg,
        &["log.access_format", "$remote_adr is not a variable"],
    );
    let cfg = good().replace("access_escape = \"json\"", "access_escape = \"none\"");
    expect_error(&cfg, &["log.access_escape", "\"none\""]);
    // Escaping belongs to templates only.
    let cfg = good().replace(template, "access_format = 'json' #");
    expect_error(&cfg, &["log.access_escape", "only to an access_format"]);
}

#[test]
fn check_names_what_is_wrong_in_a_cache_valid_lifetime() {
    let valid = "valid = { \"200\" = \"10m\", \"404\" = \"1m\" }";
    assert!(good().contains(valid));
    let cfg = good().replace(valid, "valid = { \"500\" = \"10m\" }");
    expect_error(
        &cfg,
        &["cache.valid.500", "not a status the cache may store"],
    );
    let cfg = good().replace(valid, "valid = { \"302\" = \"0s\" }");
    expect_error(&cfg, &["cache.valid.302", "greater than zero"]);
    let cfg = good().replace(valid, "valid = { \"302\" = \"400d\" }");
    expect_error(&cfg, &["cache.valid.302", "maximum of 365 days"]);
    let cfg = good().replace(valid, "valid = { \"200\" = \"later\" }");
    expect_error(&cfg, &["cache.valid.200", "invalid duration"]);
    let cfg = good().replace(valid, "valid = { \"200\" = \"500ms\" }");
    expect_error(&cfg, &["cache.valid.200", "from 1s to 365d"]);
    // Longer than the 7 days other durations allow: a year is fine.
    let (code, out) = run_check(&good().replace(valid, "valid = { \"301\" = \"365d\" }"));
    assert_eq!(code, Some(0), "{out}");
    let bypass = "bypass = [\"cookie:session\", \"header:X-Debug\"]";
    assert!(good().contains(bypass));
    for bad in ["client_ip", "path", "cookie:", "session"] {
        let cfg = good().replace(bypass, &format!("bypass = [\"cookie:a\", \"{bad}\"]"));
        expect_error(
            &cfg,
            &["cache.bypass[1]", "header:NAME, cookie:NAME or query:NAME"],
        );
    }
}

#[test]
fn check_names_what_is_wrong_in_the_access_log_keep_rules() {
    let cfg = good().replace("access_keep_status = 500", "access_keep_status = 700");
    expect_error(&cfg, &["log.access_keep_status", "700 is not a status"]);
    let cfg = good().replace(
        "access_keep_slower_than = \"2s\"",
        "access_keep_slower_than = \"soon\"",
    );
    expect_error(&cfg, &["log.access_keep_slower_than"]);
    // Sampling nothing is allowed only beside a rule that keeps some lines.
    let zero = good().replace("access_sample = 1.0", "access_sample = 0.0");
    assert!(!zero.contains("access_sample = 1.0"));
    let (code, out) = run_check(&zero);
    assert_eq!(code, Some(0), "{out}");
    let none = zero
        .replace("access_keep_status = 500\n", "")
        .replace("access_keep_slower_than = \"2s\"\n", "");
    expect_error(
        &none,
        &["log.access_sample", "0 only with access_keep_status"],
    );
}

#[test]
fn check_refuses_a_rate_limit_keyed_on_a_forwarding_claim() {
    let limit = "rate_limit = { rate = 50, burst = 100, key = \"client_ip\", ipv6_prefix = 64 }";
    assert!(good().contains(limit));
    for name in [
        "X-Forwarded-For",
        "x-real-ip",
        "Forwarded",
        "X_Forwarded_For",
    ] {
        let cfg = good().replace(
            limit,
            &format!("rate_limit = {{ rate = 50, key = \"header:{name}\" }}"),
        );
        expect_error(&cfg, &["rate_limit.key", "forwarding claim", "client_ip"]);
    }
    let cfg = good().replace(
        limit,
        "rate_limit = { rate = 50, key = \"header:X-Api-Key\" }",
    );
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "another header is a key:\n{out}");
    let cfg = good().replace(limit, "rate_limit = { rate = 50, ipv6_prefix = 0 }");
    expect_error(&cfg, &["rate_limit.ipv6_prefix", "out of range 1..=128"]);
    let cfg = good().replace(
        limit,
        "rate_limit = { rate = 50, key = \"path\", ipv6_prefix = 48 }",
    );
    expect_error(&cfg, &["rate_limit.ipv6_prefix", "client_ip\" only"]);
}

#[test]
fn check_names_what_is_wrong_in_a_mirror() {
    let mirror =
        "mirror = { upstream = \"api\", sample = 0.5, max_in_flight = 32, max_body = \"1MiB\" }";
    assert!(good().contains(mirror));
    let with = |m: &str| good().replace(mirror, m);
    expect_error(
        &with("mirror = { upstream = \"nope\" }"),
        &["mirror.upstream", "\"nope\" is not defined"],
    );
    expect_error(
        &with("mirror = { upstream = \"api\", sample = 1.5 }"),
        &["mirror.sample", "1.5 is out of range"],
    );
    expect_error(
        &with("mirror = { upstream = \"api\", max_in_flight = 0 }"),
        &["mirror.max_in_flight", "out of range"],
    );
    expect_error(
        &with("mirror = { upstream = \"api\", copies = 2 }"),
        &["mirror", "copies"],
    );
    expect_error(
        &with("mirror = { upstream = \"api\", max_body = \"65MiB\" }"),
        &["mirror.max_body"],
    );
    // The route's own upstream (this route forwards to "hash").
    expect_error(
        &with("mirror = { upstream = \"hash\" }"),
        &["mirror.upstream", "the route's own upstream"],
    );
    // A route that answers itself has nothing to copy.
    let cfg = good().replace(
        "redirect = { status = 301,",
        "mirror = { upstream = \"api\" }\nredirect = { status = 301,",
    );
    expect_error(&cfg, &["mirror", "answers itself"]);
}

#[test]
fn check_reports_each_undefined_upstream_on_its_own_line() {
    let cfg = good()
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
    let cfg = good()
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
    let cfg = good().replace("upstream = \"web\"\n", "upstream = \"nope\"\n");
    match Proxy::try_start(&cfg, Engine::Epoll) {
        Ok(p) => panic!(
            "edgeshard run became ready with an invalid config; output:\n{}",
            p.output()
        ),
        Err(msg) => assert!(msg.contains("exited before ready"), "{msg}"),
    }
}

#[test]
fn check_names_bad_tls_files_and_fields() {
    // A missing certificate file: named with its key path and the file.
    let cfg = good().replace("/a.pem\"", "/missing.pem\"");
    expect_error(
        &cfg,
        &["listener[1].tls.certificates[0].cert", "missing.pem"],
    );
    // A key that is not the certificate's.
    let other = crate::support::tls::TestCa::new("other").leaf(&["x.test"]);
    let key = crate::support::tls::CertDir::new("check-key");
    let k = key.write("other.key", &other.key_pem);
    let cfg = good().replace(&format!("{}/a.key", good_dir()), &k.display().to_string());
    expect_error(
        &cfg,
        &["listener[1].tls.certificates[0].key", "does not match"],
    );
    // A file that is not PEM.
    let cfg = good().replace("/ca.pem\"", "/a.ocsp\"");
    expect_error(&cfg, &["listener[1].tls.client_auth.ca"]);
    // Fields.
    let cfg = good().replace("versions = [\"1.2\", \"1.3\"]", "versions = [\"1.1\"]");
    expect_error(&cfg, &["listener[1].tls.versions", "1.1"]);
    let cfg = good().replace("\"TLS13_AES_128_GCM_SHA256\", ", "\"RC4-MD5\", ");
    expect_error(&cfg, &["listener[1].tls.cipher_suites", "RC4-MD5"]);
    let cfg = good().replace("status = 301", "status = 302");
    expect_error(&cfg, &["listener[2].redirect_https.status", "302"]);
    let cfg = good().replace(
        "hsts = \"max-age=31536000\" }",
        "hsts = \"max-age=1\" }\nredirect_https = {}",
    );
    expect_error(&cfg, &["listener[1].redirect_https", "plain listener"]);
}

#[test]
fn check_reports_every_bad_tls_file_each_on_its_own_line() {
    // A certificate and its key missing, and the CA file that the listener's client_auth and
    // an upstream's tls read: four lines, each naming the file of the configuration, its key
    // path and what to do, not only the first.
    let cfg = good()
        .replace("/a.pem\"", "/gone.pem\"")
        .replace("/a.key\"", "/gone.key\"")
        .replace("/ca.pem\"", "/gone-ca.pem\"");
    let out = expect_error(
        &cfg,
        &[
            "listener[1].tls.certificates[0].cert",
            "gone.pem",
            "check the path",
        ],
    );
    for words in [
        &["listener[1].tls.certificates[0].key", "gone.key"][..],
        &["listener[1].tls.client_auth.ca", "gone-ca.pem"],
        &["upstream[1].tls.ca", "gone-ca.pem"],
    ] {
        assert_eq!(
            lines_with(&out, words).len(),
            1,
            "{words:?}; output:\n{out}"
        );
    }
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("gone")).collect();
    assert_eq!(lines.len(), 4, "{out}");
    for l in lines {
        assert!(l.contains(".toml: "), "each line names the file: {l}");
    }
}

/// The directory [`good`] points its certificate paths at.
fn good_dir() -> String {
    let g = good();
    let start = g.find("cert = \"").unwrap() + "cert = \"".len();
    let end = g[start..].find("/a.pem").unwrap();
    g[start..start + end].to_string()
}

#[test]
fn check_into_a_closed_pipe_ends_quietly() {
    // `edgeshard check ... | head -1`: the reader goes away before everything is printed.
    // The command ends (by SIGPIPE, as other tools do), without a panic.
    use std::os::unix::process::ExitStatusExt;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/basic.toml");
    let mut child = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&examples)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

// `check` (and start, and a refused reload) must not print the store's password
// in any spelling a user may write: `rediss://` (TLS, what managed Redis hands out) and
// `redis://PASSWORD@HOST` (the password where the user goes) are refused, and the message
// quotes them.
#[test]
fn check_never_prints_the_store_password() {
    let store = "store = \"redis://:p%40ss@127.0.0.1:6379\"";
    assert!(good().contains(store));
    let mut leaks = Vec::new();
    for bad in [
        "redis://:Hunter2pw@127.0.0.1:6379/0",
        "rediss://:Hunter2pw@cache.example:6380",
        "redis://Hunter2pw@127.0.0.1:6379",
    ] {
        let cfg = good().replace(store, &format!("store = \"{bad}\""));
        let out = expect_error(&cfg, &["rate_limits.store"]);
        leaks.extend(
            out.lines()
                .filter(|l| l.contains("Hunter2pw"))
                .map(String::from),
        );
    }
    assert!(
        leaks.is_empty(),
        "the password is printed:\n{}",
        leaks.join("\n")
    );
}
