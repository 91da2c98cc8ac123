//! TLS termination with real clients (curl, openssl s_client, a rustls client) and
//! certificates made by the test: SNI choice among three certificates with a wildcard and a
//! default, an ECDSA and an RSA certificate for one name, refused old versions and weak suites, resumption on another shard, certificates
//! replaced on disk (and a broken replacement), mTLS with a subject header no client can
//! spoof, a stalled handshake closed at its timeout, the https scheme, HSTS and the
//! redirect, and large bodies both ways. Both engines.

use crate::support::pattern::{expected_sha256, pattern_vec, sha256_hex};
use crate::support::tls::{s_client, tls_get, tls_listener, CertDir, TestCa};
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// curl over https to `addr` as `host`, trusting `ca`; returns (http code, body).
fn curl_https(
    addr: std::net::SocketAddr,
    host: &str,
    ca: &std::path::Path,
    extra: &[&str],
) -> (String, String) {
    curl_https_at(addr, host, "/", ca, extra)
}

/// [`curl_https`] for `path`.
fn curl_https_at(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    ca: &std::path::Path,
    extra: &[&str],
) -> (String, String) {
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let url = format!("https://{host}:{}{path}", addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &resolve])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

/// One site: a CA, a certificate for `a.test` and the CA itself (`ca.pem`) written to a fresh
/// directory, an origin, and a config with one TLS listener serving that certificate;
/// `extra` adds keys to its `tls` table (`@CA@` stands for the CA file's path).
struct Site {
    ca: TestCa,
    dir: CertDir,
    ca_file: std::path::PathBuf,
    origin: Origin,
    config: Config,
}

fn site(tag: &str, extra: &str) -> Site {
    let ca = TestCa::new("test ca");
    let dir = CertDir::new(tag);
    let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
    let ca_file = dir.write("ca.pem", &ca.pem);
    let origin = Origin::start("origin");
    let extra = extra.replace("@CA@", &ca_file.display().to_string());
    let config =
        Config::single(origin.addr()).only_listener(&tls_listener(&[(&cert, &key)], &extra));
    Site {
        ca,
        dir,
        ca_file,
        origin,
        config,
    }
}

both_engines! {
    fn sni_chooses_among_three_certificates_with_wildcard_and_default(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("sni");
        let (a, wild, c) = (ca.leaf(&["a.test"]), ca.leaf(&["*.wild.test"]), ca.leaf(&["c.test"]));
        let pa = dir.write_leaf("a", &a);
        let pw = dir.write_leaf("wild", &wild);
        let pc = dir.write_leaf("c", &c);
        let origin = Origin::start("origin");
        let listener = format!(
            "address = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\", default = true }}] }}",
            pa.0.display(), pa.1.display(), pw.0.display(), pw.1.display(), pc.0.display(), pc.1.display()
        );
        let proxy = Config::single(origin.addr()).only_listener(&listener).admin("").start(engine);
        let cfg = Arc::new(ca.client_config());
        for (name, want) in [("a.test", &a), ("x.wild.test", &wild), ("c.test", &c)] {
            let seen = tls_get(proxy.addr(), &cfg, name, "/").unwrap();
            assert!(seen.leaf == want.der, "SNI {name} got the wrong certificate");
            assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        }
        // No SNI: the certificate marked default.
        let mut no_sni = ca.client_config();
        no_sni.enable_sni = false;
        let seen = tls_get(proxy.addr(), &Arc::new(no_sni), "c.test", "/").unwrap();
        assert!(seen.leaf == c.der, "a client without SNI must get the default certificate");
        // A wildcard covers one label only, and an unknown name gets the default (openssl
        // prints the subject of what it was served, trusted or not).
        for name in ["b.x.wild.test", "unknown.test"] {
            let out = s_client(proxy.addr(), &["-servername", name]);
            assert!(out.contains("CN = c.test") || out.contains("CN=c.test"), "{name}: {out}");
        }
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_tls_sni_misses_total", &[]), 2.0);
        assert_eq!(m.value("edgeshard_tls_handshakes_total", &[("kind", "full")]), 6.0);
    }

    // An ECDSA and an RSA certificate for one name (nginx's dual-certificate setup), ECDSA
    // first: a client that can verify only RSA signatures (TLS 1.3 sigalgs), or offers only
    // ECDHE-RSA suites (TLS 1.2), gets the RSA one; every other client the ECDSA one.
    fn a_name_with_ecdsa_and_rsa_certificates_serves_each_client_one_it_can_use(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("dual");
        let (ec, rsa) = (ca.leaf(&["a.test"]), ca.leaf_rsa(&["a.test"]));
        let pe = dir.write_leaf("ec", &ec);
        let pr = dir.write_leaf("rsa", &rsa);
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&pe.0, &pe.1), (&pr.0, &pr.1)], ""))
            .start(engine);
        let served = |args: &[&str]| {
            let mut all = vec!["-servername", "a.test"];
            all.extend_from_slice(args);
            let out = s_client(proxy.addr(), &all);
            let key = if out.contains("public key is 2048 bit") { "rsa" } else if out.contains("public key is 256 bit") { "ecdsa" } else { "none" };
            (key, out)
        };
        for (args, want) in [
            (&["-tls1_3"][..], "ecdsa"),
            (&["-tls1_3", "-sigalgs", "RSA-PSS+SHA256:RSA-PSS+SHA384"][..], "rsa"),
            (&["-tls1_2"][..], "ecdsa"),
            (&["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"][..], "rsa"),
        ] {
            let (key, out) = served(args);
            assert_eq!(key, want, "{args:?}:\n{out}");
        }
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.leaf == ec.der && seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        // A TLS 1.2-only listener: a client offering TLS 1.3 suites beside its only ECDHE-RSA
        // one (openssl does) can use only the RSA certificate there.
        let only12 = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&pe.0, &pe.1), (&pr.0, &pr.1)], "versions = [\"1.2\"]"))
            .start(engine);
        let out = s_client(only12.addr(), &["-servername", "a.test", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]);
        assert!(out.contains("public key is 2048 bit"), "{out}");
    }

    fn a_certificate_name_is_escaped_in_the_metrics(engine) {
        // The name went into a label as the certificate wrote it: a `"` or `\` in it made the
        // whole of /metrics unparsable, every family lost to the scrape (found by a review).
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("tls-metrics-name");
        let (cert, key) = dir.write_leaf("odd", &ca.leaf_by_cn("Acme \"edge\" \\ cert\r"));
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .admin("")
            .start(engine);
        // `scrape` parses with prometheus_client, as Prometheus would, and checks each line.
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(
            m.label_values("edgeshard_tls_certificate_expiry_seconds", "name"),
            ["acme \"edge\" \\ cert\u{fffd}"],
            "the name, escaped (a control character as U+FFFD)"
        );
        assert_eq!(
            m.label_values("edgeshard_tls_certificate_reloads_total", "listener"),
            ["listener[0].tls"]
        );
    }

    fn old_versions_and_weak_suites_are_refused(engine) {
        let Site { ca: _ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("versions", "");
        let proxy = config.start(engine);
        // The control: TLS 1.2 and 1.3 with default suites work, and the server's order
        // decides (openssl's own order puts AES-256 first).
        for (v, suite) in [("-tls1_2", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("-tls1_3", "TLS_AES_128_GCM_SHA256")] {
            let out = s_client(proxy.addr(), &[v, "-servername", "a.test"]);
            assert!(out.contains(&format!("Cipher is {suite}")), "{v}: {out}");
        }
        // TLS 1.0 and 1.1, with the client's own floor lowered so that the refusal is ours.
        for v in ["-tls1", "-tls1_1"] {
            let out = s_client(proxy.addr(), &[v, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "a.test"]);
            assert!(out.contains("Cipher is (NONE)") && out.contains("alert"), "{v} must be refused by the server: {out}");
        }
        // CBC, RSA key exchange, 3DES: nothing in common with the server's AEAD-only list.
        for suite in ["AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA256"] {
            let out = s_client(proxy.addr(), &["-tls1_2", "-cipher", &format!("{suite}@SECLEVEL=0"), "-servername", "a.test"]);
            assert!(out.contains("Cipher is (NONE)") && out.contains("alert"), "{suite} must be refused by the server: {out}");
        }
    }

    fn resumed_on_another_shard_is_counted(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("resume", "");
        let proxy = config.admin("").start_shards(engine, 2);
        let cfg = Arc::new(ca.client_config());
        let first = tls_get(proxy.addr(), &cfg, "a.test", "/").unwrap();
        assert!(!first.resumed);
        let per_shard = |kind: &str| -> Vec<f64> {
            let m = scrape(proxy.admin_addr(), None);
            (0..2).map(|s| m.value("edgeshard_shard_tls_handshakes_total", &[("shard", &s.to_string()), ("kind", kind)])).collect()
        };
        let full = per_shard("full");
        let issuer = full.iter().position(|&n| n == 1.0).expect("one full handshake");
        // SO_REUSEPORT spreads connections by their 4-tuple: new connections land on the other
        // shard soon. Each must resume with the tickets the first shard issued.
        let mut elsewhere = false;
        for i in 0..64 {
            let seen = tls_get(proxy.addr(), &cfg, "a.test", "/").unwrap();
            assert!(seen.resumed, "connection {i} was not resumed");
            assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
            let resumed = per_shard("resumed");
            if resumed[1 - issuer] >= 1.0 {
                elsewhere = true;
                break;
            }
        }
        assert!(elsewhere, "no connection out of 64 landed on the shard that did not issue the ticket");
        assert_eq!(per_shard("full").iter().sum::<f64>(), 1.0, "every later handshake was resumed");
    }

    fn replaced_certificate_served_next_open_connection_kept_broken_one_ignored(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("reload");
        let old = ca.leaf(&["a.test"]);
        let (cert, key) = dir.write_leaf("a", &old);
        let origin = Origin::start("origin");
        let mut proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .admin("")
            .start(engine);
        let cfg = Arc::new(ca.client_config());
        // An open keep-alive connection, made with the old certificate.
        let conn = rustls::ClientConnection::new(cfg.clone(), "a.test".try_into().unwrap()).unwrap();
        let sock = TcpStream::connect(proxy.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut open = rustls::StreamOwned::new(conn, sock);
        let get_on_open = |open: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
            open.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).ends_with("origin") {
                let n = open.read(&mut buf).unwrap();
                assert!(n > 0, "the open connection was closed");
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        assert!(get_on_open(&mut open).starts_with("HTTP/1.1 200"));

        // Replace key and certificate on disk (renamed into place, as deploy tools do).
        let new = ca.leaf(&["a.test"]);
        dir.write_leaf("a", &new);
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(10));
        // A fresh client each time: a resumed session would not show the certificate.
        let fresh = || Arc::new(ca.client_config());
        let seen = tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap();
        assert!(seen.leaf == new.der, "the next handshake must get the new certificate");
        assert!(get_on_open(&mut open).starts_with("HTTP/1.1 200"), "the open connection must survive");

        // A broken replacement (a key that does not match) keeps the new certificate in force.
        let other = ca.leaf(&["a.test"]);
        dir.write("a.key", &other.key_pem);
        proxy.wait_for_output("certificate reload failed", 1, Duration::from_secs(10));
        let seen = tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap();
        assert!(seen.leaf == new.der, "a broken file must keep the certificate in force");
        // SIGHUP reads the file at once: still broken, so the reload is refused, naming the key
        // path, and (refused) leaves the certificates in force and their counts alone.
        proxy.signal(libc::SIGHUP);
        proxy.wait_for_output("reload failed, keeping the configuration in force", 1, Duration::from_secs(10));
        let out = proxy.output();
        let refused = out.lines().find(|l| l.contains("reload failed, keeping")).unwrap_or_default();
        assert!(refused.contains("listener[0].tls.certificates[0].key"), "the log names the key path: {out}");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_config_reloads_total", &[("result", "failed")]), 1.0);
        assert_eq!(m.value("edgeshard_tls_certificate_reloads_total", &[("listener", "listener[0].tls"), ("result", "ok")]), 1.0);
        assert_eq!(m.value("edgeshard_tls_certificate_reloads_total", &[("listener", "listener[0].tls"), ("result", "failed")]), 1.0);
        assert!(get_on_open(&mut open).starts_with("HTTP/1.1 200"));
    }

    fn a_reload_that_rebuilds_a_listener_keeps_its_certificate_reload_counts(engine) {
        // Found by loadtest/tlssoak: a reload that changes a listener's `tls` settings built a
        // new certificate store whose counters started at 0, so the failures the watcher had
        // counted (what an alert on `result="failed"` watches) vanished from the metrics.
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("reload-counts");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let origin = Origin::start("origin");
        let config = |extra: &str| {
            Config::single(origin.addr())
                .only_listener(&tls_listener(&[(&cert, &key)], extra))
                .admin("")
        };
        let mut proxy = config("").start(engine);
        let counts = |proxy: &Proxy| {
            let m = scrape(proxy.admin_addr(), None);
            let of = |r| m.value("edgeshard_tls_certificate_reloads_total", &[("listener", "listener[0].tls"), ("result", r)]);
            (of("ok"), of("failed"))
        };
        // The watcher takes a new pair, then refuses a key that does not match.
        dir.write_leaf("a", &ca.leaf(&["a.test"]));
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(10));
        let good = ca.leaf(&["a.test"]);
        dir.write("a.key", &ca.leaf(&["a.test"]).key_pem);
        proxy.wait_for_output("certificate reload failed", 1, Duration::from_secs(10));
        // Made good again, then a SIGHUP-style reload of the same settings: counted too.
        dir.write_leaf("a", &good);
        proxy.wait_for_output("certificates reloaded", 2, Duration::from_secs(10));
        assert_eq!(counts(&proxy), (2.0, 1.0));
        // A reload that changes the listener's TLS settings rebuilds it in place.
        std::fs::write(proxy.config_path(), config("handshake_timeout = \"5s\"").render()).unwrap();
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let (ok, failed) = counts(&proxy);
        assert_eq!(failed, 1.0, "the failed reload the watcher counted is still counted");
        assert!(ok >= 2.0, "ok reloads went back from 2 to {ok}");
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.leaf == good.der, "the rebuilt listener serves the pair in force");
        proxy.signal(libc::SIGHUP);
        proxy.wait_for_output("configuration reloaded", 2, Duration::from_secs(10));
        assert_eq!(counts(&proxy).1, 1.0);
    }

    fn mtls_requires_a_certificate_and_passes_an_unspoofable_subject(engine) {
        let ca = TestCa::new("test ca");
        let client_ca = TestCa::new("client ca");
        let dir = CertDir::new("mtls");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let ca_file = dir.write("ca.pem", &ca.pem);
        let client_ca_file = dir.write("client-ca.pem", &client_ca.pem);
        let (ccert, ckey) = dir.write_leaf("alice", &client_ca.client("alice", "Example"));
        let (scert, skey) = dir.write_leaf("mallory", &ca.client("mallory", "Elsewhere"));
        let origin = Origin::start("origin");
        let extra = format!(
            "client_auth = {{ ca = \"{}\", required = true, subject_header = \"X-Client-Subject\" }}",
            client_ca_file.display()
        );
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], &extra))
            .start(engine);
        // No certificate: refused in the handshake.
        let (code, _) = curl_https(proxy.addr(), "a.test", &ca_file, &["-H", "X-Client-Subject: CN=admin"]);
        assert_eq!(code, "000", "a client without a certificate must be refused");
        // A certificate from another CA: refused.
        let (code, _) = curl_https(proxy.addr(), "a.test", &ca_file, &[
            "--cert", scert.to_str().unwrap(), "--key", skey.to_str().unwrap()]);
        assert_eq!(code, "000", "a certificate the client CA did not sign must be refused");
        assert_eq!(origin.request_count(), 0);
        // A good certificate, and a spoofed header next to it.
        let (code, body) = curl_https(proxy.addr(), "a.test", &ca_file, &[
            "--cert", ccert.to_str().unwrap(), "--key", ckey.to_str().unwrap(),
            "-H", "X-Client-Subject: CN=admin"]);
        assert_eq!((code.as_str(), body.as_str()), ("200", "origin"));
        let rec = origin.last_request();
        assert_eq!(rec.header_all("x-client-subject"), vec!["CN=alice, O=Example"], "{}", rec.raw_head);
        assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
        // A CN chosen to read like another attribute is escaped (RFC 4514), so it never
        // reads as an O the backend would trust.
        let (bcert, bkey) = dir.write_leaf("bob", &client_ca.client("bob, O=Admin", "Example"));
        let (code, _) = curl_https(proxy.addr(), "a.test", &ca_file, &[
            "--cert", bcert.to_str().unwrap(), "--key", bkey.to_str().unwrap()]);
        assert_eq!(code, "200");
        let rec = origin.last_request();
        assert_eq!(rec.header_all("x-client-subject"), vec!["CN=bob\\, O=Admin, O=Example"], "{}", rec.raw_head);
    }

    fn optional_client_auth_still_strips_the_subject_header(engine) {
        let Site { ca: _ca, dir: _dir, ca_file, origin, config } = site(
            "mtls-opt",
            "client_auth = { ca = \"@CA@\", required = false, subject_header = \"X-Client-Subject\" }",
        );
        // A plain listener beside it, routing to the same backend.
        let mut config = config;
        config.listeners = 1;
        let proxy = config.start(engine);
        let (plain, tls) = (proxy.addrs()[0], proxy.addrs()[1]);
        let (code, _) = curl_https(tls, "a.test", &ca_file, &["-H", "X-Client-Subject: CN=admin"]);
        assert_eq!(code, "200");
        let rec = origin.last_request();
        assert!(rec.header("x-client-subject").is_none(), "a client-sent subject must never reach the backend: {}", rec.raw_head);
        // Nor through the plain listener, nor spelled with `_` (one field to CGI and WSGI).
        for spoof in ["X-Client-Subject: CN=admin", "X_Client_Subject: CN=admin", "x-client_subject: CN=admin"] {
            let mut c = Client::connect(plain);
            c.send(format!("GET / HTTP/1.1\r\nHost: a.test\r\n{spoof}\r\n\r\n").as_bytes());
            assert_eq!(c.read_response().status(), 200);
            let rec = origin.last_request();
            assert!(!rec.raw_head.contains("CN=admin"), "{spoof} reached the backend: {}", rec.raw_head);
        }
        let (_, _) = curl_https(tls, "a.test", &ca_file, &["-H", "X_Client_Subject: CN=admin"]);
        let rec = origin.last_request();
        assert!(!rec.raw_head.contains("CN=admin"), "over TLS: {}", rec.raw_head);
    }

    // What the proxy itself reads of the subject header (a route's `headers`, a
    // `header:` rate-limit key, the forward-auth check) is the verified subject, as the
    // backend gets it: a client's copy neither reaches a route or a check nor spends
    // another client's bucket.
    fn every_reader_of_the_subject_header_sees_the_verified_one(engine) {
        let ca = TestCa::new("test ca");
        let client_ca = TestCa::new("client ca");
        let dir = CertDir::new("mtls-readers");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let ca_file = dir.write("ca.pem", &ca.pem);
        let client_ca_file = dir.write("client-ca.pem", &client_ca.pem);
        let (ccert, ckey) = dir.write_leaf("alice", &client_ca.client("alice", "Example"));
        let alice = ["--cert", ccert.to_str().unwrap(), "--key", ckey.to_str().unwrap()];
        const ALICE: &str = "CN=alice, O=Example";
        let forged = ["-H", "X-Client-Subject: CN=alice, O=Example"];
        let (admin, main) = (Origin::start("admin"), Origin::start("main"));
        let auth = Origin::with_handler("auth", |rec| Reply::Response {
            status: if rec.header_all("x-client-subject") == [ALICE] { 200 } else { 403 },
            headers: vec![],
            body: b"auth".to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let extra = format!(
            "client_auth = {{ ca = \"{}\", required = false, subject_header = \"X-Client-Subject\" }}",
            client_ca_file.display()
        );
        let proxy = Config::new()
            .only_listener(&tls_listener(&[(&cert, &key)], &extra))
            .upstream("admin", &[admin.addr()])
            .upstream("main", &[main.addr()])
            .upstream("auth", &[auth.addr()])
            .route("admin", &format!("path_prefix = \"/who/\"\nheaders = {{ \"X-Client-Subject\" = \"{ALICE}\" }}"))
            .route("main", "path_prefix = \"/who/\"")
            .route("main", "path_prefix = \"/auth/\"\nauth = { forward = { upstream = \"auth\", uri = \"/check\" } }")
            .route("main", "path_prefix = \"/rl/\"\nrate_limit = { rate = 0.001, burst = 1, key = \"header:X-Client-Subject\" }")
            .start(engine);
        let at = |path: &str, extra: &[&str]| curl_https_at(proxy.addr(), "a.test", path, &ca_file, extra);
        // A route for alice's subject.
        assert_eq!(at("/who/", &forged), ("200".into(), "main".into()), "a forged subject routed as alice");
        assert_eq!(at("/who/", &alice), ("200".into(), "admin".into()), "alice's certificate missed her route");
        // The forward-auth check.
        assert_eq!(at("/auth/", &forged).0, "403", "a forged subject passed the check");
        assert_eq!(at("/auth/", &[&alice[..], &["-H", "X-Client-Subject: CN=admin"]].concat()).0, "200");
        let check = auth.last_request();
        assert_eq!(check.header_all("x-client-subject"), [ALICE], "{}", check.raw_head);
        // A bucket per verified subject (a request without one is not limited).
        assert_eq!(at("/rl/", &forged).0, "200");
        assert_eq!(at("/rl/", &forged).0, "200", "a forged subject has no bucket");
        assert_eq!(at("/rl/", &alice).0, "200", "alice's bucket was spent by a forged subject");
        assert_eq!(at("/rl/", &alice).0, "429", "alice's certificate had no bucket");
    }

    // ALPN: h2 and http/1.1 offered gets http/1.1; only http/1.0 (curl --http1.0) gets
    // http/1.0 (it was refused, found by the probe7 review); only h2 is refused, counted as
    // incompatible (it was counted as protocol).
    fn alpn_agrees_on_http1_and_refuses_h2_alone(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("alpn", "");
        let proxy = config.admin("").start(engine);
        let offering = |protocols: &[&[u8]]| {
            let mut c = ca.client_config();
            c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        for (offered, agreed) in [(&[&b"h2"[..], b"http/1.1"][..], &b"http/1.1"[..]), (&[&b"http/1.0"[..]][..], &b"http/1.0"[..])] {
            let seen = tls_get(proxy.addr(), &offering(offered), "a.test", "/").unwrap_or_else(|e| panic!("{offered:?}: {e}"));
            assert_eq!(seen.alpn.as_deref(), Some(agreed), "{offered:?}");
            assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        }
        assert!(tls_get(proxy.addr(), &offering(&[b"h2"]), "a.test", "/").is_err(), "h2 alone must be refused");
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the refusal counted", |m| {
            m.value("edgeshard_tls_handshake_failures_total", &[("reason", "incompatible")]) == 1.0
        });
    }

    fn stalled_handshake_is_closed_at_the_timeout(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("stall", "handshake_timeout = \"500ms\"");
        let proxy = config.admin("").start(engine);
        // Half a ClientHello record header, then nothing.
        let before = Instant::now();
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(&[0x16, 0x03, 0x01]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        let took = before.elapsed();
        assert!(matches!(r, Ok(0)) || r.is_err(), "expected a close, got {r:?}");
        assert!(took >= Duration::from_millis(500), "closed after {took:?}, before the timeout");
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_tls_handshake_failures_total", &[("reason", "timeout")]), 1.0);
        // The listener still serves.
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200"));
    }

    // Sockets that never send a ClientHello fill max_handshakes; a new client still gets its
    // handshake: the oldest in progress is ended to make room (it was refused before, for
    // the whole handshake timeout).
    fn silent_sockets_at_max_handshakes_do_not_lock_new_clients_out(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } =
            site("cap", "max_handshakes = 4, handshake_timeout = \"60s\"");
        let proxy = config.admin("").start(engine);
        let mut silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "8 silent sockets taken in", |m| {
            m.value("edgeshard_tls_handshake_failures_total", &[("reason", "overload")]) == 4.0
                && m.value("edgeshard_tls_handshakes_in_progress", &[]) == 4.0
        });
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        // The oldest were the ones ended.
        let mut buf = [0u8; 8];
        for s in &mut silent[..4] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("an old silent socket is still open: {other:?}"),
            }
        }
    }

    // At a connection limit an idle TLS keep-alive connection makes room like a parked plain
    // one (it waits in its own task, not in the parking lot, and was never reclaimed: two
    // idle TLS clients locked every new one out for client_idle).
    fn idle_tls_connections_make_room_at_the_connection_limit(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("room", "");
        let proxy = config.limit("max_connections_per_shard", "2").admin("").start(engine);
        let config = Arc::new(ca.client_config());
        let mut idle: Vec<_> = (0..2)
            .map(|_| {
                let conn = rustls::ClientConnection::new(config.clone(), "a.test".try_into().unwrap()).unwrap();
                let sock = TcpStream::connect(proxy.addr()).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                tls.write_all(b"GET /idle HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).unwrap();
                    assert!(n > 0, "closed before a response");
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
                tls
            })
            .collect();
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "two idle TLS connections", |m| {
            m.value("edgeshard_connections_idle", &[]) == 2.0
        });
        let seen = tls_get(proxy.addr(), &config, "a.test", "/new").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        // The older one was closed (its unread response body, if any, comes first).
        let mut rest = Vec::new();
        let end = idle[0].read_to_end(&mut rest);
        assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof), "{end:?}");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 1.0);
        assert_eq!(m.value("edgeshard_connections_rejected_total", &[("reason", "max_connections_per_shard")]), 0.0);
        drop(idle);
    }

    // `max_handshakes` is per listener: connections to one with a small cap end only that
    // listener's oldest handshakes, not those of another (they ended every one of them).
    fn a_small_handshake_cap_ends_only_its_own_listeners_handshakes(engine) {
        let Site { ca: _ca, dir, ca_file: _ca_file, origin: _origin, config: mut cfg } =
            site("cap2", "max_handshakes = 4, handshake_timeout = \"60s\"");
        let (cert, key) = (dir.path("a.pem"), dir.path("a.key"));
        cfg.raw_listeners.push(tls_listener(&[(&cert, &key)], "max_handshakes = 1, handshake_timeout = \"60s\""));
        let proxy = cfg.admin("").start(engine);
        let (big, small) = (proxy.addrs()[0], proxy.addrs()[1]);
        let _public: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(big).unwrap()).collect();
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "3 silent sockets taken in", |m| {
            m.value("edgeshard_tls_handshakes_in_progress", &[]) == 3.0
        });
        let _other: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(small).unwrap()).collect();
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "one handshake ended", |m| {
            m.value("edgeshard_tls_handshake_failures_total", &[("reason", "overload")]) >= 1.0
        });
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_tls_handshake_failures_total", &[("reason", "overload")]), 1.0);
        assert_eq!(m.value("edgeshard_tls_handshakes_in_progress", &[]), 4.0);
    }

    // A TLS client that asked for the close and sent more: the close lingers as on plain
    // connections (it was close_notify and a drop, and the kernel's reset, answering the
    // unread bytes, destroyed the end of the response still in the send buffer). Twice, as
    // in keepalive.rs: the bytes sent while the response is under way, the client reading
    // once the proxy let go; then sent once it was all queued (the proxy had seen nothing
    // more, and the close waits on the response in flight), the client reading at once.
    fn bytes_sent_after_asking_for_the_close_do_not_reset_a_tls_response(engine) {
        const LEN: usize = 400_000;
        for queued in [false, true] {
            let Site { ca, dir: _dir, ca_file: _ca_file, origin, config } = site("more", "");
            let config = if queued { config.timeout("lingering_timeout", "20s") } else { config };
            let proxy = config.admin("").start(engine);
            let sock = small_window_client(proxy.addr());
            let conn = rustls::ClientConnection::new(Arc::new(ca.client_config()), "a.test".try_into().unwrap()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let first = format!("GET /gen/{LEN}/cl HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
            tls.write_all(first.as_bytes()).unwrap();
            let then = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
            let ended = |m: &Metrics| m.value("edgeshard_connections_active", &[]) == 0.0;
            let what = if queued { "queued" } else { "under way" };
            if queued {
                // After the proxy's half-close (close_notify, then the TCP one), so after its
                // look for unread bytes, as in keepalive.rs.
                let client = tls.get_ref().local_addr().unwrap();
                wait_proxy_half_closed(proxy.addr(), client, Duration::from_secs(10));
                tls.write_all(then).unwrap();
                read_whole_response(&mut tls, LEN, what);
                scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the connection ended", ended);
            } else {
                assert!(origin.wait_for(Duration::from_secs(10), |o| !o.requests.is_empty()));
                tls.write_all(then).unwrap();
                scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "the connection ended", ended);
                read_whole_response(&mut tls, LEN, what);
            }
        }
    }

    fn https_scheme_hsts_and_redirect(engine) {
        let Site { ca, dir: _dir, ca_file: _ca_file, origin, config: mut cfg } = site("scheme", "hsts = \"max-age=31536000\"");
        cfg.raw_listeners.push("address = \"127.0.0.1:0\"\nredirect_https = { port = 8443, status = 308 }".into());
        let cfg = cfg.route_without_upstream("path = \"/robots.txt\"\nrespond = { body = \"no\" }");
        let cfg = cfg.route("main", "path_prefix = \"/private/\"\ndeny = [\"127.0.0.0/8\"]");
        let proxy = cfg.start(engine);
        let (tls_addr, plain_addr) = (proxy.addrs()[0], proxy.addrs()[1]);
        // The proxy's own refusals and errors carry it as well (nginx's `add_header ...
        // always`; operator review, session 13): a 403 and a 400.
        let seen = tls_get(tls_addr, &Arc::new(ca.client_config()), "a.test", "/private/x").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 403 "), "{}", seen.response);
        assert!(seen.response.contains("\r\nStrict-Transport-Security: max-age=31536000\r\n"), "{}", seen.response);
        let seen = tls_get(tls_addr, &Arc::new(ca.client_config()), "a.test", "/%zz").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 400 "), "{}", seen.response);
        assert!(seen.response.contains("\r\nStrict-Transport-Security: max-age=31536000\r\n"), "{}", seen.response);
        let seen = tls_get(tls_addr, &Arc::new(ca.client_config()), "a.test", "/p?q=1").unwrap();
        assert!(seen.response.contains("\r\nStrict-Transport-Security: max-age=31536000\r\n"), "{}", seen.response);
        // A route's own answer carries it too.
        let seen = tls_get(tls_addr, &Arc::new(ca.client_config()), "a.test", "/robots.txt").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200 "), "{}", seen.response);
        assert!(seen.response.contains("\r\nStrict-Transport-Security: max-age=31536000\r\n"), "{}", seen.response);
        let rec = origin.last_request();
        assert_eq!(rec.header("x-forwarded-proto"), Some("https"));
        assert_eq!(rec.target, "/p?q=1");
        // The plain listener redirects, keeping host and target.
        let mut c = Client::connect(plain_addr);
        c.send(b"POST /p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 0\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 308);
        assert_eq!(r.header("location"), Some("https://a.test:8443/p?q=1"));
        assert!(r.header("strict-transport-security").is_none());
        // An invalid Host is refused behind an absolute-form target too (RFC 9112 §3.2).
        let mut c = Client::connect(plain_addr);
        c.send(b"GET http://a.test/x HTTP/1.1\r\nHost: x y\r\n\r\n");
        assert_eq!(c.read_response().status(), 400, "an invalid Host");
        let mut c = Client::connect(plain_addr);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.read_response().status(), 400, "no Host: nothing to redirect to");
        // CONNECT names no resource: refused as on any listener, not redirected.
        let mut c = Client::connect(plain_addr);
        c.send(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n");
        assert_eq!(c.read_response().status(), 405);
        // `OPTIONS *` is about the server: its redirect names the root, not `/*`.
        let mut c = Client::connect(plain_addr);
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 308);
        assert_eq!(r.header("location"), Some("https://a.test:8443/"));
        assert_eq!(origin.request_count(), 1, "redirects never reach the backend");
    }

    fn large_bodies_both_ways_over_tls(engine) {
        let Site { ca: _ca, dir, ca_file, origin, config } = site("bodies", "");
        let proxy = config.start(engine);
        let body = dir.path("up.bin");
        std::fs::write(&body, pattern_vec(3 << 20)).unwrap();
        let upload = format!("@{}", body.display());
        let (code, _) = curl_https(proxy.addr(), "a.test", &ca_file, &["--data-binary", &upload, "-H", "Content-Type: application/octet-stream"]);
        assert_eq!(code, "200");
        let rec = origin.last_request();
        assert_eq!((rec.body_len, rec.pattern_mismatch), (3 << 20, None));
        // 4 MiB down, chunked and with a length, hashed by curl's output file.
        for mode in ["cl", "chunked"] {
            let out = dir.path(&format!("down-{mode}.bin"));
            let resolve = format!("a.test:{}:127.0.0.1", proxy.addr().port());
            let status = Command::new("curl")
                .args(["-sS", "--max-time", "20", "--cacert"]).arg(&ca_file)
                .args(["--resolve", &resolve, "-o"]).arg(&out)
                .arg(format!("https://a.test:{}/gen/{}/{mode}", proxy.addr().port(), 4 << 20))
                .status().unwrap();
            assert!(status.success());
            let got = std::fs::read(&out).unwrap();
            assert_eq!(sha256_hex(&got), expected_sha256(4 << 20), "{mode}");
        }
    }

    fn a_client_with_a_tiny_window_gets_every_byte_of_a_large_response(engine) {
        // 16 MiB through a 4 KiB receive window: more than the kernel's buffers hold, so the
        // proxy's records meet a full socket (sendmsg answers EAGAIN) again and again and
        // must wait for it, then go on from the right byte.
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("window", "");
        let proxy = config.start(engine);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&proxy.addr().into()).unwrap();
        let sock: TcpStream = sock.into();
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ClientConnection::new(
            Arc::new(ca.client_config()),
            "a.test".try_into().unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let len: usize = 16 << 20;
        write!(tls, "GET /gen/{len}/cl HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = Vec::with_capacity(len + 4096);
        let mut piece = [0u8; 1024];
        loop {
            match tls.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&piece[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("read failed after {} bytes: {e}", all.len()),
            }
        }
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        assert!(all.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&all[..at]));
        assert_eq!(all.len() - at, len);
        assert_eq!(sha256_hex(&all[at..]), expected_sha256(len as u64));
    }

    fn a_session_never_resumes_past_a_client_certificate_check(engine) {
        // Two listeners with one certificate: 0 asks for no client certificate, 1 requires
        // one from the client CA. A session made on 0 must not resume on 1 (rustls does not
        // check a resumed session against the verifier again); and after a reload that swaps
        // the client CA file's contents (same path), a session made under the old CA must
        // not resume either, nor may the old CA's certificate make a new one.
        let ca = TestCa::new("test ca");
        let client_ca = TestCa::new("client ca");
        let other_ca = TestCa::new("other client ca");
        let dir = CertDir::new("mtls-resume");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let client_ca_file = dir.write("client-ca.pem", &client_ca.pem);
        let origin = Origin::start("origin");
        let open = tls_listener(&[(&cert, &key)], "");
        let strict = tls_listener(&[(&cert, &key)], &format!("client_auth = {{ ca = \"{}\", required = true }}", client_ca_file.display()));
        let proxy = Config::single(origin.addr()).only_listeners(&[&open, &strict]).admin("").start(engine);
        let (plain_addr, mtls_addr) = (proxy.addrs()[0], proxy.addrs()[1]);

        // No client certificate: a session on the open listener, then the strict one.
        let anon = Arc::new(ca.client_config());
        assert!(tls_get(plain_addr, &anon, "a.test", "/").is_ok());
        assert!(tls_get(plain_addr, &anon, "a.test", "/").unwrap().resumed, "resumes where it was made");
        let crossed = tls_get(mtls_addr, &anon, "a.test", "/");
        assert!(crossed.is_err(), "a session without a certificate resumed past client_auth: {:?}", crossed.map(|s| s.response));
        assert_eq!(origin.request_count(), 2, "nothing reached the backend through the strict listener");

        // alice's certificate from the client CA: a session on the strict listener.
        let alice = client_ca.client("alice", "Example");
        let with_cert = Arc::new(ca.client_config_with(&alice));
        assert!(tls_get(mtls_addr, &with_cert, "a.test", "/").is_ok());
        assert!(tls_get(mtls_addr, &with_cert, "a.test", "/").unwrap().resumed);
        // The client CA file now holds another CA; reloaded.
        std::fs::write(&client_ca_file, &other_ca.pem).unwrap();
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let before = origin.request_count();
        let resumed = tls_get(mtls_addr, &with_cert, "a.test", "/");
        assert!(resumed.is_err(), "a session made under the old CA resumed: {:?}", resumed.map(|s| s.response));
        let fresh = tls_get(mtls_addr, &Arc::new(ca.client_config_with(&alice)), "a.test", "/");
        assert!(fresh.is_err(), "the old CA's certificate was accepted after the reload");
        assert_eq!(origin.request_count(), before);
    }

    fn a_response_that_closes_the_connection_ends_with_close_notify(engine) {
        // RFC 8446 §6.1; and an HTTP/1.0 client's close-delimited body is complete only with
        // it (RFC 9112 §9.8): rustls reports a bare TCP close as UnexpectedEof.
        let Site { ca, dir: _dir, ca_file: _ca_file, origin: _origin, config } = site("close-notify", "");
        let proxy = config.start(engine);
        let cfg = Arc::new(ca.client_config());
        for req in ["GET / HTTP/1.0\r\nHost: a.test\r\n\r\n", "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"] {
            let conn = rustls::ClientConnection::new(cfg.clone(), "a.test".try_into().unwrap()).unwrap();
            let sock = std::net::TcpStream::connect(proxy.addr()).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            std::io::Write::write_all(&mut tls, req.as_bytes()).unwrap();
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut tls, &mut out)
                .unwrap_or_else(|e| panic!("{req:?}: not ended by close_notify: {e}"));
            assert!(out.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&out));
        }
    }

    fn a_response_cut_short_ends_without_close_notify(engine) {
        // The backend sends a close-delimited body, then resets: the HTTP/1.0 client (whose
        // body's end is the connection's) must not see close_notify, which would make the
        // cut body look complete.
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("cut-notify");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = crate::support::read_head_bytes(&mut s);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial");
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        });
        let proxy = Config::single(backend).only_listener(&tls_listener(&[(&cert, &key)], "")).start(engine);
        let conn = rustls::ClientConnection::new(Arc::new(ca.client_config()), "a.test".try_into().unwrap()).unwrap();
        let sock = TcpStream::connect(proxy.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let end = tls.read_to_end(&mut out);
        let e = end.expect_err("a cut body ended with close_notify, as if complete");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
}
