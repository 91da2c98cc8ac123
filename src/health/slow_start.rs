//! Feeds stage 4, *balance*: slow start. A backend that comes back (Unhealthy →
//! usable on the [`super::HealthBoard`], whose `ramp_from` is the origin) takes a share of
//! its picks that grows linearly from 0 to all of them over `slow_start`, so that a cold
//! cache or JIT is not hit with a full share at once. [`kept_share`] is that fraction; the
//! shard's pick ([`crate::upstream::state::Backends::pick`]) keeps a pick of the backend with
//! that probability and otherwise picks again among the others (so a backend that is the only
//! usable one still gets every request). Pure.

use std::time::{Duration, Instant};

/// The fraction (0 to 1) of its picks a backend that became usable at `since` keeps at `now`.
/// `None` (usable from the start) or a zero `slow_start`: 1, no ramp.
pub fn kept_share(since: Option<Instant>, slow_start: Duration, now: Instant) -> f64 {
    let Some(since) = since else {
        return 1.0;
    };
    if slow_start.is_zero() {
        return 1.0;
    }
    let elapsed = now.saturating_duration_since(since);
    (elapsed.as_secs_f64() / slow_start.as_secs_f64()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S30: Duration = Duration::from_secs(30);

    #[test]
    fn no_origin_or_no_slow_start_keeps_every_pick() {
        let now = Instant::now();
        assert_eq!(kept_share(None, S30, now), 1.0);
        assert_eq!(kept_share(Some(now), Duration::ZERO, now), 1.0);
    }

    #[test]
    fn share_ramps_linearly_then_stays_full() {
        let t0 = Instant::now();
        assert_eq!(kept_share(Some(t0), S30, t0), 0.0);
        let half = kept_share(Some(t0), S30, t0 + Duration::from_secs(15));
        assert!((half - 0.5).abs() < 1e-9, "{half}");
        assert_eq!(kept_share(Some(t0), S30, t0 + S30), 1.0);
        assert_eq!(kept_share(Some(t0), S30, t0 + 2 * S30), 1.0);
    }

    #[test]
    fn a_clock_before_the_origin_is_the_start_of_the_ramp() {
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(kept_share(Some(t0), S30, Instant::now()), 0.0);
    }
}
