//! Unit tests of the shard's pick: exclusion of drained, unhealthy and ejected backends,
//! and the slow-start ramp.
use super::*;
use crate::config::Config;
use crate::health::Health;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

struct Ctx {
    shared: Arc<Shared>,
    backends: Backends,
    stats: Stats,
    errors: ErrorLimiter,
}

impl Ctx {
    fn pick_backend(&self, now: Instant) -> Pick {
        self.backends
            .pick(&self.shared, 0, &[], now, PickKey::default())
            .0
    }

    fn observe(&self, backend: usize, outcome: TryOutcome) {
        self.backends
            .observe(&self.shared, &self.stats, &self.errors, backend, outcome)
    }
}

fn ctx(extra: &str) -> Ctx {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}]\n{extra}\n"
    );
    let shared = Arc::new(Shared::new(
        Config::parse(&text, Path::new("t.toml")).unwrap(),
    ));
    Ctx {
        backends: Backends::new(&shared, 0),
        stats: Stats::new(shared.routes.len(), shared.backends.len()),
        errors: ErrorLimiter::new(shared.config.log.error_rate),
        shared,
    }
}

fn share_of_second(ctx: &Ctx, now: Instant) -> f64 {
    let n = 10_000;
    let hits = (0..n)
        .filter(|_| ctx.pick_backend(now) == Pick::Backend(1))
        .count();
    hits as f64 / n as f64
}

#[test]
fn slow_start_ramps_a_recovered_backend() {
    let c = ctx("slow_start = \"10s\"\n[upstream.health_check]\ninterval = \"1s\"");
    let board = &c.shared.board;
    let t0 = Instant::now();
    assert!(
        (share_of_second(&c, t0) - 0.5).abs() < 0.01,
        "no ramp before any outage"
    );
    board.publish(1, Health::Unhealthy, t0);
    assert_eq!(share_of_second(&c, t0), 0.0, "unhealthy: never picked");
    board.publish(1, Health::Healthy, t0);
    // Round robin gives it 1/2 at full weight. A pick of it is kept with probability
    // f = elapsed / slow_start, and a refused pick's second pick is made aside from the
    // rotation, so its share is f / 2: 0.05 at 10 %, 0.25 at 50 %. (A committed second pick
    // moved the cursor back onto it: f / (1 + f), 0.09 and 0.33.) Tolerance: 3 percentage
    // points over 10,000 picks.
    let early = share_of_second(&c, t0 + Duration::from_secs(1));
    assert!((early - 0.05).abs() < 0.03, "1s into a 10s ramp: {early}");
    let half = share_of_second(&c, t0 + Duration::from_secs(5));
    assert!((half - 0.25).abs() < 0.03, "5s into a 10s ramp: {half}");
    let done = share_of_second(&c, t0 + Duration::from_secs(11));
    assert!((done - 0.5).abs() < 0.01, "after the ramp: {done}");
}

#[test]
fn drained_unhealthy_and_ejected_backends_are_not_picked() {
    let c = ctx("");
    let now = Instant::now();
    c.shared.drained[0].store(true, Ordering::Relaxed);
    assert_eq!(share_of_second(&c, now), 1.0);
    c.shared.board.publish(1, Health::Unhealthy, now);
    assert_eq!(c.pick_backend(now), Pick::NoneUsable);
    c.shared.drained[0].store(false, Ordering::Relaxed);
    assert_eq!(share_of_second(&c, now), 0.0);
    // The default passive rule: one failed connect ejects for fail_timeout (2s).
    c.observe(0, TryOutcome::ConnectFailure);
    assert_eq!(c.pick_backend(Instant::now()), Pick::NoneUsable);
    assert!(matches!(
        c.pick_backend(Instant::now() + Duration::from_secs(3)),
        Pick::Backend(0)
    ));
}
