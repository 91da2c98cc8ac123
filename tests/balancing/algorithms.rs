//! Every algorithm through the config file; weights; round-robin order.

use super::*;

const ALGORITHMS: &[(&str, &str)] = &[
    ("round_robin", ""),
    ("weighted", ""),
    ("random", ""),
    ("least_conn", ""),
    ("p2c", ""),
    ("consistent_hash", "hash_key = \"path\""),
    ("maglev", "hash_key = \"path\""),
];

/// Tolerance on the heavier backend's 300 of 400 picks with weights 3:1 for `random`: 400
/// draws of p = 0.75 have a standard deviation of 8.7, so 300 ± 45 is more than 5 standard
/// deviations (a false failure well under 1e-6).
const RANDOM_TOLERANCE: usize = 45;

both_engines! {
    fn every_algorithm_serves_traffic_over_three_backends(engine) {
        let o = origins(&["a", "b", "c"]);
        let text = per_algorithm(false, &plain(&[&o[0], &o[1], &o[2]]), ALGORITHMS, "");
        let proxy = Proxy::start(&text, engine);
        let mut c = Client::connect(proxy.addr());
        for (algo, _) in ALGORITHMS {
            // 120 requests (distinct paths, so distinct keys for the hash algorithms). Even
            // p2c, whose latency-driven choice can favour one backend, draws the same backend
            // twice a third of the time: a backend left out of 120 picks has odds below 1e-6.
            let names: Vec<String> = (0..120)
                .map(|i| served_by(&ask(&mut c, &format!("/{algo}/k{i}"), &[])))
                .collect();
            let per = count(&names);
            assert_eq!(
                per.keys().cloned().collect::<Vec<_>>(),
                ["a", "b", "c"],
                "balance = {algo:?} must use all three backends over 120 requests; got {per:?}"
            );
        }
        let total: usize = o.iter().map(|x| x.request_count()).sum();
        assert_eq!(total, 120 * ALGORITHMS.len(), "each request reaches exactly one backend");
        for x in &o {
            x.assert_no_errors();
        }
    }

    fn weights_three_to_one_over_400_requests(engine) {
        let heavy = Origin::start("heavy");
        let light = Origin::start("light");
        let list = backends(&[(heavy.addr(), "weight = 3"), (light.addr(), "weight = 1")]);
        let algos = [
            ("round_robin", ""),
            ("weighted", ""),
            ("least_conn", ""),
            ("random", ""),
        ];
        let proxy = Proxy::start(&per_algorithm(false, &list, &algos, ""), engine);
        let mut c = Client::connect(proxy.addr());
        for (algo, _) in algos {
            let names: Vec<String> = (0..400)
                .map(|i| served_by(&ask(&mut c, &format!("/{algo}/{i}"), &[])))
                .collect();
            let h = names.iter().filter(|n| *n == "heavy").count();
            assert_eq!(h + names.iter().filter(|n| *n == "light").count(), 400);
            match algo {
                // Weights are ignored: exact alternation.
                "round_robin" => assert_eq!(h, 200, "round_robin ignores weights; heavy got {h} of 400"),
                // Smooth weighted round robin (and least_conn on an idle shard, which breaks
                // its all-zero ties by the same schedule): exactly 3 of every 4 picks. The
                // tolerance is one period (4 picks).
                "weighted" | "least_conn" => assert!(
                    (296..=304).contains(&h),
                    "balance = {algo:?} with weights 3:1: heavy must get 300 ± 4 of 400; got {h}"
                ),
                _ => assert!(
                    (300 - RANDOM_TOLERANCE..=300 + RANDOM_TOLERANCE).contains(&h),
                    "balance = {algo:?} with weights 3:1: heavy must get 300 ± {RANDOM_TOLERANCE} of 400; got {h}"
                ),
            }
        }
    }

    fn round_robin_alternates_exactly_on_one_shard(engine) {
        let o = origins(&["a", "b", "c"]);
        let proxy = Proxy::start(
            &config(false, &format!("balance = \"round_robin\"\n{}", plain(&[&o[0], &o[1], &o[2]]))),
            engine,
        );
        let mut seq = Vec::new();
        let mut c = Client::connect(proxy.addr());
        for i in 0..30 {
            seq.push(served_by(&ask(&mut c, &format!("/ka/{i}"), &[])));
        }
        // The cursor belongs to the shard, not to the connection: new connections continue it.
        for i in 0..30 {
            seq.push(served_by(&ask_new(proxy.addr(), &format!("/new/{i}"), &[])));
        }
        let first: BTreeSet<&String> = seq[..3].iter().collect();
        assert_eq!(first.len(), 3, "the first three picks must be the three backends; got {seq:?}");
        for (i, n) in seq.iter().enumerate() {
            assert_eq!(n, &seq[i % 3], "pick {i} breaks the a-b-c rotation: {seq:?}");
        }
    }
}
