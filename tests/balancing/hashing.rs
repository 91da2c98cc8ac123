//! Hash keys (header, query, cookie) from every shard; removing a backend.

use super::*;

both_engines! {
    fn hash_key_header_maps_each_user_to_one_backend_from_every_shard(engine) {
        let o = origins(&["a", "b", "c"]);
        let list = plain(&[&o[0], &o[1], &o[2]]);
        let algos = [
            ("consistent_hash", "hash_key = \"header:X-User\""),
            ("maglev", "hash_key = \"header:X-User\""),
        ];
        let proxy = Proxy::start_shards(&per_algorithm(true, &list, &algos, ""), engine, 2);
        for (algo, _) in algos {
            let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            // 24 users x 6 rounds, each request on a new connection: SO_REUSEPORT hashes the
            // connections over both shards, whose balancers share nothing but the table.
            for round in 0..6 {
                for u in 0..24 {
                    let user = format!("user-{u}");
                    let r = ask_new(proxy.addr(), &format!("/{algo}/r{round}"), &[("X-User", &user)]);
                    seen.entry(user).or_default().insert(served_by(&r));
                }
            }
            for (user, set) in &seen {
                assert_eq!(set.len(), 1, "{algo}: {user} reached several backends: {set:?}");
            }
            let used: BTreeSet<&String> = seen.values().flatten().collect();
            assert!(used.len() >= 2, "{algo}: 24 users must not all hash to one backend: {seen:?}");
        }
        assert_every_shard_served(&proxy, 2);
    }

    fn hash_key_query_and_cookie(engine) {
        let o = origins(&["a", "b", "c"]);
        let list = plain(&[&o[0], &o[1], &o[2]]);
        let tables = format!(
            "[[route]]\npath_prefix = \"/q/\"\nupstream = \"q\"\n\n\
             [[route]]\npath_prefix = \"/c/\"\nupstream = \"c\"\n\n\
             [[upstream]]\nname = \"q\"\nbalance = \"consistent_hash\"\nhash_key = \"query:id\"\n{list}\n\n\
             [[upstream]]\nname = \"c\"\nbalance = \"maglev\"\nhash_key = \"cookie:uid\"\n{list}\n"
        );
        let proxy = Proxy::start(&config_with(false, &tables), engine);
        let mut c = Client::connect(proxy.addr());
        let mut by_query: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut by_cookie: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for round in 0..5 {
            for u in 0..20 {
                let id = format!("u{u}");
                // Other arguments and cookies around the key change every round.
                let target = format!("/q/x?a={round}&id={id}&z=r{round}");
                by_query.entry(id.clone()).or_default().insert(served_by(&ask(&mut c, &target, &[])));
                let cookie = format!("a={round}; uid={id}; z=r{round}");
                let r = ask(&mut c, &format!("/c/r{round}"), &[("Cookie", &cookie)]);
                by_cookie.entry(id).or_default().insert(served_by(&r));
            }
        }
        for (what, seen) in [("query:id", &by_query), ("cookie:uid", &by_cookie)] {
            for (id, set) in seen {
                assert_eq!(set.len(), 1, "hash_key = {what:?}: key {id} reached several backends: {set:?}");
            }
            let used: BTreeSet<&String> = seen.values().flatten().collect();
            assert!(used.len() >= 2, "hash_key = {what:?}: 20 keys must not all map to one backend: {seen:?}");
        }
        // Without the key (absent, or empty) the request still succeeds, balanced by weighted
        // round robin as nginx does for an empty key: 30 such requests reach all three.
        let mut keyless = Vec::new();
        for i in 0..10 {
            keyless.push(served_by(&ask(&mut c, &format!("/q/x?other={i}"), &[])));
            keyless.push(served_by(&ask(&mut c, "/q/x?id=", &[])));
            keyless.push(served_by(&ask(&mut c, "/c/none", &[("Cookie", "other=1; uidx=2")])));
            keyless.push(served_by(&ask(&mut c, "/c/none", &[])));
        }
        let per = count(&keyless);
        assert_eq!(per.len(), 3, "requests without a key are balanced over every backend; got {per:?}");
    }

    fn removing_a_backend_moves_only_its_keys(engine) {
        let mut o: Vec<Option<Origin>> = origins(&["a", "b", "c", "d"]).into_iter().map(Some).collect();
        let refs: Vec<&Origin> = o.iter().map(|x| x.as_ref().unwrap()).collect();
        let list = plain(&refs);
        let algos = [
            ("consistent_hash", "hash_key = \"header:X-User\""),
            ("maglev", "hash_key = \"header:X-User\""),
        ];
        // No pooled connections (see `stop`), and an ejection that outlasts the test.
        let extra = "max_idle_per_backend = 0\nfail_timeout = \"30s\"";
        let proxy = Proxy::start(&per_algorithm(false, &list, &algos, extra), engine);
        let map = |algo: &str| -> BTreeMap<usize, String> {
            let mut c = Client::connect(proxy.addr());
            (0..120)
                .map(|u| (u, served_by(&ask(&mut c, &format!("/{algo}/"), &[("X-User", &format!("user-{u}"))]))))
                .collect()
        };
        let before: Vec<BTreeMap<usize, String>> = algos.iter().map(|(a, _)| map(a)).collect();
        // Stop the backend owning the most consistent_hash keys.
        let owned = |m: &BTreeMap<usize, String>, n: &str| m.values().filter(|v| *v == n).count();
        let victim = ["a", "b", "c", "d"].into_iter().max_by_key(|n| owned(&before[0], n)).unwrap();
        for (i, (algo, _)) in algos.iter().enumerate() {
            assert!(owned(&before[i], victim) > 0, "{algo}: {victim} owns no key of 120: {:?}", before[i]);
        }
        let idx = ["a", "b", "c", "d"].iter().position(|n| *n == victim).unwrap();
        o[idx].take().unwrap().close();
        for (i, (algo, _)) in algos.iter().enumerate() {
            let after = map(algo);
            let again = map(algo);
            assert_eq!(after, again, "{algo}: with {victim} down the mapping must be stable");
            for (u, was) in &before[i] {
                let now = &after[u];
                if was == victim {
                    assert_ne!(now, victim);
                } else {
                    assert_eq!(now, was, "{algo}: user-{u} moved from {was} to {now} although only {victim} went down");
                }
            }
        }
    }
}

both_engines! {
    // docs/SCALE-OUT.md: two edgeshard processes (two hosts behind ECMP or DNS) started from
    // one configuration send each hash key to the same backend, and honour each other's sticky
    // cookies: nothing in the ring, the Maglev table or the cookie values depends on the
    // process, its shards or its start time.
    fn two_proxies_from_one_config_pick_the_same_backend_per_key(engine) {
        let o = origins(&["a", "b", "c", "d"]);
        let list = plain(&[&o[0], &o[1], &o[2], &o[3]]);
        let algos = [
            ("consistent_hash", "hash_key = \"header:X-User\""),
            ("maglev", "hash_key = \"header:X-User\""),
            ("round_robin", "sticky = { cookie = \"srv\", ttl = \"1h\" }"),
        ];
        let config = per_algorithm(false, &list, &algos, "");
        let first = Proxy::start_shards(&config, engine, 2);
        let second = Proxy::start_shards(&config, engine, 2);
        for (algo, _) in &algos[..2] {
            let mut used = BTreeSet::new();
            for u in 0..32 {
                let user = format!("user-{u}");
                let target = format!("/{algo}/u{u}");
                let a = served_by(&ask_new(first.addr(), &target, &[("X-User", &user)]));
                let b = served_by(&ask_new(second.addr(), &target, &[("X-User", &user)]));
                assert_eq!(a, b, "{algo}: {user} went to {a} through one proxy and {b} through the other");
                used.insert(a);
            }
            assert!(used.len() >= 2, "{algo}: 32 users must not all hash to one backend: {used:?}");
        }
        // A sticky cookie handed out by the first proxy keeps the client on its backend
        // through the second.
        for i in 0..8 {
            let r = ask_new(first.addr(), &format!("/round_robin/s{i}"), &[]);
            let backend = served_by(&r);
            let set = r.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie:\n{}", r.head.raw));
            let cookie = set.split(';').next().unwrap().to_string();
            for j in 0..3 {
                let again = ask_new(second.addr(), &format!("/round_robin/s{i}/{j}"), &[("Cookie", &cookie)]);
                assert_eq!(served_by(&again), backend, "cookie {cookie} from the first proxy, through the second");
                assert!(again.header("set-cookie").is_none(), "an honoured cookie is not set again:\n{}", again.head.raw);
            }
        }
    }
}
