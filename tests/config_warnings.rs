//! Configuration warnings: a route that an earlier one shadows whole (it can never match) is
//! valid, and said so: on `check`'s stderr (exit 0), in the log when the proxy starts, and in a
//! reload's answer (the admin API's JSON and `edgeshard reload`'s stderr). The warning tells
//! the truth: the shadowed route's upstream never sees a request.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Routes for any host: "all" to `a`, then `extra` (which may shadow), to `b`.
fn config(a: &Origin, b: &Origin, extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
[[upstream]]\nname = \"a\"\nbackends = [{{ address = \"{}\" }}]\n\n\
[[upstream]]\nname = \"b\"\nbackends = [{{ address = \"{}\" }}]\n\n\
[[route]]\nname = \"all\"\nupstream = \"a\"\n\n[[route]]\nupstream = \"b\"\n{extra}\n",
        a.addr(),
        b.addr()
    )
}

const SHADOWED: &str = "route \"late\" never matches: route[0] (\"all\"), declared before it for any host with no path";

#[test]
fn check_warns_of_a_shadowed_route_and_passes() {
    let (a, b) = (Origin::start("A"), Origin::start("B"));
    let (code, out) = run_check(&config(&a, &b, "name = \"late\"\nmethods = [\"POST\"]"));
    assert_eq!(code, Some(0), "{out}");
    let warned: Vec<&str> = out.lines().filter(|l| l.contains(SHADOWED)).collect();
    assert_eq!(warned.len(), 1, "{out}");
    assert!(warned[0].contains(": route[1]: warning: "), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    // Not shadowed: a longer prefix comes first whatever its place.
    let (code, out) = run_check(&config(&a, &b, "name = \"late\"\npath_prefix = \"/b/\""));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

both_engines! {
    fn a_shadowed_route_is_logged_at_start_and_reported_by_a_reload(engine) {
        let (a, b) = (Origin::start("A"), Origin::start("B"));
        let proxy = Proxy::start(&config(&a, &b, "name = \"late\"\nheaders = { \"x-b\" = \"1\" }"), engine);
        proxy.wait_for_output(SHADOWED, 1, Duration::from_secs(10));
        // As warned: the request the later route names goes to the earlier one's upstream.
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/", &[("Host", "x"), ("X-B", "1")], b""));
        assert_eq!(c.read_response().body_str(), "A");
        assert_eq!(b.request_count(), 0);

        // A reload through the admin API answers with the new file's warnings, and logs them.
        let admin = proxy.admin_addr();
        let shadowing = config(&a, &b, "name = \"late\"\nmethods = [\"GET\"]");
        std::fs::write(proxy.config_path(), &shadowing).unwrap();
        let r = admin_post(admin, "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let warnings = r.json()["warnings"].clone();
        let lines: Vec<&str> = warnings.as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
        assert_eq!(lines.len(), 1, "{}", r.body);
        assert!(lines[0].starts_with(&format!("{}: route[1]: warning: {SHADOWED}", proxy.config_path().display())), "{}", r.body);
        proxy.wait_for_output(&format!("reload: {}", lines[0]), 1, Duration::from_secs(10));

        // `edgeshard reload` prints them on stderr; a file without one has none.
        let mut cmd = Command::new(BIN);
        cmd.args(["reload", "--admin", &admin.to_string()]);
        let (status, out) = run_bounded(cmd, Duration::from_secs(20)).expect("reload exits");
        assert!(status.success(), "{out}");
        assert!(out.contains(SHADOWED), "{out}");
        std::fs::write(proxy.config_path(), config(&a, &b, "name = \"late\"\npath = \"/b\"")).unwrap();
        let r = admin_post(admin, "/reload", None);
        assert_eq!((r.status, r.json()["warnings"].clone()), (200, serde_json::json!([])), "{}", r.body);
        c.send(&request("GET", "/b", &[("Host", "x")], b""));
        assert_eq!(c.read_response().body_str(), "B");
    }
}
