//! Who may pass (issue 16): a route's `auth`. HTTP Basic against an htpasswd file of bcrypt
//! hashes (401 with a challenge, the credentials not forwarded, repeat logins from the
//! shard's cache), and forward authentication (the auth service's 2xx lets the request
//! through with chosen fields, anything else is the client's answer, a dead service 500),
//! each counted in `edgeshard_auth_total`.

use crate::support::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An htpasswd file with `alice:open sesame` (cost 4: fast tests), removed on drop.
struct UsersFile(PathBuf);

impl UsersFile {
    fn new() -> UsersFile {
        UsersFile::with_cost(4)
    }

    fn with_cost(cost: u32) -> UsersFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgeshard-test-users-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        // htpasswd -B writes $2y$; the crate writes $2b$: the same algorithm.
        let hash = bcrypt::hash("open sesame", cost)
            .unwrap()
            .replace("$2b$", "$2y$");
        std::fs::write(&path, format!("# test users\nalice:{hash}\n")).unwrap();
        UsersFile(path)
    }
}

impl Drop for UsersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn auth_counted(admin: std::net::SocketAddr, mode: &str, want: &[(&str, f64)]) {
    scrape_until(
        admin,
        None,
        Duration::from_secs(5),
        "auth checks counted",
        |m| {
            want.iter().all(|(r, n)| {
                m.value("edgeshard_auth_total", &[("mode", mode), ("result", r)]) == *n
            })
        },
    );
}

/// An auth service: `Bearer good` gets 200 with `X-User: alice`; anything else 403 with a
/// body of its own.
fn auth_service() -> Origin {
    Origin::with_handler("auth", |rec| {
        if rec.header("authorization") == Some("Bearer good") {
            Reply::Response {
                status: 200,
                headers: vec![
                    ("X-User".into(), "alice".into()),
                    ("X-Other".into(), "not copied".into()),
                ],
                body: b"ok".to_vec(),
                mode: BodyMode::Length,
                close_after: false,
            }
        } else {
            Reply::Response {
                status: 403,
                headers: vec![
                    ("X-Reason".into(), "bad token".into()),
                    ("X-Powered-By".into(), "AuthSvc/1.0".into()),
                    ("X-Internal".into(), "leak".into()),
                    ("Server".into(), "authsvc".into()),
                ],
                body: b"go away\n".to_vec(),
                mode: BodyMode::Length,
                close_after: false,
            }
        }
    })
}

fn forward_route(uri: &str) -> String {
    format!(
        "auth = {{ forward = {{ upstream = \"auth\", uri = \"{uri}\", copy_headers = [\"X-User\"], timeout = \"2s\" }} }}"
    )
}

both_engines! {
    // Refused logins are logged on a budget of their own (`log.error_rate` each): a backend
    // failing at that rate cannot hide them from fail2ban, nor a password flood hide the
    // backend's failures. Before, the two shared one budget: at `error_rate = 1` the second
    // line of a second was dropped, whichever it was.
    fn refused_logins_and_backend_failures_are_logged_on_budgets_of_their_own(engine) {
        let origin = Origin::start("o");
        let users = UsersFile::new();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("dead", &[dead_addr()])
            .route("dead", "path_prefix = \"/dead/\"")
            .route("main", &format!(
                "path_prefix = \"/private/\"\nauth = {{ basic = {{ realm = \"r\", users = \"{}\" }} }}",
                users.0.display()
            ))
            .section("log", "error_rate = 1")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("e.example", "/dead/x"));
        assert_eq!(c.read_response().status(), 502);
        for _ in 0..3 {
            c.send(&request("GET", "/private/b", &[("Host", "e.example"), ("Authorization", &basic("alice:wrong"))], b""));
            assert_eq!(c.read_response().status(), 401);
        }
        proxy.wait_for_output("upstream connect failed", 1, Duration::from_secs(10));
        proxy.wait_for_output("basic auth refused: wrong password", 1, Duration::from_secs(10));
        proxy.wait_for_output("refused-login lines suppressed by log.error_rate", 1, Duration::from_secs(10));
    }

    fn basic_auth_challenges_refuses_and_admits(engine) {
        let origin = Origin::start("o");
        let users = UsersFile::new();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!(
                "path_prefix = \"/private/\"\nauth = {{ basic = {{ realm = \"staff only\", users = \"{}\" }} }}",
                users.0.display()
            ))
            .route("main", "")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        // No credentials: 401 with the challenge, and the connection stays open.
        c.send(&get("e.example", "/private/a"));
        let r = c.read_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"staff only\", charset=\"UTF-8\""));
        assert!(r.header("Connection").is_none(), "{:?}", r.head);
        // A wrong password, an unknown user, another scheme: 401.
        for value in [basic("alice:open says me"), basic("mallory:open sesame"), "Bearer x".into()] {
            c.send(&request("GET", "/private/b", &[("Host", "e.example"), ("Authorization", &value)], b""));
            let r = c.read_response();
            assert_eq!(r.status(), 401, "{value}");
            assert!(r.header("WWW-Authenticate").is_some());
        }
        assert_eq!(origin.request_count(), 0, "nothing refused reaches the backend");
        // Each refused user and why is logged with the client's address (what fail2ban reads
        // in nginx's error log); the browser's first request without credentials is not.
        proxy.wait_for_output("client=127.0.0.1 user=\"alice\"", 1, Duration::from_secs(10));
        proxy.wait_for_output("basic auth refused: wrong password", 1, Duration::from_secs(10));
        proxy.wait_for_output("user=\"mallory\"", 1, Duration::from_secs(10));
        proxy.wait_for_output("basic auth refused: unknown user", 1, Duration::from_secs(10));
        // The right one: through, without the credentials.
        c.send(&request("GET", "/private/c", &[("Host", "e.example"), ("Authorization", &basic("alice:open sesame"))], b""));
        assert_eq!(c.read_response().status(), 200);
        let rec = origin.last_request();
        assert_eq!(rec.path(), "/private/c");
        assert!(!rec.has_header("authorization"), "{}", rec.raw_head);
        // Other routes need nothing.
        c.send(&get("e.example", "/open"));
        assert_eq!(c.read_response().status(), 200);
        auth_counted(proxy.admin_addr(), "basic", &[("ok", 1.0), ("denied", 4.0), ("error", 0.0), ("overloaded", 0.0)]);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_responses_generated_total", &[("status", "401"), ("reason", "unauthorized")]), 4.0);
    }

    // A route guarding `/admin/` for GET and POST, a catch-all to the same upstream: a
    // HEAD (a GET without the body, which backends answer with their GET handler) is held to
    // the guarded route, as nginx's `limit_except GET` holds it, not passed to the catch-all.
    fn head_is_held_to_the_auth_of_a_get_route(engine) {
        let origin = Origin::start("o");
        let users = UsersFile::new();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!(
                "path_prefix = \"/admin/\"\nmethods = [\"GET\", \"POST\"]\nauth = {{ basic = {{ users = \"{}\" }} }}",
                users.0.display()
            ))
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("e.example", "/admin/secret"));
        assert_eq!(c.read_response().status(), 401, "GET is guarded");
        c.send(&request("HEAD", "/admin/secret", &[("Host", "e.example")], b""));
        assert_eq!(c.read_response_for("HEAD").status(), 401, "and HEAD with it");
        c.send(&request("PUT", "/admin/secret", &[("Host", "e.example"), ("Content-Length", "0")], b""));
        assert_eq!(c.read_response().status(), 200, "other methods go on to the next route");
        assert_eq!(origin.request_count(), 1);
    }

    // Two `Authorization` fields: an auth service checks one (the first, for most), a
    // backend may act on the other, never checked. Refused with 400 before anything is
    // asked, as nginx refuses them.
    fn two_authorization_fields_are_refused_before_the_auth_service_is_asked(engine) {
        let origin = Origin::start("o");
        let service = Origin::with_handler("auth", |rec| {
            let ok = rec.header("authorization") == Some("Bearer mine");
            Reply::Response { status: if ok { 200 } else { 401 }, headers: vec![], body: vec![], mode: BodyMode::Length, close_after: false }
        });
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[service.addr()])
            .route("main", "auth = { forward = { upstream = \"auth\", uri = \"/check\" } }")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/app", &[
            ("Host", "e.example"),
            ("Authorization", "Bearer mine"),
            ("authorization", "Bearer forged-admin"),
        ], b""));
        assert_eq!(c.read_response().status(), 400);
        assert_eq!((service.request_count(), origin.request_count()), (0, 0));
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/app", &[("Host", "e.example"), ("Authorization", "Bearer mine")], b""));
        assert_eq!(c.read_response().status(), 200, "one is served");
    }

    // A request without a host (HTTP/1.0) has no URL: `http:///evil.example/x`, which a
    // WHATWG parser (Node's `new URL`) reads as host `evil.example`, is never sent to the
    // auth service; the target still is.
    fn forward_auth_never_sends_a_url_with_an_empty_host(engine) {
        let origin = Origin::start("o");
        let service = Origin::start("auth");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[service.addr()])
            .route("main", "auth = { forward = { upstream = \"auth\", uri = \"/check\" } }")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /evil.example/x HTTP/1.0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
        let check = service.last_request();
        assert_eq!(check.header("x-original-url"), None, "{}", check.raw_head);
        assert_eq!(check.header("x-forwarded-uri"), Some("/evil.example/x"));
        let mut c = Client::connect(proxy.addr());
        c.send(&get("e.example", "/x"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(service.last_request().header("x-original-url"), Some("http://e.example/x"));
    }

    // The second login with the same credentials is taken from the shard's cache: bcrypt
    // runs once. `forward_authorization` passes the field on.
    fn repeat_logins_cost_no_bcrypt(engine) {
        let origin = Origin::start("o");
        let users = UsersFile::new();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!(
                "auth = {{ basic = {{ users = \"{}\", forward_authorization = true }} }}",
                users.0.display()
            ))
            .admin("")
            .start(engine);
        let value = basic("alice:open sesame");
        for path in ["/1", "/2"] {
            let mut c = Client::connect(proxy.addr());
            c.send(&request("GET", path, &[("Host", "e.example"), ("Authorization", &value)], b""));
            assert_eq!(c.read_response().status(), 200);
            assert_eq!(origin.last_request().header("authorization"), Some(value.as_str()));
        }
        auth_counted(proxy.admin_addr(), "basic", &[("ok", 2.0)]);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_auth_bcrypt_total", &[]), 1.0);
        assert_eq!(m.value("edgeshard_auth_cache_hits_total", &[]), 1.0);
    }

    // Allowed: the request goes on with the service's X-User, and a client's own X-User
    // never reaches the backend. The service saw the client's fields and the X-Forwarded-*.
    fn forward_auth_allows_and_copies_chosen_fields(engine) {
        let origin = Origin::start("o");
        let service = auth_service();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[service.addr()])
            .route("main", &forward_route("/check?app=1"))
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..2 {
            c.send(&request("POST", "/app/x?y=1", &[
                ("Host", "e.example"),
                ("Authorization", "Bearer good"),
                ("X-User", "root"),
                ("X-Forwarded-Uri", "/spoofed"),
                // What auth services decide on (Authelia: X-Original-URL): never the client's.
                ("X-Original-URL", "https://public.example/"),
                ("X-Original-Method", "GET"),
                ("X-Real-IP", "192.0.2.1"),
                ("Forwarded", "for=192.0.2.1"),
                // The same in the spellings a CGI or WSGI service folds into those names,
                // the other client-address claims, and httpoxy's `Proxy`.
                ("X_Original_URL", "http://a/public"),
                ("X_Forwarded_Uri", "/public"),
                ("True-Client-IP", "192.0.2.2"),
                ("Proxy", "http://evil.example:3128"),
                ("Content-Length", "4"),
            ], b"body"));
            assert_eq!(c.read_response().status(), 200);
        }
        let rec = origin.last_request();
        assert_eq!(rec.header_all("x-user"), ["alice"], "{}", rec.raw_head);
        assert!(!rec.has_header("x-other"));
        assert_eq!(rec.header("authorization"), Some("Bearer good"), "forward auth leaves the client's fields");
        let check = service.last_request();
        assert!(check.raw_head.starts_with("GET /check?app=1 HTTP/1.1\r\n"), "{}", check.raw_head);
        assert_eq!(check.header("x-forwarded-method"), Some("POST"));
        assert_eq!(check.header_all("x-forwarded-uri"), ["/app/x?y=1"]);
        assert_eq!(check.header("x-forwarded-host"), Some("e.example"));
        assert_eq!(check.header("x-forwarded-proto"), Some("http"));
        assert_eq!(check.header_all("x-original-url"), ["http://e.example/app/x?y=1"], "{}", check.raw_head);
        assert_eq!(check.header_all("x-original-method"), ["POST"], "{}", check.raw_head);
        assert!(!check.has_header("x-real-ip") && !check.has_header("forwarded"), "{}", check.raw_head);
        let lower = check.raw_head.to_ascii_lowercase();
        for claim in ["x_original_url", "x_forwarded_uri", "true-client-ip", "\r\nproxy:"] {
            assert!(!lower.contains(claim), "{claim}: {}", check.raw_head);
        }
        assert!(!check.has_header("content-length"), "the check has no body: {}", check.raw_head);
        // The service's connection was pooled: two checks, one connection.
        assert_eq!(service.accepted(), 1);
        auth_counted(proxy.admin_addr(), "forward", &[("ok", 2.0), ("denied", 0.0)]);
    }

    // Refused: the service's status, fields and body are the answer; the backend sees
    // nothing. A client sending its own X-User gets nothing through either.
    // The service's refusal is the answer, cleaned as a relayed response is: its `Server`,
    // `X-Powered-By` and hidden fields out, the route's response rules in.
    fn forward_auth_refusal_is_the_answer(engine) {
        let origin = Origin::start("o");
        let service = auth_service();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[service.addr()])
            .route("main", &format!("{}\nresponse_headers = {{ preset = \"security\" }}", forward_route("/check")))
            .server("hide_response_headers", "[\"X-Internal\"]")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/app", &[("Host", "e.example"), ("Authorization", "Bearer bad"), ("X-User", "alice")], b""));
        let r = c.read_response();
        assert_eq!(r.status(), 403);
        assert_eq!(r.body_str(), "go away\n");
        assert_eq!(r.header("X-Reason"), Some("bad token"));
        for hidden in ["X-Powered-By", "X-Internal", "Server"] {
            assert_eq!(r.header(hidden), None, "{hidden}:\n{}", r.head.raw);
        }
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"), "{}", r.head.raw);
        assert!(r.header("Date").is_some());
        // The connection stays usable.
        c.send(&request("HEAD", "/app", &[("Host", "e.example")], b""));
        let r = c.read_response_for("HEAD");
        assert_eq!(r.status(), 403);
        assert_eq!(r.header("Content-Length"), Some("8"));
        assert_eq!(origin.request_count(), 0);
        auth_counted(proxy.admin_addr(), "forward", &[("ok", 0.0), ("denied", 2.0)]);
    }

    // A reload reads the users file again: a changed password works at once and the old
    // one, though this shard remembers it, no longer does; a broken file is refused with
    // its line and changes nothing.
    fn a_reload_reads_the_users_file_again(engine) {
        let origin = Origin::start("o");
        let users = UsersFile::new();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!("auth = {{ basic = {{ users = \"{}\" }} }}", users.0.display()))
            .admin("")
            .start(engine);
        let status = |password: &str| {
            let mut c = Client::connect(proxy.addr());
            let value = basic(&format!("alice:{password}"));
            c.send(&request("GET", "/", &[("Host", "e.example"), ("Authorization", &value)], b""));
            c.read_response().status()
        };
        let reload = || {
            let out = std::process::Command::new(BIN)
                .args(["reload", "--admin", &proxy.admin_addr().to_string()])
                .output()
                .expect("run edgeshard reload");
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        assert_eq!(status("open sesame"), 200);
        assert_eq!(status("open sesame"), 200, "remembered");
        let hash = bcrypt::hash("new one", 4).unwrap();
        std::fs::write(&users.0, format!("alice:{hash}\n")).unwrap();
        assert_eq!(reload().0, Some(0));
        assert_eq!(status("open sesame"), 401);
        assert_eq!(status("new one"), 200);
        std::fs::write(&users.0, format!("alice:{hash}\nbob:plain\n")).unwrap();
        let (code, stderr) = reload();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("route[0].auth.basic.users") && stderr.contains("line 2"), "{stderr}");
        assert_eq!(status("new one"), 200, "a refused reload changes nothing");
    }

    // No auth service to ask: 500 (as nginx auth_request), counted as an error.
    fn forward_auth_without_its_service_answers_500(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[dead_addr()])
            .route("main", &forward_route("/check"))
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/app", &[("Host", "e.example"), ("Authorization", "Bearer good")], b""));
        assert_eq!(c.read_response().status(), 500);
        assert_eq!(origin.request_count(), 0);
        auth_counted(proxy.admin_addr(), "forward", &[("error", 1.0), ("ok", 0.0)]);
    }

    // More bcrypt checks at once than `limits.auth_pending` allows: the excess gets 503 with
    // Retry-After at once (a flood of passwords cannot queue without bound), counted.
    fn a_flood_of_password_checks_is_bounded(engine) {
        let origin = Origin::start("o");
        // Cost 8: slow enough (the debug build's bcrypt) that all requests arrive while the
        // first check runs.
        let users = UsersFile::with_cost(8);
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!("auth = {{ basic = {{ users = \"{}\" }} }}", users.0.display()))
            .limit("auth_pending", "1")
            .admin("")
            .start(engine);
        let value = basic("alice:wrong");
        let mut conns: Vec<Client> = (0..6).map(|_| Client::connect(proxy.addr())).collect();
        for c in &mut conns {
            c.send(&request("GET", "/", &[("Host", "e.example"), ("Authorization", &value)], b""));
        }
        let mut statuses = Vec::new();
        for c in &mut conns {
            let r = c.read_response();
            if r.status() == 503 {
                assert_eq!(r.header("Retry-After"), Some("1"), "{:?}", r.head);
            }
            statuses.push(r.status());
        }
        let overloaded = statuses.iter().filter(|&&s| s == 503).count();
        assert!(overloaded >= 1, "{statuses:?}");
        assert!(statuses.iter().all(|&s| s == 503 || s == 401), "{statuses:?}");
        assert_eq!(origin.request_count(), 0);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(
            m.value("edgeshard_auth_total", &[("mode", "basic"), ("result", "overloaded")]),
            overloaded as f64
        );
    }

    // The auth upstream's breaker bounds its checks as it bounds requests routed to it: with
    // one check held at the service, a second is refused at once (500, counted in
    // edgeshard_breaker_rejected_total) and never reaches the service. (Checks took no
    // request permit and skipped the connection and pending limits: six at once made six
    // connections to a service capped at one.)
    fn forward_auth_checks_are_held_to_the_auth_upstreams_breaker(engine) {
        for limit in ["max_requests = 1", "max_connections = 1"] {
            let origin = Origin::start("o");
            let (auth, gate) = held_origin("/check");
            let proxy = Config::new()
                .upstream("main", &[origin.addr()])
                .upstream_with("auth", &[auth.addr()], &format!("[upstream.breaker]\n{limit}"))
                .route("main", &forward_route("/check"))
                .admin("")
                .start(engine);
            let ask = || {
                let mut c = Client::connect(proxy.addr());
                c.send(&request("GET", "/app", &[("Host", "e.example"), ("Authorization", "Bearer good")], b""));
                c
            };
            let mut first = ask();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while auth.request_count() < 1 {
                assert!(std::time::Instant::now() < deadline, "{limit}: the first check never arrived");
                std::thread::yield_now();
            }
            let mut second = ask();
            assert_eq!(second.read_response().status(), 500, "{limit}");
            assert_eq!(auth.request_count(), 1, "{limit}: the second check reached the service");
            let m = scrape(proxy.admin_addr(), None);
            let a = auth.addr().to_string();
            let rejected = m.value("edgeshard_breaker_rejected_total", &[("upstream", "auth"), ("backend", a.as_str())]);
            assert_eq!(rejected, 1.0, "{limit}");
            gate.open();
            assert_eq!(first.read_response().status(), 200, "{limit}");
        }
    }

    // An auth service that accepts and never answers: cut at `timeout`, 500, counted.
    fn forward_auth_that_never_answers_times_out_with_500(engine) {
        let origin = Origin::start("o");
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .upstream("auth", &[silent.local_addr().unwrap()])
            .route("main", "auth = { forward = { upstream = \"auth\", uri = \"/check\", timeout = \"300ms\" } }")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let started = std::time::Instant::now();
        c.send(&request("GET", "/app", &[("Host", "e.example")], b""));
        assert_eq!(c.read_response().status(), 500);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "answered before the timeout: {took:?}");
        assert!(took < Duration::from_secs(5), "the timeout did not cut it: {took:?}");
        assert_eq!(origin.request_count(), 0);
        auth_counted(proxy.admin_addr(), "forward", &[("error", 1.0), ("ok", 0.0)]);
        drop(silent);
    }
}

#[test]
fn a_bad_users_file_names_the_file_and_the_line() {
    let users = UsersFile::new();
    let text = std::fs::read_to_string(&users.0).unwrap();
    std::fs::write(&users.0, format!("{text}bob:$apr1$salt$hash\n")).unwrap();
    let config = Config::new()
        .upstream("main", &[dead_addr()])
        .route(
            "main",
            &format!(
                "auth = {{ basic = {{ users = \"{}\" }} }}",
                users.0.display()
            ),
        )
        .render();
    let err = Proxy::try_start(&config, Engine::Epoll)
        .err()
        .expect("must not start");
    let name = users.0.display().to_string();
    assert!(
        err.lines().any(|l| l.contains("route[0].auth.basic.users")
            && l.contains(&format!("{name} line 3"))
            && l.contains("bcrypt")),
        "{err}"
    );
}
