//! Feeds stage 4, *balance*: passive health checks (outlier detection). The proxy reports
//! how each attempt to a backend ended ([`Outcome`]); `consecutive` failures of the
//! configured kinds eject the backend for `base_ejection × n` (n = its ejection count,
//! capped at `max_ejection`), unless that would take more than `max_ejection_percent` of the
//! upstream's backends out. Pure: every call takes `now`.
//!
//! **One detector per shard per upstream.** Each shard ejects on its own observations, with
//! no cross-core traffic. That is acceptable because `SO_REUSEPORT` spreads clients evenly,
//! so every shard sees a similar sample of a backend's behaviour: a backend that fails for
//! everyone is ejected by every shard after at most `consecutive` failures each (at most
//! `shards × consecutive` failed requests in total, all of which retries can absorb), and a
//! backend that fails only some requests is judged on comparable samples everywhere. The
//! cost is that ejections do not line up in time across shards. If that matters, a shard
//! could publish its ejection to a per-backend `AtomicU64 ejected_until_ms` next to the
//! [`super::HealthBoard`] slot (one store per ejection, rare; readers already touch that
//! line), and other shards would honour it as if they had ejected; not built.
//!
//! Ejections of one shard count only against that shard's `max_ejection_percent`, together
//! with the backends out of rotation for other reasons (drained, Unhealthy by the active
//! check): Envoy counts ejections only, but falls back to every backend ("panic mode") when
//! too few are healthy; edgeshard has no such fallback (HEALTH.md), so the percentage is of
//! the backends out of rotation, or one failure of the last live backend emptied the upstream.
//!
//! An ejected backend's multiplier resets once it has stayed in rotation for `max_ejection`
//! without another ejection, so a backend that failed once long ago starts again from
//! `base_ejection`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::Outcome;

/// One kind of failure that outlier detection may count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureKind {
    ConnectFailure = 1,
    Reset = 2,
    Timeout = 4,
    /// Any response status 500-599.
    Status5xx = 8,
    /// Response status 503 only.
    Status503 = 16,
}

const KIND_NAMES: &str = "connect-failure, reset, timeout, 5xx, 503";

impl FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "connect-failure" => FailureKind::ConnectFailure,
            "reset" => FailureKind::Reset,
            "timeout" => FailureKind::Timeout,
            "5xx" => FailureKind::Status5xx,
            "503" => FailureKind::Status503,
            _ => {
                return Err(format!(
                    "`{s}` is not an outlier failure kind ({KIND_NAMES})"
                ))
            }
        })
    }
}

/// A set of [`FailureKind`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureKinds(u8);

impl Default for FailureKinds {
    /// connect-failure, reset, timeout, 503: the backend could not serve at all. A 500 from a
    /// buggy endpoint does not eject a backend unless `5xx` is configured.
    fn default() -> Self {
        FailureKinds::of(&[
            FailureKind::ConnectFailure,
            FailureKind::Reset,
            FailureKind::Timeout,
            FailureKind::Status503,
        ])
    }
}

impl FailureKinds {
    pub const NONE: FailureKinds = FailureKinds(0);

    pub fn of(kinds: &[FailureKind]) -> FailureKinds {
        FailureKinds(kinds.iter().fold(0, |acc, k| acc | *k as u8))
    }

    /// Parses names as written in the configuration.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<FailureKinds, String> {
        let mut set = FailureKinds::NONE;
        for n in names {
            set.0 |= n.parse::<FailureKind>()? as u8;
        }
        Ok(set)
    }

    pub fn has(self, kind: FailureKind) -> bool {
        self.0 & kind as u8 != 0
    }

    /// Whether `outcome` counts as a failure. Anything else is a success and resets the
    /// consecutive count.
    pub fn matches(self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::ConnectFailure => self.has(FailureKind::ConnectFailure),
            Outcome::Reset => self.has(FailureKind::Reset),
            Outcome::Timeout => self.has(FailureKind::Timeout),
            Outcome::Response { status } => {
                (self.has(FailureKind::Status5xx) && (500..=599).contains(&status))
                    || (self.has(FailureKind::Status503) && status == 503)
            }
        }
    }
}

/// An upstream's outlier detection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Consecutive failures that eject a backend (≥ 1).
    pub consecutive: u32,
    pub on: FailureKinds,
    /// Ejection time of a first ejection; the n-th lasts `n ×` this.
    pub base_ejection: Duration,
    /// Cap on one ejection's length, and the quiet time after which the multiplier resets.
    pub max_ejection: Duration,
    /// At most this percent of the upstream's backends are ejected at once (0-100).
    pub max_ejection_percent: u8,
}

impl Default for OutlierSpec {
    fn default() -> Self {
        OutlierSpec {
            consecutive: 5,
            on: FailureKinds::default(),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierSpec {
    pub fn validate(&self) -> Result<(), super::Invalid> {
        use super::Invalid;
        if self.consecutive == 0 {
            return Err(Invalid::new("consecutive", "must be at least 1"));
        }
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return Err(Invalid::new(
                "base_ejection",
                "must be more than 0 and at most max_ejection",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(Invalid::new(
                "max_ejection_percent",
                "must be between 0 and 100",
            ));
        }
        Ok(())
    }

    /// The length of the `n`-th ejection (n ≥ 1).
    pub fn ejection_time(&self, n: u32) -> Duration {
        self.base_ejection
            .checked_mul(n.max(1))
            .map_or(self.max_ejection, |d| d.min(self.max_ejection))
    }
}

/// What an observation led to (for logs and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutlierEvent {
    /// The backend is out of rotation on this shard until `until`.
    Ejected {
        ejections: u32,
        until: Instant,
        duration: Duration,
    },
    /// The threshold was reached but ejecting would exceed `max_ejection_percent`.
    Suppressed { ejected_now: usize },
}

impl fmt::Display for OutlierEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutlierEvent::Ejected {
                ejections,
                duration,
                ..
            } => write!(f, "ejected for {duration:?} (ejection {ejections})"),
            OutlierEvent::Suppressed { ejected_now } => write!(
                f,
                "not ejected: {ejected_now} backends already ejected (max_ejection_percent)"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When the last ejection ended (for the multiplier reset).
    returned_at: Option<Instant>,
}

/// Shard-local outlier detection for the backends of one upstream (indices are positions
/// within the upstream).
#[derive(Clone, Debug)]
pub struct OutlierDetector {
    spec: OutlierSpec,
    entries: Vec<Entry>,
}

impl OutlierDetector {
    pub fn new(spec: OutlierSpec, backends: usize) -> OutlierDetector {
        OutlierDetector {
            spec,
            entries: vec![Entry::default(); backends],
        }
    }

    /// Takes over, for backend `i`, what `from` knew of its backend `j` (its failure count
    /// and ejection): a reload keeps passive-check state of the backends that remain.
    pub fn adopt(&mut self, i: usize, from: &OutlierDetector, j: usize) {
        if let (Some(e), Some(old)) = (self.entries.get_mut(i), from.entries.get(j)) {
            *e = *old;
        }
    }

    /// Whether backend `i` is ejected at `now` (an unknown index is not).
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.entries
            .get(i)
            .and_then(|e| e.ejected_until)
            .is_some_and(|u| u > now)
    }

    /// Backends ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        (0..self.entries.len())
            .filter(|&i| self.is_ejected(i, now))
            .count()
    }

    /// The current consecutive failure count of backend `i`.
    #[cfg(test)]
    pub fn consecutive(&self, i: usize) -> u32 {
        self.entries.get(i).map_or(0, |e| e.consecutive)
    }

    /// Records how an attempt to backend `i` ended. Outcomes reported while the backend is
    /// ejected (requests that were in flight) are ignored. `out(j)`: backend `j` is out of
    /// rotation for another reason (drained, Unhealthy), which counts against
    /// `max_ejection_percent` as an ejection does.
    pub fn observe(
        &mut self,
        i: usize,
        outcome: Outcome,
        now: Instant,
        out: impl Fn(usize) -> bool,
    ) -> Option<OutlierEvent> {
        let spec = &self.spec;
        let entry = self.entries.get_mut(i)?;
        if let Some(until) = entry.ejected_until {
            if until > now {
                return None;
            }
            entry.ejected_until = None;
            entry.returned_at = Some(until);
        }
        if entry
            .returned_at
            .is_some_and(|r| now.saturating_duration_since(r) >= spec.max_ejection)
        {
            entry.ejections = 0;
            entry.returned_at = None;
        }
        if !spec.on.matches(outcome) {
            entry.consecutive = 0;
            return None;
        }
        entry.consecutive = entry.consecutive.saturating_add(1);
        if entry.consecutive < spec.consecutive.max(1) {
            return None;
        }
        entry.consecutive = 0;
        let ejected_now = self.ejected_count(now);
        let n = self.entries.len();
        let out_now = (0..n)
            .filter(|&j| j != i && (self.is_ejected(j, now) || out(j)))
            .count();
        if (out_now + 1) * 100 > usize::from(self.spec.max_ejection_percent) * n {
            return Some(OutlierEvent::Suppressed { ejected_now });
        }
        let entry = &mut self.entries[i];
        entry.ejections = entry.ejections.saturating_add(1);
        let duration = self.spec.ejection_time(entry.ejections);
        let until = now + duration;
        entry.ejected_until = Some(until);
        Some(OutlierEvent::Ejected {
            ejections: entry.ejections,
            until,
            duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn spec(consecutive: u32, percent: u8) -> OutlierSpec {
        OutlierSpec {
            consecutive,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejection_percent: percent,
            ..OutlierSpec::default()
        }
    }

    const FAIL: Outcome = Outcome::ConnectFailure;
    const OK: Outcome = Outcome::Response { status: 200 };

    #[test]
    fn kinds_parse_and_match() {
        let k = FailureKinds::parse(["connect-failure", "5xx"]).unwrap();
        assert!(k.matches(Outcome::ConnectFailure));
        assert!(k.matches(Outcome::Response { status: 500 }));
        assert!(k.matches(Outcome::Response { status: 599 }));
        assert!(!k.matches(Outcome::Response { status: 404 }));
        assert!(!k.matches(Outcome::Reset) && !k.matches(Outcome::Timeout));
        let d = FailureKinds::default();
        assert!(d.matches(Outcome::Response { status: 503 }));
        assert!(!d.matches(Outcome::Response { status: 500 }));
        assert!(d.matches(Outcome::Timeout) && d.matches(Outcome::Reset));
        assert!(FailureKinds::parse(["nope"]).is_err());
        assert!(!FailureKinds::NONE.matches(FAIL));
    }

    #[test]
    fn validation() {
        assert!(OutlierSpec::default().validate().is_ok());
        assert!(spec(0, 50).validate().is_err());
        assert!(spec(1, 101).validate().is_err());
        let mut s = spec(1, 50);
        s.max_ejection = Duration::from_secs(1);
        assert!(s.validate().is_err());
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(spec(3, 100), 2);
        assert_eq!(d.observe(0, FAIL, t0, |_| false), None);
        assert_eq!(d.observe(0, FAIL, t0, |_| false), None);
        assert_eq!(
            d.observe(0, OK, t0, |_| false),
            None,
            "a success resets the count"
        );
        assert_eq!(d.consecutive(0), 0);
        assert_eq!(d.observe(0, FAIL, t0, |_| false), None);
        assert_eq!(
            d.observe(0, Outcome::Response { status: 500 }, t0, |_| false),
            None
        );
        assert_eq!(
            d.consecutive(0),
            0,
            "an unconfigured kind counts as success"
        );
        d.observe(0, FAIL, t0, |_| false);
        d.observe(0, FAIL, t0, |_| false);
        let ev = d.observe(0, FAIL, t0, |_| false);
        assert_eq!(
            ev,
            Some(OutlierEvent::Ejected {
                ejections: 1,
                until: t0 + 10 * S,
                duration: 10 * S
            })
        );
        assert!(d.is_ejected(0, t0 + 9 * S));
        assert!(!d.is_ejected(0, t0 + 10 * S));
        assert!(!d.is_ejected(1, t0) && !d.is_ejected(9, t0));
        assert_eq!(d.ejected_count(t0), 1);
        // In-flight failures reported during the ejection are ignored.
        assert_eq!(d.observe(0, FAIL, t0 + S, |_| false), None);
        assert_eq!(d.consecutive(0), 0);
        assert_eq!(d.observe(9, FAIL, t0, |_| false), None);
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let s = spec(1, 100);
        assert_eq!(s.ejection_time(0), 10 * S);
        assert_eq!(s.ejection_time(1), 10 * S);
        assert_eq!(s.ejection_time(3), 30 * S);
        assert_eq!(s.ejection_time(4), 35 * S);
        assert_eq!(s.ejection_time(u32::MAX), 35 * S);

        let mut d = OutlierDetector::new(s, 1);
        let mut now = Instant::now();
        for (n, secs) in [(1, 10), (2, 20), (3, 30), (4, 35), (5, 35)] {
            match d.observe(0, FAIL, now, |_| false) {
                Some(OutlierEvent::Ejected {
                    ejections,
                    duration,
                    until,
                }) => {
                    assert_eq!((ejections, duration), (n, secs * S));
                    now = until;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn multiplier_resets_after_a_quiet_max_ejection() {
        let mut d = OutlierDetector::new(spec(1, 100), 1);
        let t0 = Instant::now();
        d.observe(0, FAIL, t0, |_| false); // ejected until t0+10
        let back = t0 + 10 * S;
        d.observe(0, OK, back + 34 * S, |_| false);
        // 34 s after returning: still remembered, second ejection lasts 20 s.
        match d.observe(0, FAIL, back + 34 * S, |_| false) {
            Some(OutlierEvent::Ejected { ejections: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        let back = back + 54 * S;
        d.observe(0, OK, back + 35 * S, |_| false);
        match d.observe(0, FAIL, back + 36 * S, |_| false) {
            Some(OutlierEvent::Ejected {
                ejections: 1,
                duration,
                ..
            }) => assert_eq!(duration, 10 * S),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_ejection_percent_keeps_a_floor() {
        let t0 = Instant::now();
        // 4 backends, 50 %: at most 2 ejected at once.
        let mut d = OutlierDetector::new(spec(1, 50), 4);
        assert!(matches!(
            d.observe(0, FAIL, t0, |_| false),
            Some(OutlierEvent::Ejected { .. })
        ));
        assert!(matches!(
            d.observe(1, FAIL, t0, |_| false),
            Some(OutlierEvent::Ejected { .. })
        ));
        assert_eq!(
            d.observe(2, FAIL, t0, |_| false),
            Some(OutlierEvent::Suppressed { ejected_now: 2 })
        );
        assert!(!d.is_ejected(2, t0));
        // Once the first two return, the third may go.
        let later = t0 + 10 * S;
        assert!(matches!(
            d.observe(2, FAIL, later, |_| false),
            Some(OutlierEvent::Ejected { .. })
        ));

        // A single-backend upstream below 100 % is never ejected.
        let mut one = OutlierDetector::new(spec(1, 99), 1);
        for _ in 0..10 {
            assert!(matches!(
                one.observe(0, FAIL, t0, |_| false),
                Some(OutlierEvent::Suppressed { .. })
            ));
        }
        assert!(!one.is_ejected(0, t0));
        // 0 % disables ejection altogether; 100 % allows all.
        let mut none = OutlierDetector::new(spec(1, 0), 3);
        assert!(matches!(
            none.observe(0, FAIL, t0, |_| false),
            Some(OutlierEvent::Suppressed { .. })
        ));
        let mut all = OutlierDetector::new(spec(1, 100), 2);
        all.observe(0, FAIL, t0, |_| false);
        all.observe(1, FAIL, t0, |_| false);
        assert_eq!(all.ejected_count(t0), 2);

        // Backends out of rotation otherwise (drained, Unhealthy) count against the floor:
        // 4 backends, 50 %, two drained: none may be ejected.
        let mut d = OutlierDetector::new(spec(1, 50), 4);
        let drained = |j: usize| j >= 2;
        assert_eq!(
            d.observe(0, FAIL, t0, drained),
            Some(OutlierEvent::Suppressed { ejected_now: 0 })
        );
        // One drained: one of the other three may go.
        let drained = |j: usize| j == 3;
        assert!(matches!(
            d.observe(0, FAIL, t0, drained),
            Some(OutlierEvent::Ejected { .. })
        ));
        assert!(matches!(
            d.observe(1, FAIL, t0, drained),
            Some(OutlierEvent::Suppressed { .. })
        ));
    }
}
