//! Rate limits across hosts (issue 16): two edgeshard processes sharing one real Redis server
//! (`rate_limits.store`, with a password, as managed Redis servers require) admit, together,
//! within 10 % of one rate; with Redis stopped they keep serving, each on its own bucket, and
//! count the failed syncs. A wrong password is a failed sync, logged with Redis's reason.

use crate::rate_limits::hammer;
use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, on a free loopback port, no persistence, with the
/// password [`PASSWORD`].
struct Redis {
    child: Child,
    addr: SocketAddr,
}

const PASSWORD: &str = "s3cret:@pw";

impl Redis {
    fn start() -> Redis {
        // The port is found free a moment before Redis binds it: on a clash Redis exits and
        // another port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--requirepass",
                    PASSWORD,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (tests/run.sh installs it)");
            let mut r = Redis {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            if r.wait_ready(Duration::from_secs(10)) {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Until it answers PING (or exits, or the deadline passes).
    fn wait_ready(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                // Before AUTH, a server that is up refuses: `-NOAUTH ...`.
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"-NOAUTH"
                {
                    return true;
                }
            }
            std::thread::yield_now();
        }
        false
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn syncs(proxy: &Proxy, result: &str) -> f64 {
    scrape(proxy.admin_addr(), None).value(
        "edgeshard_rate_limit_store_syncs_total",
        &[("result", result)],
    )
}

both_engines! {
    fn two_processes_sharing_redis_admit_one_rate_and_fall_back_when_it_stops(engine) {
        const RATE: f64 = 100.0;
        const BURST: f64 = 10.0;
        let origin = Origin::start("o");
        let mut redis = Redis::start();
        let config = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", &format!("rate_limit = {{ rate = {RATE}, burst = {BURST} }}"))
            .section("rate_limits", &format!("store = \"redis://:s3cret%3A%40pw@{}\"\nsync_interval = \"50ms\"", redis.addr))
            .admin("");
        let (a, b) = (config.start(engine), config.start(engine));

        // Together: one rate.
        let (ok, refused, secs) = hammer(&[&a, &b], 8, Duration::from_secs(4));
        let received = origin.request_count() as f64;
        assert_eq!(received as usize, ok);
        // One burst per process before the first sync, and the rate over the run and the last
        // sync interval (each bucket learns of the other's spending that late).
        let expected = 2.0 * BURST + RATE * (secs + 0.05);
        let error = (received - expected) / expected;
        eprintln!("shared store: admitted {received} in {secs:.2} s, expected {expected:.0} ({:+.1} %), {refused} refused", error * 100.0);
        assert!(
            error.abs() < 0.10,
            "two processes admitted {received} in {secs:.2} s, expected {expected:.0} ({:+.1} %); {refused} refused",
            error * 100.0
        );
        for p in [&a, &b] {
            assert!(syncs(p, "ok") > 0.0, "the store was used");
        }

        // Redis stops: each process keeps serving on its own bucket, and says so.
        redis.stop();
        for p in [&a, &b] {
            scrape_until(p.admin_addr(), None, Duration::from_secs(10), "a failed sync counted", |m| {
                m.value("edgeshard_rate_limit_store_syncs_total", &[("result", "failed")]) > 0.0
            });
        }
        let before = origin.request_count();
        let (ok, _, secs) = hammer(&[&a, &b], 8, Duration::from_secs(2));
        assert_eq!(origin.request_count() - before, ok);
        // Each admits the full rate now (its bucket is no longer charged by the other).
        let alone = 2.0 * RATE * secs;
        eprintln!("store down: admitted {ok} in {secs:.2} s, each alone: {alone:.0} together");
        assert!(
            (ok as f64) > 0.75 * alone && (ok as f64) < 1.1 * alone + 2.0 * BURST,
            "with the store down, two processes admitted {ok} in {secs:.2} s (each alone: {alone:.0} together)"
        );
    }

    // The wrong password: every sync fails (each process limits on its own), and the log
    // says why, without the password.
    fn a_wrong_store_password_is_a_failed_sync_with_redis_reason(engine) {
        let origin = Origin::start("o");
        let redis = Redis::start();
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "rate_limit = { rate = 100, burst = 10 }")
            .section("rate_limits", &format!("store = \"redis://:wrong-pw@{}\"\nsync_interval = \"50ms\"", redis.addr))
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/"));
        assert_eq!(c.read_response().status(), 200);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "a failed sync", |m| {
            m.value("edgeshard_rate_limit_store_syncs_total", &[("result", "failed")]) > 0.0
        });
        assert_eq!(syncs(&proxy, "ok"), 0.0);
        proxy.wait_for_output("rate-limit store unreachable", 1, Duration::from_secs(5));
        let out = proxy.output();
        assert!(out.contains("Password authentication failed"), "{out}");
        assert!(!out.contains("wrong-pw"), "the password is never logged:\n{out}");
    }
}
