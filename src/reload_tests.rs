//! Unit tests of the reloader: TLS state carried by listener address and position, and
//! shards that do not take their sockets.

use super::*;

/// A self-signed certificate for `a.test` in a fresh directory; the directory is removed
/// when the returned guard drops.
struct Certs(PathBuf);

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn certs() -> Certs {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgeshard-reload-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    std::fs::write(dir.join("a.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), c.signing_key.serialize_pem()).unwrap();
    Certs(dir)
}

/// A file with these listeners (`None`: plain; `Some(hsts)`: TLS with that HSTS value).
fn shared(dir: &Certs, listeners: &[(&str, Option<&str>)]) -> Shared {
    let mut text = String::new();
    for (a, tls) in listeners {
        text.push_str(&format!("[[listener]]\naddress = \"{a}\"\n"));
        if let Some(h) = tls {
            text.push_str(&format!(
                "tls = {{ certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}], hsts = \"{h}\" }}\n"
            ));
        }
    }
    text.push_str("[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n");
    let config = Config::parse(&text, &dir.0.join("edge.toml")).unwrap();
    let tls = Arc::new(TlsListeners::build(&config).unwrap());
    Shared::new(config).with_tls(tls)
}

#[test]
fn tls_state_is_kept_by_address_and_position_and_ticket_keys_for_all() {
    let dir = certs();
    let old = shared(
        &dir,
        &[
            ("127.0.0.1:8443", Some("max-age=1")),
            ("127.0.0.1:9443", Some("max-age=2")),
        ],
    );
    let kept = |new: &Shared, i: usize, j: usize| {
        let (tls, _) = carry_tls(&old, &new.config).unwrap();
        Arc::ptr_eq(tls.get(i).unwrap(), old.tls.get(j).unwrap())
    };
    // The same file: both keep their state.
    let same = shared(
        &dir,
        &[
            ("127.0.0.1:8443", Some("max-age=1")),
            ("127.0.0.1:9443", Some("max-age=2")),
        ],
    );
    assert!(kept(&same, 0, 0) && kept(&same, 1, 1));
    // A plain listener added in front: both moved (their key paths changed), rebuilt.
    let moved = shared(
        &dir,
        &[
            ("127.0.0.1:8080", None),
            ("127.0.0.1:8443", Some("max-age=1")),
            ("127.0.0.1:9443", Some("max-age=2")),
        ],
    );
    assert!(!kept(&moved, 1, 0) && !kept(&moved, 2, 1));
    // One's settings changed: the other keeps its state, the changed one is rebuilt.
    let changed = shared(
        &dir,
        &[
            ("127.0.0.1:8443", Some("max-age=1")),
            ("127.0.0.1:9443", Some("max-age=3")),
        ],
    );
    assert!(kept(&changed, 0, 0) && !kept(&changed, 1, 1));
    let (tls, kept) = carry_tls(&old, &changed.config).unwrap();
    assert_eq!(kept.len(), 1, "the unchanged one is re-read, later");
    assert_eq!(tls.get(1).unwrap().hsts.as_deref(), Some("max-age=3"));
    // Nothing in force was touched (a reload refused after this must change nothing):
    // the kept listener's certificates are re-read only when asked, later.
    let store = &old.tls.get(0).unwrap().store;
    assert_eq!(store.reloads_ok.load(Ordering::Relaxed), 0);
    reread_certificates(&kept);
    assert_eq!(store.reloads_ok.load(Ordering::Relaxed), 1);
    // Ticket keys are those in force, for rebuilt listeners too: a ticket the listener in
    // force sealed opens on the kept and on the rebuilt one (the same scope: neither
    // asks for client certificates).
    assert!(Arc::ptr_eq(
        tls.ticketer.as_ref().unwrap(),
        old.tls.ticketer.as_ref().unwrap()
    ));
    let sealed = old
        .tls
        .get(1)
        .unwrap()
        .config
        .ticketer
        .encrypt(b"s")
        .unwrap();
    for t in [tls.get(0), tls.get(1)].into_iter().flatten() {
        assert_eq!(
            t.config.ticketer.decrypt(&sealed).as_deref(),
            Some(&b"s"[..])
        );
    }
}

/// A shard that could not take its socket, one no longer running and one that does not
/// answer in time: each of their added sockets is reported failed, with why; a shard
/// that took its sockets is not.
#[test]
fn shards_that_do_not_take_their_sockets_are_reported_however_they_fail() {
    use futures_channel::mpsc::unbounded;
    let id = |port| ListenerId {
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        nth: 0,
    };
    let (b, c) = (id(1), id(2));
    let (senders, mut queues): (Vec<_>, Vec<_>) = (0..4).map(|_| unbounded()).unzip();
    drop(queues.remove(2)); // shard 2 stopped
    let socket = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = (0..4).map(|_| vec![(b, socket()), (c, socket())]).collect();
    let (asked, mut failed) = ask_shards(&senders, open, &[b]);
    // Shard 0 takes both, shard 1 could not register C, shard 3 never answers.
    for (shard, not_taken) in [(0, vec![]), (1, vec![c])] {
        let Ok(ShardQuery::Reload(r)) = queues[shard].try_recv() else {
            panic!("shard {shard} was asked")
        };
        assert_eq!((r.open.len(), r.close.as_slice()), (2, [b].as_slice()));
        let failed = not_taken
            .into_iter()
            .map(|l| (l, "cannot".to_string()))
            .collect();
        r.done.send(Switched { shard, failed }).unwrap();
    }
    let Ok(ShardQuery::Reload(_late)) = queues[2].try_recv() else {
        panic!("shard 3 was asked")
    };
    failed.extend(await_shards(asked, Duration::from_millis(50)));
    failed.sort_by_key(|f| (f.shard, f.listener.address));
    let got: Vec<(usize, ListenerId)> = failed.iter().map(|f| (f.shard, f.listener)).collect();
    assert_eq!(got, [(1, c), (2, b), (2, c), (3, b), (3, c)]);
    assert_eq!(failed[0].why, "cannot");
    assert_eq!(failed[1].why, "shard 2 is not running");
    assert!(
        failed[3].why.starts_with("shard 3 did not switch within"),
        "{}",
        failed[3].why
    );
}

/// The store's password is read at start only, like the rest of `[rate_limits]`: a reload
/// that changes only it says so (its Debug text hides it, so the values are compared).
#[test]
fn a_new_store_password_needs_a_restart_and_says_so() {
    let dir = certs();
    let cfg = |pw: &str| {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[rate_limits]\nstore = \"redis://:{pw}@127.0.0.1:6379\"\n"
        );
        Config::parse(&text, &dir.0.join("edge.toml")).unwrap()
    };
    let notes = restart_only_changes(&cfg("old-password"), &cfg("new-password"));
    assert!(
        notes.iter().any(|n| n.contains("rate_limits")),
        "a changed store password is not reported: {notes:?}"
    );
}
