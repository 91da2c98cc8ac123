//! Passive checks (`[upstream.outlier]`, per shard): a hanging backend, consecutive 503s,
//! `max_ejection_percent`.

use super::*;

/// A backend that accepts and reads requests but never answers.
fn hanging(name: &str) -> Origin {
    Origin::with_handler(name, |_| Reply::Hang)
}

both_engines! {
    fn hanging_backend_is_skipped_by_per_try_timeout_and_ejected(engine) {
        let hang = hanging("hang");
        let ok = Origin::start("ok");
        let up = format!(
            "balance = \"round_robin\"\n{}\n\
             [upstream.retry]\nattempts = 2\non = [\"timeout\", \"reset\", \"503\"]\nper_try_timeout = \"300ms\"\n\
             [upstream.outlier]\nconsecutive = 2\non = [\"timeout\"]\nbase_ejection = \"30s\"\nmax_ejection = \"30s\"\nmax_ejection_percent = 50\n",
            backends(&[hang.addr(), ok.addr()])
        );
        let proxy = Proxy::start(&config(true, &up), engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..12 {
            let t = Instant::now();
            let r = ask(&mut c, &format!("/{i}"));
            assert_eq!(served_by(&r), "ok", "request {i}");
            // One try at most waits for the hanging backend: 300 ms. Without per_try_timeout it
            // would wait upstream_response (30 s, the default); 5 s is over 10x the 300 ms.
            assert!(t.elapsed() < Duration::from_secs(5), "request {i} took {:?}", t.elapsed());
        }
        assert_eq!(
            hang.request_count(),
            2,
            "consecutive = 2 timeouts eject the hanging backend; it got {} requests",
            hang.request_count()
        );
        assert_eq!(ok.request_count(), 12);
        let b = hang.addr().to_string();
        let labels = [("upstream", "app"), ("backend", b.as_str())];
        assert_eq!(metric(&proxy, "edgeshard_backend_ejections_total", &labels), 1.0);
    }

    fn consecutive_503s_eject_a_backend_for_base_ejection(engine) {
        let bad = answering("bad", 503);
        let g1 = Origin::start("g1");
        let g2 = Origin::start("g2");
        let base = Duration::from_secs(2);
        let up = format!(
            "balance = \"round_robin\"\n{}\n\
             [upstream.retry]\nattempts = 1\n\
             [upstream.outlier]\nconsecutive = 3\non = [\"503\"]\nbase_ejection = \"2s\"\nmax_ejection = \"10s\"\nmax_ejection_percent = 50\n",
            backends(&[bad.addr(), g1.addr(), g2.addr()])
        );
        let proxy = Proxy::start(&config(false, &up), engine);
        let mut c = Client::connect(proxy.addr());
        // Round robin: every third request reaches `bad`, whose 503 the client gets (no
        // retries). The third one ejects it.
        // The ejection happens while the third 503 is handled: after `sent` (taken before that
        // request) and before `ejected_at` (taken once its response is in). Time windows that
        // must lie inside the ejection start from the later one and end relative to the
        // earlier one, so client-side delays can only make them narrower.
        let mut ejected = None;
        for i in 0..9 {
            let sent = Instant::now();
            let r = ask(&mut c, &format!("/a/{i}"));
            if backend_of(&r).as_deref() == Some("bad") {
                assert_eq!(r.status(), 503);
                if bad.request_count() == 3 {
                    ejected = Some((sent, Instant::now()));
                }
            } else {
                served_by(&r);
            }
        }
        let (sent, ejected_at) = ejected.expect("9 round-robin requests give `bad` its 3 requests");
        // While ejected: no traffic to it.
        let mut n = 0;
        while sent.elapsed() < base - Duration::from_millis(300) && n < 40 {
            assert_ne!(served_by(&ask(&mut c, &format!("/b/{n}"))), "bad");
            n += 1;
        }
        // One round-robin cycle (3 requests) would reach `bad` were it not ejected: that is
        // all the window needs to hold, however slow the host.
        assert!(n >= 3, "only {n} requests fit in the ejection window");
        assert_eq!(bad.request_count(), 3, "an ejected backend gets no requests");
        // After base_ejection it is picked again (and answers 503 again).
        let mut i = 0;
        loop {
            let r = ask(&mut c, &format!("/c/{i}"));
            if backend_of(&r).as_deref() == Some("bad") {
                break;
            }
            // Requests are the probe: the loop ends when `bad` answers one, or at the deadline.
            assert!(ejected_at.elapsed() < base + Duration::from_secs(3), "`bad` never came back");
            i += 1;
        }
        // Picked again no earlier than base_ejection after the ejection, hence after `sent`.
        let back = sent.elapsed();
        assert!(back >= base - Duration::from_millis(20), "back after {back:?}, before base_ejection = 2s");
    }

    fn max_ejection_percent_keeps_half_the_backends_in_rotation(engine) {
        let o: Vec<Origin> = ["b0", "b1", "b2", "b3"].iter().map(|n| answering(n, 503)).collect();
        let addrs: Vec<SocketAddr> = o.iter().map(|x| x.addr()).collect();
        let up = format!(
            "balance = \"round_robin\"\n{}\n\
             [upstream.retry]\nattempts = 1\n\
             [upstream.outlier]\nconsecutive = 1\non = [\"5xx\"]\nbase_ejection = \"30s\"\nmax_ejection = \"30s\"\nmax_ejection_percent = 50\n",
            backends(&addrs)
        );
        let proxy = Proxy::start(&config(true, &up), engine);
        let mut c = Client::connect(proxy.addr());
        let mut last = Vec::new();
        for i in 0..40 {
            let r = ask(&mut c, &format!("/{i}"));
            // Every backend fails, yet half of them stay in rotation: the client always gets
            // a backend's 503, never the proxy's "no backend usable".
            assert_eq!(r.status(), 503);
            let who = backend_of(&r).unwrap_or_else(|| panic!("request {i} got the proxy's own 503: the floor was not kept"));
            if i >= 20 {
                last.push(who);
            }
        }
        let mut kept: Vec<&String> = last.iter().collect();
        kept.sort();
        kept.dedup();
        assert_eq!(kept.len(), 2, "50% of 4 backends may be ejected: 2 stay; the last 20 went to {last:?}");
        let m = |name: &str| -> f64 {
            addrs.iter().map(|a| {
                let a = a.to_string();
                metric(&proxy, name, &[("upstream", "app"), ("backend", a.as_str())])
            }).sum()
        };
        assert_eq!(m("edgeshard_backend_ejections_total"), 2.0);
        assert!(m("edgeshard_backend_ejections_suppressed_total") >= 2.0);
    }

    fn max_ejection_percent_counts_backends_out_of_rotation_otherwise(engine) {
        // Two backends, 50 %: b0 is drained, b1 answers 503. Ejecting b1 would leave no
        // backend in rotation: the floor holds it, and the client keeps getting b1's answer.
        // (Only this shard's ejections were counted, so b1's first 503 ejected it and every
        // later request got the proxy's own 503 for base_ejection.)
        let b0 = Origin::start("b0");
        let b1 = answering("b1", 503);
        let up = format!(
            "balance = \"round_robin\"\n{}\n\
             [upstream.retry]\nattempts = 1\n\
             [upstream.outlier]\nconsecutive = 1\non = [\"5xx\"]\nbase_ejection = \"30s\"\nmax_ejection = \"30s\"\nmax_ejection_percent = 50\n",
            backends(&[b0.addr(), b1.addr()])
        );
        let proxy = Proxy::start(&config(true, &up), engine);
        let drain = format!("/upstreams/app/backends/{}/drain", b0.addr());
        assert_eq!(admin_post(proxy.admin_addr(), &drain, None).status, 200);
        for i in 0..6 {
            let r = ask_new(proxy.addr(), &format!("/{i}"));
            assert_eq!(r.status(), 503);
            assert_eq!(backend_of(&r).as_deref(), Some("b1"), "request {i} got the proxy's own 503");
        }
        assert_eq!(b0.request_count(), 0, "drained");
    }
}
