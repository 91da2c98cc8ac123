//! Real clients against a real config of three routes and two upstreams: curl, Python's
//! `http.client` (keep-alive, several requests on one connection) and a short wrk run. Each
//! reaches the backend its host, path, method and headers select; unmatched requests get 404.

use crate::support::*;
use std::process::Command;

fn three_routes(a: &Origin, b: &Origin) -> Config {
    Config::new()
        .upstream("a", &[a.addr()])
        .upstream("b", &[b.addr()])
        .route("a", "host = \"api.example.com\"\npath_prefix = \"/v1/\"")
        .route("b", "host = \"api.example.com\"\nmethods = [\"POST\"]")
        .route(
            "b",
            "host = \"*.example.com\"\nheaders = { \"x-canary\" = \"1\" }",
        )
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

both_engines! {
    fn curl_reaches_the_right_backend(engine) {
        let (a, b) = (Origin::start("alpha"), Origin::start("beta"));
        let proxy = three_routes(&a, &b).start(engine);
        let url = |p: &str| format!("http://{}{p}", proxy.addr());
        let host = "Host: api.example.com";
        assert_eq!(curl(&["-H", host, &url("/v1/items")]), ("200".into(), "alpha".into()));
        assert_eq!(curl(&["-H", host, "-d", "x=1", &url("/other")]), ("200".into(), "beta".into()));
        assert_eq!(
            curl(&["-H", "Host: www.example.com", "-H", "X-Canary: 1", &url("/")]),
            ("200".into(), "beta".into())
        );
        assert_eq!(curl(&["-H", "Host: www.example.com", &url("/")]).0, "404");
        assert_eq!(curl(&["-H", "Host: elsewhere.org", &url("/v1/items")]).0, "404");
        // HTTP/1.0 and a chunked upload from a real client.
        assert_eq!(curl(&["-0", "-H", host, &url("/v1/x")]), ("200".into(), "alpha".into()));
        let (code, _) = curl(&["-H", host, "-H", "Transfer-Encoding: chunked", "--data-binary", "hello", &url("/up")]);
        assert_eq!(code, "200");
        let rec = b.last_request();
        assert_eq!((rec.method.as_str(), rec.body.as_slice()), ("POST", &b"hello"[..]));
    }

    fn python_http_client_keepalive(engine) {
        let (a, b) = (Origin::start("alpha"), Origin::start("beta"));
        let proxy = three_routes(&a, &b).start(engine);
        let script = r#"
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=10)
out = []
ports = []
for method, path, headers, body in [
    ("GET", "/v1/a", {"Host": "api.example.com"}, None),
    ("POST", "/x", {"Host": "api.example.com"}, b"payload"),
    ("GET", "/", {"Host": "a.example.com", "X-Canary": "1"}, None),
    ("GET", "/", {"Host": "nowhere.test"}, None),
    ("GET", "/v1/b", {"Host": "api.example.com"}, None),
]:
    c.request(method, path, body=body, headers=headers)
    # The local port of the connection this request went out on (http.client reconnects
    # silently when the server closed the previous one).
    ports.append(c.sock.getsockname()[1])
    r = c.getresponse()
    out.append("%d:%s" % (r.status, r.read().decode()))
print(" ".join(out))
print("connections", len(set(ports)))
"#;
        let out = Command::new("python3")
            .args(["-c", script, "127.0.0.1", &proxy.addr().port().to_string()])
            .output()
            .expect("python3 is installed (.ci/run installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (responses, connections) = got.rsplit_once('\n').unwrap_or((&got, ""));
        // The canned 404 body is "not found\n".
        assert_eq!(responses, "200:alpha 200:beta 200:beta 404:not found\n 200:alpha");
        // All five went over one client connection (the 404 included: the proxy's own
        // answers keep the connection), and the backends saw reused connections.
        assert_eq!(connections, "connections 1", "five requests, one client connection:\n{got}");
        assert_eq!(a.accepted(), 1, "alpha: one pooled upstream connection");
        assert_eq!(a.request_count(), 2);
        assert_eq!(b.accepted(), 1, "beta: one pooled upstream connection");
        assert_eq!(b.request_count(), 2);
    }

    fn wrk_run_has_no_errors(engine) {
        let a = Origin::start("alpha");
        let proxy = Config::single(a.addr()).start(engine);
        let out = Command::new("wrk")
            .args(["-t1", "-c16", "-d2s", "--timeout", "5s"])
            .arg(format!("http://{}/", proxy.addr()))
            .output()
            .expect("wrk is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("Socket errors"), "wrk saw socket errors:\n{text}");
        assert!(!text.contains("Non-2xx"), "wrk saw non-2xx responses:\n{text}");
        let requests: u64 = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        assert!(requests > 100, "wrk completed too few requests:\n{text}");
        a.assert_no_errors();
    }
}
