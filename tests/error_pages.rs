//! `server.error_pages`: the proxy's own error answers (a dead backend's 502, no route's
//! 404, a 408) carry the operator's page instead of the built-in text, with its type, on
//! keep-alive and closing answers alike and under `HEAD`; a backend's own errors are relayed
//! as they are; a reload reads the files again; bad entries are refused with the key. A
//! route's own `error_pages` come first for the answers given on that route.

use std::path::Path;
use std::time::Duration;

use crate::support::tls::CertDir;
use crate::support::*;

fn pages(dir: &CertDir, p502: &str) -> String {
    let html = dir.write("502.html", p502);
    let json = dir.write("404.json", "{\"error\": \"no such site\"}\n");
    format!(
        "{{ \"502\" = \"{}\", \"404\" = \"{}\" }}",
        html.display(),
        json.display()
    )
}

fn config(dir: &CertDir, p502: &str, origin: &Origin) -> Config {
    let dead = dead_addr();
    Config::new()
        .server("error_pages", &pages(dir, p502))
        .upstream("dead", &[dead])
        .upstream("live", &[origin.addr()])
        .route("dead", "host = \"dead.test\"")
        .route("live", "host = \"live.test\"")
        .admin("")
}

fn ask(c: &mut Client, method: &str, host: &str, path: &str) -> Response {
    c.send(&request(method, path, &[("Host", host)], b""));
    c.read_response_for(method)
}

both_engines! {
    fn the_proxys_own_errors_carry_the_configured_pages(engine) {
        let dir = CertDir::new("pages");
        let origin = Origin::start("o");
        let page = "<html><body>back soon</body></html>\n";
        let proxy = config(&dir, page, &origin).start(engine);
        let mut c = Client::connect(proxy.addr());
        // Asked once: a dead backend is ejected after its first failure (then 503).
        let r = ask(&mut c, "GET", "dead.test", "/");
        assert_eq!(r.status(), 502);
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.body_str(), page);
        assert!(r.header("Date").is_some(), "{}", r.head.raw);
        // The same connection goes on: the page's answer keeps it alive as the text's did.
        let r = ask(&mut c, "GET", "nowhere.test", "/");
        assert_eq!((r.status(), r.header("Content-Type")), (404, Some("application/json")));
        assert_eq!(r.body_str(), "{\"error\": \"no such site\"}\n");
        let r = ask(&mut c, "HEAD", "nowhere.test", "/");
        assert_eq!(r.status(), 404);
        assert_eq!(r.header("Content-Length"), Some("26"));
        assert!(r.body.is_empty());
        // A backend's own error is its own.
        let r = ask(&mut c, "GET", "live.test", "/status/502");
        assert_eq!(r.status(), 502);
        assert_ne!(r.body_str(), page);
        // A status without a page keeps the built-in text; with `Connection: close` too.
        c.send(b"GET / HTTP/1.1\r\nHost: live.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        let r = c.read_response();
        assert_eq!((r.status(), r.header("Content-Type")), (400, Some("text/plain")));
        c.expect_closed();
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/", &[("Host", "nowhere.test"), ("Connection", "close")], b""));
        let r = c.read_response();
        assert_eq!((r.status(), r.body_str()), (404, "{\"error\": \"no such site\"}\n".to_string()));
        assert!(r.has_token("connection", "close"));
        c.expect_closed();
    }

    // (A dead backend is ejected after its first failure, and later requests for it get 503:
    // each configuration here names a dead backend of its own, asked once.)
    fn a_reload_reads_the_pages_again(engine) {
        let dir = CertDir::new("pages-reload");
        let origin = Origin::start("o");
        let proxy = config(&dir, "first\n", &origin).start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(ask(&mut c, "GET", "dead.test", "/").body_str(), "first\n");
        let text = config(&dir, "second\n", &origin).render();
        std::fs::write(proxy.config_path(), text).unwrap();
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ask(&mut c, "GET", "dead.test", "/").body_str(), "second\n");
    }

    fn a_routes_own_pages_come_before_the_servers(engine) {
        let dir = CertDir::new("pages-route");
        let shop502 = dir.write("shop-502.html", "shop is down\n");
        let shop403 = dir.write("shop-403.txt", "shop says no\n");
        let shop429 = dir.write("shop-429.json", "{\"slow\": \"down\"}");
        let own = format!(
            "error_pages = {{ \"502\" = \"{}\", \"403\" = \"{}\", \"429\" = \"{}\" }}",
            shop502.display(),
            shop403.display(),
            shop429.display()
        );
        let proxy = Config::new()
            .server("error_pages", &pages(&dir, "site is down\n"))
            .upstream("shop", &[dead_addr()])
            .upstream("blog", &[dead_addr()])
            .route("shop", &format!("host = \"shop.test\"\npath_prefix = \"/admin\"\ndeny = [\"127.0.0.1\"]\n{own}"))
            .route("shop", &format!("host = \"shop.test\"\npath_prefix = \"/api\"\nrate_limit = {{ rate = 1, burst = 1, key = \"route\" }}\n{own}"))
            .route("shop", &format!("host = \"shop.test\"\n{own}"))
            .route("blog", "host = \"blog.test\"")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let r = ask(&mut c, "GET", "shop.test", "/");
        assert_eq!((r.status(), r.body_str()), (502, "shop is down\n".to_string()));
        // The page's body is counted (once the shard has, after its write).
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "13 bytes sent", |m| {
            m.value("edgeshard_client_bytes_sent_total", &[]) == 13.0
        });
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        let r = ask(&mut c, "GET", "shop.test", "/admin");
        assert_eq!((r.status(), r.body_str()), (403, "shop says no\n".to_string()));
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
        // The bucket's one token goes to the first request (a 503: the dead backend was
        // ejected by the first 502).
        assert_eq!(ask(&mut c, "GET", "shop.test", "/api").status(), 503);
        let r = ask(&mut c, "GET", "shop.test", "/api");
        assert_eq!((r.status(), r.body_str()), (429, "{\"slow\": \"down\"}".to_string()));
        assert!(r.header("Retry-After").is_some(), "{}", r.head.raw);
        // Another route falls back to the server's page, and the unrouted to the server's 404.
        let r = ask(&mut c, "GET", "blog.test", "/");
        assert_eq!((r.status(), r.body_str()), (502, "site is down\n".to_string()));
        let r = ask(&mut c, "GET", "nowhere.test", "/");
        assert_eq!((r.status(), r.body_str()), (404, "{\"error\": \"no such site\"}\n".to_string()));
    }
}

#[test]
fn bad_error_pages_are_refused_with_the_key() {
    let dir = CertDir::new("pages-bad");
    let big = dir.write("big.html", &"x".repeat((1 << 20) + 1));
    // A named pipe: reading it would wait for a writer (check and reloads hung on one).
    let fifo = dir.path("page.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let page = |code: &str, file: &Path| format!("{{ \"{code}\" = \"{}\" }}", file.display());
    let cases = [
        (page("200", &big), "server.error_pages.200"),
        (page("418", &big), "server.error_pages.418"),
        (page("0404", &big), "server.error_pages.0404"),
        (page("502", &big), "larger than 1 MiB"),
        (
            page("503", Path::new("/nonexistent/503.html")),
            "cannot read",
        ),
        (page("503", &fifo), "not a regular file"),
        (page("503", Path::new("/dev/zero")), "not a regular file"),
    ];
    for (value, expect) in cases {
        let text = Config::single(dead_addr())
            .server("error_pages", &value)
            .render();
        let file = dir.write("edgeshard.toml", &text);
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["check", "--config"]).arg(Path::new(&file));
        let (status, said) =
            run_bounded(cmd, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(status.code(), Some(1), "{value}: {said}");
        assert!(
            said.contains(expect) && said.contains("server.error_pages"),
            "{value}: {said}"
        );
    }
    // A route's pages are checked alike, named by the route.
    let text = Config::single(dead_addr())
        .route("main", &format!("error_pages = {}", page("299", &big)))
        .render();
    let file = dir.write("edgeshard.toml", &text);
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["check", "--config"]).arg(Path::new(&file));
    let (status, said) = run_bounded(cmd, Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("route[1].error_pages.299"), "{said}");
}
