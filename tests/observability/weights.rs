//! Backend weights set at run time through the admin API (`POST
//! /upstreams/NAME/backends/ADDR/weight/N`, `/weight/file`): the share of picks follows on
//! the next request, `/status` shows the weight in force, a reload of the file keeps it, and
//! wrong values, backends, methods and round-robin upstreams are refused.

use super::*;

fn weight_path(upstream: &str, backend: SocketAddr, value: &str) -> String {
    format!("/upstreams/{upstream}/backends/{backend}/weight/{value}")
}

/// Sends `n` GETs on one connection; returns how many each backend answered, (a, b).
fn split(c: &mut Client, n: usize) -> (usize, usize) {
    let mut a = 0;
    for i in 0..n {
        let r = get_on(c, "w.example", &format!("/w/{i}"));
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        if r.header("x-backend") == Some("a") {
            a += 1;
        }
    }
    (a, n - a)
}

fn status_weight(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let s = admin_get(admin, "/status", None).json();
    s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .map(|b| b["weight"].clone())
        .unwrap_or_else(|| panic!("no backend {addr} in /status: {s:#}"))
}

both_engines! {
    fn a_weight_set_through_the_api_moves_the_share_of_picks(engine) {
        let (a, b) = (Origin::start("a"), Origin::start("b"));
        let config = Config::new()
            .admin("")
            .upstream_with("pool", &[a.addr(), b.addr()], "balance = \"weighted\"")
            .route("pool", "");
        let proxy = config.start(engine);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(proxy.addr());
        // Smooth weighted round robin: exact shares over whole cycles.
        assert_eq!(split(&mut c, 40), (20, 20));
        let r = admin_post(admin, &weight_path("pool", a.addr(), "3"), None);
        assert_eq!(r.status, 200, "{}\n{}", r.head.raw, r.body);
        let j = r.json();
        assert_eq!((j["weight"].clone(), j["file_weight"].clone()), (3.into(), 1.into()), "{j:#}");
        // The same connection's next request picks with it.
        assert_eq!(split(&mut c, 40), (30, 10));
        assert_eq!(status_weight(admin, a.addr()), 3);
        // A reload of the file keeps it, as it keeps a drain.
        std::fs::write(proxy.config_path(), config.render()).unwrap();
        let r = admin_post(admin, "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(status_weight(admin, a.addr()), 3);
        assert_eq!(split(&mut c, 40), (30, 10));
        // `file` gives the file's back.
        let r = admin_post(admin, &weight_path("pool", a.addr(), "file"), None);
        assert_eq!((r.status, r.json()["weight"].clone()), (200, 1.into()), "{}", r.body);
        assert_eq!(split(&mut c, 40), (20, 20));
        assert_eq!(status_weight(admin, a.addr()), 1);
    }

    fn weights_refuse_what_they_cannot_set(engine) {
        let (a, b) = (Origin::start("a"), Origin::start("b"));
        let proxy = Config::new()
            .admin("")
            .upstream_with("pool", &[a.addr()], "balance = \"weighted\"")
            .upstream("rr", &[b.addr()])
            .route("pool", "")
            .start(engine);
        let admin = proxy.admin_addr();
        for (path, status, says) in [
            (weight_path("pool", a.addr(), "0"), 400, "drain it"),
            (weight_path("pool", a.addr(), "10001"), 400, "1..=10000"),
            (weight_path("pool", a.addr(), "x"), 400, "not a weight"),
            (weight_path("pool", b.addr(), "2"), 404, "no backend"),
            (weight_path("nope", a.addr(), "2"), 404, "no backend"),
            (weight_path("rr", b.addr(), "2"), 409, "round_robin"),
        ] {
            let r = admin_post(admin, &path, None);
            assert_eq!(r.status, status, "{path}: {}", r.body);
            assert!(r.body.contains(says), "{path}: {}", r.body);
        }
        let r = admin_get(admin, &weight_path("pool", a.addr(), "2"), None);
        assert_eq!(r.status, 405, "{}", r.head.raw);
        // None of it changed anything, nor published a snapshot.
        assert_eq!(status_weight(admin, a.addr()), 1);
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_config_generation", &[]), 0.0, "{}", m.text);
    }
}
