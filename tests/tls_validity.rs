//! Certificates out of their validity (expired, or not valid yet): loaded and served as
//! nginx does, but said at start and by `check`; and a renewal gone wrong (an expired file
//! put in place of a valid one) is not swapped in by the file watcher; a certbot renewal
//! (symlinks in `live/` re-pointed one at a time) is. Both engines.

use crate::support::tls::{s_client, tls_get, tls_listener, CertDir, TestCa};
use crate::support::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2020-01-01 to 2021-01-01: long expired.
fn expired(ca: &TestCa) -> crate::support::tls::Leaf {
    let day = |d: u64| UNIX_EPOCH + Duration::from_secs(d * 86_400);
    ca.leaf_valid(&["a.test"], day(18_262), day(18_628))
}

both_engines! {
    fn an_expired_certificate_is_served_with_a_warning_at_start_and_from_check(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("expired");
        let (cert, key) = dir.write_leaf("a", &expired(&ca));
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .start(engine);
        let said = format!("listener[0].tls.certificates[0].cert ({}): expired at 2021-01-01T00:00:00Z", cert.display());
        proxy.wait_for_output(&said, 1, Duration::from_secs(10));
        let (code, out) = check_file(proxy.config_path());
        assert_eq!(code, Some(0), "{out}");
        let warned = format!("certificate clients will refuse: {said}");
        assert_eq!(out.matches(&warned).count(), 1, "{out}");
        // Served all the same: the handshake completes, and the client finds it expired.
        let ca_file = dir.write("ca.pem", &ca.pem);
        let ca_file = ca_file.to_str().unwrap();
        let out = s_client(proxy.addr(), &["-servername", "a.test", "-CAfile", ca_file]);
        assert!(out.contains("Verify return code: 10 (certificate has expired)"), "{out}");
    }

    fn an_expired_renewal_does_not_replace_a_valid_certificate(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("expired-renewal");
        let valid = ca.leaf(&["a.test"]);
        let (cert, key) = dir.write_leaf("a", &valid);
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .admin("")
            .start(engine);
        let fresh = || Arc::new(ca.client_config());
        dir.write_leaf("a", &expired(&ca));
        proxy.wait_for_output("while the certificate in force is valid: not replaced", 1, Duration::from_secs(10));
        let seen = tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap();
        assert!(seen.leaf == valid.der, "the valid certificate stays in force");
        let m = scrape(proxy.admin_addr(), None);
        let reloads = |result| m.value("edgeshard_tls_certificate_reloads_total", &[("listener", "listener[0].tls"), ("result", result)]);
        assert_eq!((reloads("ok"), reloads("failed")), (0.0, 1.0));
        // A good renewal after it is swapped in.
        let renewed = ca.leaf(&["a.test"]);
        dir.write_leaf("a", &renewed);
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(10));
        assert!(tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap().leaf == renewed.der);
    }

    // A renewal not valid yet (issued by a clock ahead of this host's) is refused while it
    // is not, and taken once it is, though its files do not change again.
    fn a_renewal_not_valid_yet_is_taken_once_it_is(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("early-renewal");
        let valid = ca.leaf(&["a.test"]);
        let (cert, key) = dir.write_leaf("a", &valid);
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .start(engine);
        let from = SystemTime::now() + Duration::from_secs(3);
        let early = ca.leaf_valid(&["a.test"], from, from + Duration::from_secs(365 * 86_400));
        dir.write_leaf("a", &early);
        proxy.wait_for_output("not valid before", 1, Duration::from_secs(10));
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(15));
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.leaf == early.der, "the renewal is in force once valid");
    }

    // Certbot's layout and renewal as certbot 2.x does it (`storage.py`, `_update_link_to`):
    // `live/NAME/*.pem` are symlinks into `archive/NAME/`; a renewal writes `*2.pem` there,
    // then, for cert, privkey, chain and fullchain in turn, unlinks the link and makes it
    // again. So for a moment the key is new and the certificate old, and a link is missing:
    // the watcher may see either, and must end on the new pair.
    fn a_certbot_renewal_through_its_symlinks_is_served(engine) {
        use std::os::unix::fs::symlink;
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("certbot");
        let (live, archive) = (dir.path("live"), dir.path("archive"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&archive).unwrap();
        let issue = |version: u32| {
            let leaf = ca.leaf(&["a.test"]);
            for (kind, pem) in [("cert", &leaf.cert_pem), ("privkey", &leaf.key_pem), ("chain", &ca.pem), ("fullchain", &leaf.cert_pem)] {
                std::fs::write(archive.join(format!("{kind}{version}.pem")), pem).unwrap();
            }
            leaf
        };
        let link = |kind: &str, version: u32| {
            let at = live.join(format!("{kind}.pem"));
            let _ = std::fs::remove_file(&at);
            symlink(format!("../archive/{kind}{version}.pem"), &at).unwrap();
        };
        let first = issue(1);
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            link(kind, 1);
        }
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&live.join("fullchain.pem"), &live.join("privkey.pem"))], ""))
            .start(engine);
        let fresh = || Arc::new(ca.client_config());
        assert!(tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap().leaf == first.der);
        let renewed = issue(2);
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            link(kind, 2);
        }
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(15));
        let seen = tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap();
        assert!(seen.leaf == renewed.der, "the renewal is in force");
    }
}
