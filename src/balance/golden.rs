//! Stage "balance", tests against nginx: the ketama ring must pick, key for key, what a real
//! nginx 1.22.1 picked with `hash $arg_key consistent;` (data and the script that recorded
//! it: `tests/golden/nginx_chash/`), and a request without a key must follow nginx's
//! smooth weighted round-robin fallback.

use super::*;

const KEYED: [(&str, &str); 4] = [
    (
        "three",
        include_str!("../../tests/golden/nginx_chash/three.txt"),
    ),
    (
        "weighted5",
        include_str!("../../tests/golden/nginx_chash/weighted5.txt"),
    ),
    (
        "ten",
        include_str!("../../tests/golden/nginx_chash/ten.txt"),
    ),
    (
        "weighted5_minus",
        include_str!("../../tests/golden/nginx_chash/weighted5_minus.txt"),
    ),
];
const EMPTY_KEY: &str = include_str!("../../tests/golden/nginx_chash/empty_key.txt");

#[derive(Default)]
struct Golden {
    servers: Vec<Member>,
    picks: Vec<(String, String)>,
    empty: Vec<String>,
}

fn parse(text: &str) -> Golden {
    let mut g = Golden::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["server", name, weight] => g.servers.push(Member {
                name: name.to_string(),
                weight: weight.parse().expect("weight"),
                backup: false,
            }),
            ["pick", key, server] => g.picks.push((key.to_string(), server.to_string())),
            ["empty", server] => g.empty.push(server.to_string()),
            _ => panic!("bad golden line {line:?}"),
        }
    }
    g
}

#[test]
fn ketama_picks_what_nginx_picked() {
    let spec = Spec::new(Algorithm::ConsistentHash);
    let mut checked = 0;
    for (list, text) in KEYED {
        let g = parse(text);
        assert!(g.servers.len() >= 3 && g.picks.len() == 2000, "{list}");
        let table = Table::build(&spec, &g.servers);
        // Every shard must agree with nginx: the key alone decides.
        for shard in [0, 1, 7] {
            let mut b = ShardBalancer::with_weights(
                &spec,
                g.servers.iter().map(|m| (m.weight, m.backup)),
                shard,
            );
            for (key, want) in &g.picks {
                let i = b.pick(&table, Some(key_hash(key.as_bytes())), |_| true);
                let got = i.map(|i| g.servers[i].name.as_str());
                assert_eq!(
                    got,
                    Some(want.as_str()),
                    "list {list}, key {key:?}, shard {shard}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 8000);
}

#[test]
fn removing_a_server_moves_only_its_keys_in_nginx_too() {
    let all = parse(KEYED[1].1);
    let minus = parse(KEYED[3].1);
    let removed: Vec<&Member> = all
        .servers
        .iter()
        .filter(|m| !minus.servers.contains(m))
        .collect();
    assert_eq!(removed.len(), 1);
    let mut moved = 0;
    for ((k1, s1), (k2, s2)) in all.picks.iter().zip(&minus.picks) {
        assert_eq!(k1, k2);
        if s1 != s2 {
            assert_eq!(
                s1, &removed[0].name,
                "key {k1:?} moved off a server still present"
            );
            moved += 1;
        }
    }
    // The removed server had weight 3 of 12: about a quarter of the keys.
    assert!((300..=700).contains(&moved), "moved {moved} of 2000");
}

#[test]
fn empty_key_follows_nginx_round_robin() {
    let g = parse(EMPTY_KEY);
    assert_eq!(g.empty.len(), 24);
    for algorithm in [Algorithm::ConsistentHash, Algorithm::Maglev] {
        let spec = Spec::new(algorithm);
        let table = Table::build(&spec, &g.servers);
        let mut b =
            ShardBalancer::with_weights(&spec, g.servers.iter().map(|m| (m.weight, m.backup)), 0);
        for (n, want) in g.empty.iter().enumerate() {
            let i = b.pick(&table, None, |_| true).expect("a pick");
            assert_eq!(&g.servers[i].name, want, "request {n} without a key");
        }
    }
}

#[test]
fn unusable_server_falls_to_the_next_ring_point() {
    // nginx moves to the next point whose server is usable, which is where the key lands
    // when the server is not in the ring at all.
    let g = parse(KEYED[2].1);
    let spec = Spec::new(Algorithm::ConsistentHash);
    let full = Table::build(&spec, &g.servers);
    let without = Table::build_with(&spec, &g.servers, |i| i != 4);
    let mut b =
        ShardBalancer::with_weights(&spec, g.servers.iter().map(|m| (m.weight, m.backup)), 0);
    for (key, _) in &g.picks {
        let k = Some(key_hash(key.as_bytes()));
        let skipped = b.pick(&full, k, |i| i != 4);
        assert_eq!(skipped, b.pick(&without, k, |_| true), "key {key:?}");
    }
}
