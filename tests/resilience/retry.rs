//! Retries (`[upstream.retry]`, default attempts = 2 on connect-failure, reset, 503): only
//! idempotent requests without a body, only to an untried backend, within `attempts` and the
//! budget. Round robin on one shard starts at the first backend, so the first request of a
//! fresh proxy goes to backend `a`.

use super::*;

fn post(target: &str, body: &str) -> Vec<u8> {
    let len = body.len().to_string();
    request(
        "POST",
        target,
        &[("Host", "t"), ("Content-Length", &len)],
        body.as_bytes(),
    )
}

fn two(a: SocketAddr, b: SocketAddr, retry: &str) -> String {
    format!("balance = \"round_robin\"\n{}\n{retry}", backends(&[a, b]))
}

/// Retries granted and denied by the upstream's budget.
fn budget(proxy: &Proxy) -> (f64, f64) {
    let m = |r: &str| {
        metric(
            proxy,
            "edgeshard_retry_budget_total",
            &[("upstream", "app"), ("result", r)],
        )
    };
    (m("granted"), m("denied"))
}

both_engines! {
    fn a_retry_onto_a_pooled_connection_reads_its_response(engine) {
        // The first try's read buffer is kept for the retry; on io_uring the pooled
        // connection to `b` has a receive posted on it (src/bufring.rs), which the retry must
        // await: a read of its own next to it found nothing (the receive took the response)
        // and timed out (found by review).
        let a = answering("a", 503);
        let b = Origin::start("b");
        let retry = "[upstream.retry]\nattempts = 2\non = [\"503\"]\nbudget = 1.0\nper_try_timeout = \"2s\"";
        let proxy = Proxy::start(&config(true, &two(a.addr(), b.addr(), retry)), engine);
        for i in 0..8 {
            let r = ask_new(proxy.addr(), &format!("/{i}"));
            assert_eq!(served_by(&r), "b", "request {i}");
        }
        assert!(a.request_count() >= 2, "some requests went to a first: {}", a.request_count());
        assert!(
            metric(&proxy, "edgeshard_pool_hits_total", &[]) >= 1.0,
            "some retries found b's connection pooled"
        );
    }

    fn get_answered_503_is_retried_on_the_other_backend(engine) {
        let a = answering("a", 503);
        let b = Origin::start("b");
        let proxy = Proxy::start(&config(true, &two(a.addr(), b.addr(), "")), engine);
        let r = ask_new(proxy.addr(), "/x");
        assert_eq!(served_by(&r), "b", "the default policy retries a 503 on another backend");
        assert_eq!((a.request_count(), b.request_count()), (1, 1), "each backend saw the request once");
        assert_eq!(budget(&proxy), (1.0, 0.0));
    }

    fn get_reset_is_retried_on_the_other_backend(engine) {
        let a = Misbehave::start(Misbehaviour::ResetOnRequest);
        let b = Origin::start("b");
        let proxy = Proxy::start(&config(false, &two(a.addr(), b.addr(), "")), engine);
        let r = ask_new(proxy.addr(), "/x");
        assert_eq!(served_by(&r), "b", "a reset before the response head is retried");
        assert_eq!((a.accepted(), b.request_count()), (1, 1));
    }

    fn request_with_a_body_is_never_sent_to_a_second_backend(engine) {
        let a = answering("a", 503);
        let b = Origin::start("b");
        let retry = "[upstream.retry]\nattempts = 3\non = [\"reset\", \"timeout\", \"503\", \"502\"]\nbudget = 1.0";
        let proxy = Proxy::start(&config(false, &two(a.addr(), b.addr(), retry)), engine);
        // POST, and also PUT (idempotent, but its body was streamed to `a` and is gone).
        for (i, method) in ["POST", "PUT"].iter().enumerate() {
            let b_before = b.request_count();
            let mut c = Client::connect(proxy.addr());
            let body = format!("payload {i}");
            let len = body.len().to_string();
            c.send(&request(method, "/submit", &[("Host", "t"), ("Content-Length", &len)], body.as_bytes()));
            let r = c.read_response();
            assert_eq!(r.status(), 503, "{method}: the client gets a's own 503; got:\n{}", r.head.raw);
            assert_eq!(backend_of(&r).as_deref(), Some("a"), "{method}: the 503 is a's, unchanged");
            assert_eq!(a.last_request().body, body.as_bytes(), "{method}: a got the body");
            assert_eq!(b.request_count(), b_before, "{method} with a body was sent to a second backend");
            // Round robin moves on: send one GET to b so that the next request goes to a.
            if i == 0 {
                assert_eq!(served_by(&ask(&mut c, "/turn")), "b");
            }
        }
        assert_eq!(b.request_count(), 1, "only the GET reached b");
    }

    fn post_reset_by_the_backend_gets_502_and_no_second_backend(engine) {
        let a = Misbehave::start(Misbehaviour::ResetOnRequest);
        let b = Origin::start("b");
        let proxy = Proxy::start(&config(false, &two(a.addr(), b.addr(), "")), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post("/submit", "hello"));
        let r = c.read_response();
        assert_eq!(r.status(), 502, "a reset after the body was sent: 502; got:\n{}", r.head.raw);
        assert_eq!(a.accepted(), 1);
        assert_eq!(b.request_count(), 0, "a POST that reached a backend is never sent to another");
    }

    fn attempts_1_disables_retries(engine) {
        let a = answering("a", 503);
        let b = Origin::start("b");
        let proxy = Proxy::start(&config(false, &two(a.addr(), b.addr(), "[upstream.retry]\nattempts = 1")), engine);
        let r = ask_new(proxy.addr(), "/x");
        assert_eq!(r.status(), 503);
        assert_eq!(backend_of(&r).as_deref(), Some("a"), "the backend's 503 as it sent it");
        assert_eq!(b.request_count(), 0);
    }

    fn exhausted_retries_give_504_after_timeouts_and_502_after_resets(engine) {
        let h1 = Origin::with_handler("h1", |_| Reply::Hang);
        let h2 = Origin::with_handler("h2", |_| Reply::Hang);
        let retry = "[upstream.retry]\nattempts = 2\non = [\"timeout\"]\nper_try_timeout = \"300ms\"\ntotal_timeout = \"10s\"";
        let proxy = Proxy::start(&config(false, &two(h1.addr(), h2.addr(), retry)), engine);
        let t = Instant::now();
        let r = ask_new(proxy.addr(), "/slow");
        assert_eq!(r.status(), 504, "both tries timed out; got:\n{}", r.head.raw);
        assert_eq!((h1.request_count(), h2.request_count()), (1, 1));
        // Two tries of per_try_timeout = 300 ms: at least 600 ms (t is taken before the
        // request); well under total_timeout = 10 s, which a proxy ignoring per_try_timeout
        // would wait for (6 s: 10x the expected time, still 4 s short of it).
        assert!(t.elapsed() >= Duration::from_millis(600 - 20), "two tries of 300 ms; took {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(6), "per_try_timeout not applied? took {:?}", t.elapsed());

        let r1 = Misbehave::start(Misbehaviour::ResetOnRequest);
        let r2 = Misbehave::start(Misbehaviour::ResetOnRequest);
        let proxy = Proxy::start(&config(false, &two(r1.addr(), r2.addr(), "")), engine);
        let r = ask_new(proxy.addr(), "/x");
        assert_eq!(r.status(), 502, "both tries reset; got:\n{}", r.head.raw);
        assert_eq!((r1.accepted(), r2.accepted()), (1, 1));
    }

    fn retry_budget_caps_retries_under_failure(engine) {
        // Every request fails with 503 at both backends and wants one retry. With budget = 0
        // and min_retries_per_sec = 1 the 10 s window allows 1 x 10 = 10 retries in all: the
        // 40 requests make at most 40 + 10 tries. With budget = 1.0 every request retries.
        for (budget_ratio, want_granted) in [(0.0, None), (1.0, Some(40.0))] {
            let a = answering("a", 503);
            let b = answering("b", 503);
            let retry = format!(
                "[upstream.retry]\nattempts = 2\non = [\"503\"]\nbudget = {budget_ratio:.1}\nmin_retries_per_sec = 1\nbudget_window = \"10s\""
            );
            let proxy = Proxy::start(&config(true, &two(a.addr(), b.addr(), &retry)), engine);
            let mut c = Client::connect(proxy.addr());
            for i in 0..40 {
                let r = ask(&mut c, &format!("/{i}"));
                assert_eq!(r.status(), 503);
                assert!(backend_of(&r).is_some(), "the last try's 503, from a backend");
            }
            let tries = a.request_count() + b.request_count();
            let (granted, denied) = budget(&proxy);
            assert_eq!(granted + denied, 40.0, "budget {budget_ratio}: each request asked once");
            assert_eq!(tries as f64, 40.0 + granted, "budget {budget_ratio}: a try per request plus one per retry");
            match want_granted {
                // The reserve is spent by the first 10 requests, then every retry is denied
                // (the test is far shorter than the window, so no bucket expires).
                None => assert_eq!(granted, 10.0, "budget 0, 1 retry/s over a 10 s window: 10 retries in all"),
                Some(g) => assert_eq!(granted, g, "budget 1.0: every request retries"),
            }
        }
    }

    fn a_retry_the_budget_refuses_leaves_the_balancer_alone(engine) {
        // `a` resets every request, `b` answers; no budget at all, so no retry is granted.
        // Round robin still alternates first tries: half the requests reach `b`. (A refused
        // retry used to move the cursor to `b` first, so every first try went to `a`: 502s
        // only, `b` idle.)
        let a = Misbehave::start(Misbehaviour::ResetOnRequest);
        let b = Origin::start("b");
        let retry = "[upstream.retry]\nbudget = 0.0\nmin_retries_per_sec = 0";
        let proxy = Proxy::start(&config(true, &two(a.addr(), b.addr(), retry)), engine);
        let mut served = 0;
        for i in 0..20 {
            let r = ask_new(proxy.addr(), &format!("/{i}"));
            match r.status() {
                200 => {
                    assert_eq!(served_by(&r), "b");
                    served += 1;
                }
                s => assert_eq!(s, 502, "a reset, not retried"),
            }
        }
        assert_eq!(served, 10, "every other first try goes to b");
        assert_eq!((a.accepted(), b.request_count()), (10, 10));
        assert_eq!(budget(&proxy), (0.0, 10.0), "each of a's resets asked once and was refused");
    }

    fn a_granted_retry_leaves_the_balancer_alone(engine) {
        // `a` answers 503 to everything, `b` answers; the default policy retries each of a's
        // 503s on b. Round robin still alternates first tries: a sees only every other
        // request. (The retry's pick used to move the cursor from b back to a, so every
        // first try went to a: each request paid a's 503 and a retry.)
        let a = answering("a", 503);
        let b = Origin::start("b");
        let proxy = Proxy::start(&config(true, &two(a.addr(), b.addr(), "")), engine);
        for i in 0..20 {
            let r = ask_new(proxy.addr(), &format!("/{i}"));
            assert_eq!(served_by(&r), "b", "request {i}");
        }
        assert_eq!(
            (a.request_count(), b.request_count()),
            (10, 20),
            "a gets every other first try, b the rest and a's retries"
        );
    }

    fn a_refusal_is_counted_only_when_the_retry_had_somewhere_to_go(engine) {
        // One backend, answering 503: a retry would need another backend, so the budget is
        // never the reason there is none, and counts nothing.
        let a = answering("a", 503);
        let retry = "[upstream.retry]\nbudget = 0.0\nmin_retries_per_sec = 0";
        let proxy = Proxy::start(
            &config(true, &format!("balance = \"round_robin\"\n{}\n{retry}", backends(&[a.addr()]))),
            engine,
        );
        for i in 0..5 {
            assert_eq!(ask_new(proxy.addr(), &format!("/{i}")).status(), 503);
        }
        assert_eq!(budget(&proxy), (0.0, 0.0));
    }
}
