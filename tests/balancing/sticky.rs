//! Sticky sessions and backup backends.

use super::*;

/// The value of the one `Set-Cookie: srv=...` of `r`, checked against the documented form
/// `srv=<16 lower-case hex>; Max-Age=3600; Path=/; HttpOnly`; None if there is none.
fn sticky_cookie(r: &Response) -> Option<String> {
    let all = r.header_all("set-cookie");
    assert!(
        all.len() <= 1,
        "at most one Set-Cookie; got:\n{}",
        r.head.raw
    );
    let v = all.first()?;
    let (value, attrs) = v
        .strip_prefix("srv=")
        .and_then(|rest| rest.split_once(';'))
        .unwrap_or_else(|| panic!("Set-Cookie must start with srv=VALUE;  got {v:?}"));
    assert!(
        value.len() == 16
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "the sticky value must be 16 lower-case hex digits (opaque); got {v:?}"
    );
    assert_eq!(
        attrs, " Max-Age=3600; Path=/; HttpOnly",
        "Set-Cookie attributes: {v:?}"
    );
    Some(value.to_string())
}

fn sticky_upstream(list: &str, extra: &str) -> String {
    format!(
        "balance = \"round_robin\"\nsticky = {{ cookie = \"srv\", ttl = \"1h\" }}\n{list}\n{extra}"
    )
}

/// New connections without a cookie until every backend has handed out its cookie value:
/// backend name -> value. Checks that a backend's value is the same from every shard.
fn collect_cookies(proxy: &Proxy, n: usize) -> BTreeMap<String, String> {
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..60 {
        let r = ask_new(proxy.addr(), &format!("/first/{i}"), &[]);
        let name = served_by(&r);
        let value = sticky_cookie(&r).unwrap_or_else(|| {
            panic!(
                "the first response of a session must set the cookie:\n{}",
                r.head.raw
            )
        });
        if let Some(old) = got.insert(name.clone(), value.clone()) {
            assert_eq!(old, value, "{name} got two different cookie values");
        }
        if got.len() == n {
            break;
        }
    }
    assert_eq!(
        got.len(),
        n,
        "60 new sessions must reach every backend: {got:?}"
    );
    let values: BTreeSet<&String> = got.values().collect();
    assert_eq!(values.len(), n, "each backend has its own value: {got:?}");
    got
}

both_engines! {
    // The cookie's attributes (operator review, session 13: a cookie without Secure on an
    // https site is flagged by every scanner): a session cookie (no Max-Age), SameSite as
    // configured, and Secure whenever SameSite=None asks for it (browsers refuse it
    // without); on a TLS listener Secure is the default (unit test in src/balance/tests.rs).
    fn sticky_cookie_attributes_are_configurable(engine) {
        let o = origins(&["a"]);
        for (attrs, want) in [
            ("ttl = \"session\", same_site = \"lax\"", " Path=/; HttpOnly; SameSite=Lax"),
            ("same_site = \"None\"", " Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None"),
            ("secure = true", " Max-Age=3600; Path=/; HttpOnly; Secure"),
        ] {
            let up = format!("sticky = {{ cookie = \"srv\", {attrs} }}\n{}", plain(&[&o[0]]));
            let proxy = Proxy::start(&config(false, &up), engine);
            let r = ask_new(proxy.addr(), "/", &[]);
            let v = r.header("set-cookie").unwrap_or_else(|| panic!("{attrs}: no cookie"));
            assert_eq!(v.split_once(';').map(|(_, a)| a), Some(want), "{attrs}");
        }
    }

    fn sticky_cookie_keeps_a_client_on_its_backend_for_1000_requests(engine) {
        let o = origins(&["a", "b", "c"]);
        let up = sticky_upstream(&plain(&[&o[0], &o[1], &o[2]]), "");
        let proxy = Proxy::start_shards(&config(true, &up), engine, 2);
        let cookies = collect_cookies(&proxy, 3);
        let mut total = 0;
        for (name, value) in &cookies {
            let cookie = format!("theme=dark; srv={value}; lang=en");
            // 4 keep-alive connections per session, 84 requests each: 1,008 in all. Without
            // the cookie, round robin would rotate every request.
            for conn in 0..4 {
                let mut c = Client::connect(proxy.addr());
                for i in 0..84 {
                    let r = ask(&mut c, &format!("/s/{conn}/{i}"), &[("Cookie", &cookie)]);
                    assert_eq!(&served_by(&r), name, "the session cookie of {name} was not honoured");
                    assert_eq!(sticky_cookie(&r), None, "an honoured cookie is not sent again:\n{}", r.head.raw);
                    total += 1;
                }
            }
        }
        assert_eq!(total, 1008);
        assert_every_shard_served(&proxy, 2);
    }

    fn a_sticky_secret_keys_the_cookie_values(engine) {
        // Without a secret a value is a public hash of the backend's name, the same for
        // anyone; with one the values differ and are still honoured (the same on every
        // shard: collect_cookies checks it).
        let o = origins(&["a", "b"]);
        let list = plain(&[&o[0], &o[1]]);
        let public = Proxy::start_shards(&config(true, &sticky_upstream(&list, "")), engine, 2);
        let open = collect_cookies(&public, 2);
        let keyed_up = sticky_upstream(&list, "").replace("ttl = \"1h\" }", "ttl = \"1h\", secret = \"0123456789abcdef0123\" }");
        let keyed = Proxy::start_shards(&config(true, &keyed_up), engine, 2);
        let secret = collect_cookies(&keyed, 2);
        for (name, value) in &secret {
            assert_ne!(Some(value), open.get(name), "{name}: the keyed value is the public one");
            let r = ask_new(keyed.addr(), "/again", &[("Cookie", &format!("srv={value}"))]);
            assert_eq!(&served_by(&r), name);
        }
    }

    fn sticky_client_moves_when_its_backend_goes_down(engine) {
        let mut o: Vec<Option<Origin>> = origins(&["a", "b", "c"]).into_iter().map(Some).collect();
        let refs: Vec<&Origin> = o.iter().map(|x| x.as_ref().unwrap()).collect();
        let up = sticky_upstream(&plain(&refs), "max_idle_per_backend = 0\nfail_timeout = \"30s\"");
        let proxy = Proxy::start(&config(false, &up), engine);
        let r = ask_new(proxy.addr(), "/", &[]);
        let home = served_by(&r);
        let value = sticky_cookie(&r).expect("a new session sets the cookie");
        let cookie = format!("srv={value}");
        for i in 0..10 {
            assert_eq!(served_by(&ask_new(proxy.addr(), &format!("/{i}"), &[("Cookie", &cookie)])), home);
        }
        let idx = ["a", "b", "c"].iter().position(|n| *n == home).unwrap();
        o[idx].take().unwrap().close();
        let r = ask_new(proxy.addr(), "/after", &[("Cookie", &cookie)]);
        let moved = served_by(&r);
        assert_ne!(moved, home, "{home} is down");
        let new_value = sticky_cookie(&r)
            .unwrap_or_else(|| panic!("a session that moves gets a new cookie:\n{}", r.head.raw));
        assert_ne!(new_value, value);
        let cookie = format!("srv={new_value}");
        let mut c = Client::connect(proxy.addr());
        for i in 0..50 {
            let r = ask(&mut c, &format!("/moved/{i}"), &[("Cookie", &cookie)]);
            assert_eq!(served_by(&r), moved, "the moved session stays on its new backend");
            assert_eq!(sticky_cookie(&r), None);
        }
    }

    fn sticky_ignores_garbage_cookie_values(engine) {
        let o = origins(&["a", "b", "c"]);
        let up = sticky_upstream(&plain(&[&o[0], &o[1], &o[2]]), "");
        let proxy = Proxy::start(&config(false, &up), engine);
        // backend name -> its cookie value: what a new session's Set-Cookie must carry.
        let known = collect_cookies(&proxy, 3);
        let good = known.values().next().unwrap().clone();
        let garbage = [
            "srv=".to_string(),
            "srv=zzzz".to_string(),
            "srv=0123456789abcdef".to_string(),
            format!("srv={}", good.to_ascii_uppercase()),
            format!("srv={good}0"),
            format!("srv={}", &good[..15]),
            format!("srv=../{good}"),
            format!("other={good}"),
        ];
        let mut c = Client::connect(proxy.addr());
        for g in &garbage {
            for _ in 0..3 {
                let r = ask(&mut c, "/g", &[("Cookie", g)]);
                let name = served_by(&r);
                let v = sticky_cookie(&r).unwrap_or_else(|| {
                    panic!("Cookie: {g} names no backend: a new session must start (Set-Cookie):\n{}", r.head.raw)
                });
                // Compare values with values: `v` is the part after `srv=`.
                if let Some(sent) = g.strip_prefix("srv=") {
                    assert_ne!(v, sent, "never echo the garbage (Cookie: {g})");
                }
                assert_eq!(
                    Some(&v),
                    known.get(&name),
                    "Cookie: {g}: the new session's cookie must be the value of {name}, which served it"
                );
            }
        }
    }
}

both_engines! {
    fn backup_gets_traffic_only_when_every_primary_is_down(engine) {
        let p1 = Origin::start("p1");
        let p2 = Origin::start("p2");
        let backup = Origin::start("backup");
        let list = backends(&[(p1.addr(), ""), (backup.addr(), "backup = true"), (p2.addr(), "")]);
        let up = format!("balance = \"round_robin\"\n{list}\nmax_idle_per_backend = 0\nfail_timeout = \"30s\"");
        let proxy = Proxy::start(&config(false, &up), engine);
        let run = |n: usize| -> BTreeMap<String, usize> {
            let mut c = Client::connect(proxy.addr());
            count(&(0..n).map(|i| served_by(&ask(&mut c, &format!("/{i}"), &[]))).collect::<Vec<_>>())
        };
        let per = run(40);
        assert_eq!(per.get("backup"), None, "no backup traffic while both primaries are up: {per:?}");
        assert_eq!(per.get("p1"), Some(&20), "{per:?}");
        p1.close();
        let per = run(30);
        assert_eq!(per.get("backup"), None, "one primary is still up: {per:?}");
        assert_eq!(per.get("p2"), Some(&30), "{per:?}");
        p2.close();
        let per = run(30);
        assert_eq!(per.get("backup"), Some(&30), "every primary is down: the backup takes over: {per:?}");
    }
}
