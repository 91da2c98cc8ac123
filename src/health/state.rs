//! Feeds stage 4, *balance*: the pure active-health state machine of one backend. The
//! prober ([`super::prober`]) feeds it one probe result at a time and publishes every
//! [`Transition`] it returns on the [`super::HealthBoard`]; nothing here does IO or reads a
//! clock, so every rule is unit-tested below.
//!
//! States and rules (`rise`, `fall` ≥ 1):
//! - **Unknown** (the default initial state): not probed yet, or no verdict yet. It is
//!   *usable*: traffic flows as before health checks existed (nginx assumes a server is up
//!   until `max_fails`). The first success confirms it (→ Healthy); `fall` consecutive
//!   failures take it out (→ Unhealthy).
//! - **Healthy**: usable; `fall` consecutive failures → Unhealthy.
//! - **Unhealthy**: not usable; `rise` consecutive successes → Healthy.
//!
//! An operator's drain (the admin API) is not a health state: it is kept beside the board
//! (`Shared::drained`) and probes go on underneath it.
//!
//! `InitialState::Unhealthy` is nginx's `mandatory`: a backend gets no traffic until it has
//! passed `rise` probes. It suits backends that need warming up; the default (Unknown) keeps
//! a restart of the proxy from emptying every upstream for `rise × interval`.

use std::fmt;

/// A backend's published health. The discriminants are the values stored on the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    /// Whether the balancer may pick a backend in this state.
    pub fn is_usable(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy)
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The inverse of [`Health::as_u8`]; a value no writer produces reads as `Unknown`
    /// (usable), the state that changes nothing.
    pub fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a backend starts in before its first probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialState {
    /// Usable until `fall` failures; confirmed by the first success (the default).
    #[default]
    Unknown,
    /// Not usable until `rise` successes (nginx's `mandatory`).
    Unhealthy,
}

impl InitialState {
    pub fn health(self) -> Health {
        match self {
            InitialState::Unknown => Health::Unknown,
            InitialState::Unhealthy => Health::Unhealthy,
        }
    }
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Consecutive successful probes reached the threshold (1 from Unknown, `rise` otherwise).
    Rise { successes: u32 },
    /// Consecutive failed probes reached `fall`.
    Fall { failures: u32 },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Rise { successes } => write!(f, "{successes} consecutive successful checks"),
            Cause::Fall { failures } => write!(f, "{failures} consecutive failed checks"),
        }
    }
}

/// A change of published state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub cause: Cause,
}

/// The health of one backend as seen by the prober.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    /// What the probes say.
    probed: Health,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl HealthState {
    /// `rise` and `fall` below 1 are treated as 1.
    pub fn new(initial: InitialState, rise: u32, fall: u32) -> HealthState {
        HealthState {
            probed: initial.health(),
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// A state that resumes from `health` and the run of probe results `streak` (`n > 0`
    /// successes, `-n` failures in a row: what the board showed before a reload), so the
    /// next probes continue from them instead of from the configured initial state. Counting
    /// afresh, a reload more often than `rise × interval` (a DNS answer that keeps changing)
    /// kept a recovered backend out for as long as the reloads went on.
    pub fn resumed(health: Health, streak: i64, rise: u32, fall: u32) -> HealthState {
        let mut st = HealthState::new(InitialState::Unknown, rise, fall);
        st.probed = health;
        let run = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        st.successes = run(streak.max(0));
        st.failures = run(streak.min(0).saturating_neg());
        st
    }

    /// The published state: what the probes say.
    pub fn current(&self) -> Health {
        self.probed
    }

    #[cfg(test)]
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Records one probe result. Returns the transition of the published state, if any.
    pub fn observe(&mut self, success: bool) -> Option<Transition> {
        let from = self.probed;
        let (to, cause) = if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            match self.probed {
                Health::Unknown => (Health::Healthy, Cause::Rise { successes: 1 }),
                Health::Unhealthy if self.successes >= self.rise => (
                    Health::Healthy,
                    Cause::Rise {
                        successes: self.successes,
                    },
                ),
                _ => return None,
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            match self.probed {
                Health::Unknown | Health::Healthy if self.failures >= self.fall => (
                    Health::Unhealthy,
                    Cause::Fall {
                        failures: self.failures,
                    },
                ),
                _ => return None,
            }
        };
        self.probed = to;
        Some(Transition { from, to, cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(st: &mut HealthState, seq: &str) -> Vec<Option<Health>> {
        seq.bytes()
            .map(|c| st.observe(c == b'+').map(|t| t.to))
            .collect()
    }

    #[test]
    fn health_round_trips_through_u8() {
        for h in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            assert_eq!(Health::from_u8(h.as_u8()), h);
        }
        assert_eq!(Health::from_u8(200), Health::Unknown);
        assert!(Health::Unknown.is_usable() && Health::Healthy.is_usable());
        assert!(!Health::Unhealthy.is_usable());
    }

    #[test]
    fn unknown_is_confirmed_by_one_success() {
        let mut st = HealthState::new(InitialState::Unknown, 3, 2);
        let t = st.observe(true).unwrap();
        assert_eq!(
            t,
            Transition {
                from: Health::Unknown,
                to: Health::Healthy,
                cause: Cause::Rise { successes: 1 }
            }
        );
        assert_eq!(st.current(), Health::Healthy);
    }

    #[test]
    fn unknown_falls_after_fall_failures() {
        let mut st = HealthState::new(InitialState::Unknown, 2, 3);
        assert_eq!(
            run(&mut st, "---"),
            vec![None, None, Some(Health::Unhealthy)]
        );
    }

    #[test]
    fn healthy_needs_fall_consecutive_failures() {
        let mut st = HealthState::new(InitialState::Unknown, 2, 3);
        // The success in the middle resets the failure count.
        assert_eq!(
            run(&mut st, "+--+---"),
            vec![
                Some(Health::Healthy),
                None,
                None,
                None,
                None,
                None,
                Some(Health::Unhealthy)
            ]
        );
        assert_eq!(st.consecutive_failures(), 3);
    }

    #[test]
    fn unhealthy_needs_rise_consecutive_successes() {
        let mut st = HealthState::new(InitialState::Unhealthy, 3, 1);
        assert_eq!(st.current(), Health::Unhealthy);
        assert_eq!(
            run(&mut st, "++-+++"),
            vec![None, None, None, None, None, Some(Health::Healthy)]
        );
        let mut st = HealthState::new(InitialState::Unhealthy, 3, 1);
        run(&mut st, "+++");
        let t = st.observe(false).unwrap();
        assert_eq!(t.cause, Cause::Fall { failures: 1 });
    }

    /// A reload between any two probes changes nothing: a prober that resumes from what the
    /// board recorded (state and run of results) makes the transitions one uninterrupted
    /// prober makes. Every sequence up to length 8, rise and fall 1..=3, every split point.
    #[test]
    fn a_resumed_state_continues_the_run_of_results() {
        use super::super::board::HealthBoard;
        for (rise, fall) in (1..=3u32).flat_map(|r| (1..=3u32).map(move |f| (r, f))) {
            for len in 0..=8u32 {
                for bits in 0..(1u32 << len) {
                    let ok = |k: u32| bits >> k & 1 == 1;
                    let mut whole = HealthState::new(InitialState::Unhealthy, rise, fall);
                    let want: Vec<_> = (0..len)
                        .map(|k| whole.observe(ok(k)).map(|t| t.to))
                        .collect();
                    for split in 0..=len {
                        let board = HealthBoard::new(&[Health::Unhealthy]);
                        let mut st = HealthState::new(InitialState::Unhealthy, rise, fall);
                        let mut got = Vec::new();
                        for k in 0..len {
                            if k == split {
                                let v = board.slot(0).unwrap();
                                st = HealthState::resumed(v.state, v.streak, rise, fall);
                            }
                            board.count_check(0, ok(k));
                            let t = st.observe(ok(k)).map(|t| t.to);
                            if let Some(to) = t {
                                board.publish(0, to, std::time::Instant::now());
                            }
                            got.push(t);
                        }
                        assert_eq!(
                            got, want,
                            "rise {rise} fall {fall} bits {bits:b}/{len} split {split}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut st = HealthState::new(InitialState::Unhealthy, 0, 0);
        assert_eq!(st.observe(true).map(|t| t.to), Some(Health::Healthy));
        assert_eq!(st.observe(false).map(|t| t.to), Some(Health::Unhealthy));
    }

    #[test]
    fn counters_saturate() {
        let mut st = HealthState::new(InitialState::Unknown, 1, 1);
        st.failures = u32::MAX;
        st.probed = Health::Unhealthy;
        assert_eq!(st.observe(false), None);
        assert_eq!(st.consecutive_failures(), u32::MAX);
    }

    /// Every probe sequence up to length 10, for rise and fall in 1..=3 and both initial
    /// states, checked against the rules stated in the module header.
    #[test]
    fn exhaustive_sequences_follow_the_rules() {
        for initial in [InitialState::Unknown, InitialState::Unhealthy] {
            for rise in 1..=3u32 {
                for fall in 1..=3u32 {
                    for len in 0..=10u32 {
                        for bits in 0..(1u32 << len) {
                            check_sequence(initial, rise, fall, len, bits);
                        }
                    }
                }
            }
        }
    }

    fn check_sequence(initial: InitialState, rise: u32, fall: u32, len: u32, bits: u32) {
        let mut st = HealthState::new(initial, rise, fall);
        let mut history: Vec<bool> = Vec::new();
        let mut published = initial.health();
        for k in 0..len {
            let ok = bits & (1 << k) != 0;
            history.push(ok);
            let before = st.current();
            assert_eq!(before, published);
            let run_len = history.iter().rev().take_while(|&&h| h == ok).count() as u32;
            let expected = match (before, ok) {
                (Health::Unknown, true) => Some(Health::Healthy),
                (Health::Unhealthy, true) if run_len == rise => Some(Health::Healthy),
                (Health::Unknown | Health::Healthy, false) if run_len == fall => {
                    Some(Health::Unhealthy)
                }
                _ => None,
            };
            let got = st.observe(ok);
            assert_eq!(
                got.map(|t| t.to),
                expected,
                "initial {initial:?} rise {rise} fall {fall} history {history:?}"
            );
            if let Some(t) = got {
                assert_eq!(t.from, before);
                assert!(t.from != t.to);
                published = t.to;
            }
            assert_eq!(st.current().is_usable(), published.is_usable());
        }
    }
}
