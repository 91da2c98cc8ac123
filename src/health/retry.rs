//! Feeds stage 6, *forward* (and back into 4, *balance*, for the next pick): what the attempt
//! machine (`crate::forward`) does after a try that gave no usable response ([`decide`]),
//! and the retry budget that keeps retries to a fraction of traffic ([`RetryBudget`]). Pure
//! and shard-local.
//!
//! **Three kinds of second chance**, narrowest first ([`decide`]):
//! 1. *Another connect.* A failed connect goes to another backend: nothing was sent. At most
//!    [`MAX_CONNECTS`] connects per request, outside `attempts` and the budget.
//! 2. *A fresh connection.* A pooled connection that died before any response byte (a
//!    keep-alive race: the backend closed it as we reused it) is resent once, on a new
//!    connection to the same backend, if the request is idempotent and has no body. Not a
//!    backend failure: outside `attempts` and the budget.
//! 3. *The policy* ([`RetrySpec::may_retry`]), all of:
//!    - fewer than `attempts` tries so far (`attempts` counts the first try: `attempts = 2`
//!      is one retry, like gRPC's `maxAttempts` and nginx's `proxy_next_upstream_tries`);
//!    - the outcome is in `on`;
//!    - the request has no body: the proxy streams bodies and keeps no copy to send again;
//!    - the method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE);
//!    - the total timeout leaves time;
//!
//!    then the caller asks the shard's [`RetryBudget`] for a token (last, so only real
//!    retries spend) and picks a backend this request has not tried.
//!
//! None of them once an interim (1xx) response of this try was relayed to the client: the
//! client already has part of this backend's answer ([`Try::responded`]).
//!
//! **Budget.** Like Finagle's `RetryBudget`: over a sliding window (10 s, 10 buckets) a
//! shard allows `retries ≤ ratio × requests + min_per_sec × window`. Under a 100 % failure
//! load the backends therefore see at most `(1 + ratio)` times the offered load plus the
//! small reserve, however large `attempts` is; at low traffic the reserve (3/s by default)
//! still lets every request retry.

use std::str::FromStr;
use std::time::{Duration, Instant};

use super::Outcome;

/// An outcome that may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Timeout,
    /// A response with exactly this status (400-599).
    Status(u16),
}

impl FromStr for RetryOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "timeout" => Ok(RetryOn::Timeout),
            _ => match s.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) && s.len() == 3 => Ok(RetryOn::Status(code)),
                _ => Err(format!(
                    "`{s}` is not a retry condition (connect-failure, reset, timeout, or a status 400-599)"
                )),
            },
        }
    }
}

impl RetryOn {
    pub fn matches(self, outcome: Outcome) -> bool {
        match (self, outcome) {
            (RetryOn::ConnectFailure, Outcome::ConnectFailure)
            | (RetryOn::Reset, Outcome::Reset)
            | (RetryOn::Timeout, Outcome::Timeout) => true,
            (RetryOn::Status(s), Outcome::Response { status }) => s == status,
            _ => false,
        }
    }
}

/// Connects one request may make (to different backends) before it gets a 502.
pub const MAX_CONNECTS: usize = 4;

/// What one try amounted to, as [`decide`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct Try {
    pub outcome: Outcome,
    /// The request's method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request has a body (sent, or being sent, to this backend).
    pub has_body: bool,
    /// The connection came from the pool.
    pub reused: bool,
    /// Some response byte arrived on it.
    pub any_response_byte: bool,
    /// Some response byte (an interim 1xx) was relayed to the client: the exchange is
    /// committed to this backend, whatever its outcome.
    pub responded: bool,
    /// Tries so far, this one included (connect failures and fresh resends not counted).
    pub attempt: u32,
    /// Connects that failed so far, this one included if it did.
    pub connect_failures: usize,
    /// This try was already the fresh-connection resend of kind 2.
    pub was_resend: bool,
    /// The total timeout leaves time for another try.
    pub time_left: bool,
    /// The request head is still there to send again: a write that timed out takes its
    /// buffer with it (`io::write_from`), and a retry would then send nothing.
    pub head_kept: bool,
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Kind 1: connect to another backend.
    ConnectAnother,
    /// Kind 2: send again on a fresh connection to the same backend.
    ResendFresh,
    /// Kind 3: the policy allows a retry, if the budget has a token and a backend this
    /// request has not tried is usable.
    RetryAnother,
    /// Answer the client with what this try produced.
    Answer,
}

/// The one retry rule (module header): what the attempt machine does after `t`.
pub fn decide(spec: &RetrySpec, t: &Try) -> Decision {
    if t.responded || !t.head_kept {
        return Decision::Answer;
    }
    match t.outcome {
        Outcome::ConnectFailure if t.connect_failures < MAX_CONNECTS => Decision::ConnectAnother,
        Outcome::ConnectFailure => Decision::Answer,
        Outcome::Reset
            if t.reused && !t.was_resend && !t.any_response_byte && t.idempotent && !t.has_body =>
        {
            Decision::ResendFresh
        }
        outcome if t.time_left && spec.may_retry(t.idempotent, t.has_body, t.attempt, outcome) => {
            Decision::RetryAnother
        }
        _ => Decision::Answer,
    }
}

/// An upstream's retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySpec {
    /// Tries in total, the first included (≥ 1; 1 disables retries).
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Retries allowed per request over the budget window (0 to 1).
    pub budget: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_retries_per_sec: u32,
    /// The budget's sliding window.
    pub budget_window: Duration,
    /// Bound on one try's wait for the response head; `None`: the `upstream_response` timeout.
    pub per_try_timeout: Option<Duration>,
    /// Bound on all tries together, from the first connect; `None`: unbounded.
    pub total_timeout: Option<Duration>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 2,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Status(503),
            ],
            budget: 0.2,
            min_retries_per_sec: 3,
            budget_window: Duration::from_secs(10),
            per_try_timeout: None,
            total_timeout: None,
        }
    }
}

impl RetrySpec {
    pub fn validate(&self) -> Result<(), super::Invalid> {
        use super::Invalid;
        if self.attempts == 0 {
            return Err(Invalid::new(
                "attempts",
                "must be at least 1 (1 = no retries)",
            ));
        }
        if !(0.0..=1.0).contains(&self.budget) {
            return Err(Invalid::new(
                "budget",
                format!("{} must be between 0 and 1", self.budget),
            ));
        }
        if self.budget_window < Duration::from_secs(1) {
            return Err(Invalid::new("budget_window", "must be at least 1s"));
        }
        if self.per_try_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Invalid::new("per_try_timeout", "must be more than 0"));
        }
        if self.total_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Invalid::new("total_timeout", "must be more than 0"));
        }
        Ok(())
    }

    /// Whether `outcome` is one the policy retries.
    pub fn retries_on(&self, outcome: Outcome) -> bool {
        self.on.iter().any(|r| r.matches(outcome))
    }

    /// Kind 3 of the module header, but for the total timeout and the budget: `attempt` is
    /// the number of tries made so far (1 after the first), `outcome` how the last one ended.
    pub fn may_retry(
        &self,
        idempotent: bool,
        has_body: bool,
        attempt: u32,
        outcome: Outcome,
    ) -> bool {
        attempt < self.attempts && self.retries_on(outcome) && !has_body && idempotent
    }

    /// The deadline of a try starting at `now` for a request whose first try started at
    /// `first_try`: the earlier of the per-try and total bounds, `None` if neither is set.
    pub fn try_deadline(&self, first_try: Instant, now: Instant) -> Option<Instant> {
        let per_try = self.per_try_timeout.map(|d| now + d);
        let total = self.total_timeout.map(|d| first_try + d);
        match (per_try, total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the total timeout leaves time for another try at `now`.
    pub fn has_time_left(&self, first_try: Instant, now: Instant) -> bool {
        self.total_timeout
            .is_none_or(|d| now.saturating_duration_since(first_try) < d)
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Which bucket period (since `origin`) these counts belong to.
    period: u64,
    requests: u64,
    retries: u64,
}

/// Shard-local retry budget (one per upstream per shard).
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    bucket_len: Duration,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
    denied: u64,
    granted: u64,
}

impl RetryBudget {
    /// Allows `ratio × requests + min_per_sec × window` retries over any `window`.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration, now: Instant) -> RetryBudget {
        let window = window.max(Duration::from_secs(1));
        RetryBudget {
            ratio: ratio.clamp(0.0, 1.0),
            reserve: f64::from(min_per_sec) * window.as_secs_f64(),
            bucket_len: window / BUCKETS as u32,
            origin: now,
            buckets: [Bucket::default(); BUCKETS],
            denied: 0,
            granted: 0,
        }
    }

    pub fn from_spec(spec: &RetrySpec, now: Instant) -> RetryBudget {
        RetryBudget::new(
            spec.budget,
            spec.min_retries_per_sec,
            spec.budget_window,
            now,
        )
    }

    /// Counts one client request (its first try; retries are not requests).
    pub fn record_request(&mut self, now: Instant) {
        let b = self.bucket(now);
        b.requests += 1;
    }

    /// Whether the window allows one more retry at `now`. Spends and counts nothing: the
    /// caller [`RetryBudget::spend`]s once the retry has a backend to go to, so a refused
    /// retry never moves the balancer (which would hand the failing backend the next
    /// request's first try) and a retry with no backend left costs no token; it
    /// [`RetryBudget::deny`]s a refusal that had a backend to go to.
    pub fn allows(&self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        (retries as f64) < self.ratio * requests as f64 + self.reserve
    }

    /// Counts a refused retry.
    pub fn deny(&mut self) {
        self.denied += 1;
    }

    /// Spends one retry token (after [`RetryBudget::allows`]).
    pub fn spend(&mut self, now: Instant) {
        self.bucket(now).retries += 1;
        self.granted += 1;
    }

    /// Retries granted since start.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Retries refused by the budget since start.
    pub fn denied(&self) -> u64 {
        self.denied
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_len.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let period = self.period(now);
        let b = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if b.period != period {
            *b = Bucket {
                period,
                requests: 0,
                retries: 0,
            };
        }
        b
    }

    /// Requests and retries in the window ending at `now`.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let period = self.period(now);
        self.buckets
            .iter()
            .filter(|b| b.period <= period && period - b.period < BUCKETS as u64)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RetryBudget {
        /// What the live path does when a backend is there: ask, then spend.
        fn try_retry(&mut self, now: Instant) -> bool {
            let allowed = self.allows(now);
            if allowed {
                self.spend(now);
            } else {
                self.deny();
            }
            allowed
        }
    }

    const RESET: Outcome = Outcome::Reset;
    const CONNECT: Outcome = Outcome::ConnectFailure;

    #[test]
    fn retry_on_parses() {
        assert_eq!("connect-failure".parse(), Ok(RetryOn::ConnectFailure));
        assert_eq!("503".parse(), Ok(RetryOn::Status(503)));
        assert_eq!("429".parse(), Ok(RetryOn::Status(429)));
        for bad in ["200", "5xx", "0503", "+503", "", "Reset"] {
            assert!(bad.parse::<RetryOn>().is_err(), "{bad}");
        }
        assert!(RetryOn::Timeout.matches(Outcome::Timeout));
        assert!(!RetryOn::Status(503).matches(Outcome::Response { status: 502 }));
    }

    #[test]
    fn may_retry_rules() {
        let s = RetrySpec::default(); // attempts 2, on connect-failure, reset, 503
        let r503 = Outcome::Response { status: 503 };
        assert!(s.may_retry(true, false, 1, RESET));
        assert!(s.may_retry(true, false, 1, r503));
        // attempts counts the first try.
        assert!(!s.may_retry(true, false, 2, RESET));
        // Outcome not configured.
        assert!(!s.may_retry(true, false, 1, Outcome::Timeout));
        assert!(!s.may_retry(true, false, 1, Outcome::Response { status: 500 }));
        // A body already sent is never sent again.
        assert!(!s.may_retry(true, true, 1, RESET));
        // Never a non-idempotent request that reached a backend.
        assert!(!s.may_retry(false, false, 1, RESET));
        assert!(!s.may_retry(false, false, 1, r503));
        let once = RetrySpec {
            attempts: 1,
            ..RetrySpec::default()
        };
        assert!(!once.may_retry(true, false, 1, RESET));
    }

    fn get_try(outcome: Outcome) -> Try {
        Try {
            outcome,
            idempotent: true,
            has_body: false,
            reused: false,
            any_response_byte: false,
            responded: false,
            attempt: 1,
            connect_failures: 0,
            was_resend: false,
            time_left: true,
            head_kept: true,
        }
    }

    #[test]
    fn a_failed_connect_goes_elsewhere_up_to_the_cap_whatever_the_method() {
        let s = RetrySpec {
            attempts: 1,
            ..RetrySpec::default()
        };
        for n in 1..MAX_CONNECTS {
            let t = Try {
                connect_failures: n,
                idempotent: false,
                has_body: true,
                ..get_try(CONNECT)
            };
            assert_eq!(decide(&s, &t), Decision::ConnectAnother, "{n}");
        }
        let t = Try {
            connect_failures: MAX_CONNECTS,
            ..get_try(CONNECT)
        };
        assert_eq!(decide(&s, &t), Decision::Answer);
    }

    #[test]
    fn a_request_whose_head_went_with_a_timed_out_write_is_not_sent_again() {
        let s = RetrySpec {
            on: vec![RetryOn::Timeout, RetryOn::Reset],
            ..RetrySpec::default()
        };
        let timeout = get_try(Outcome::Timeout);
        assert_eq!(decide(&s, &timeout), Decision::RetryAnother);
        let lost = Try {
            head_kept: false,
            ..timeout
        };
        assert_eq!(decide(&s, &lost), Decision::Answer);
        let stale = Try {
            reused: true,
            head_kept: false,
            ..get_try(RESET)
        };
        assert_eq!(decide(&s, &stale), Decision::Answer);
    }

    #[test]
    fn a_stale_pooled_connection_is_resent_once_on_a_fresh_one() {
        let s = RetrySpec {
            attempts: 1,
            on: vec![],
            ..RetrySpec::default()
        };
        let stale = Try {
            reused: true,
            ..get_try(RESET)
        };
        assert_eq!(decide(&s, &stale), Decision::ResendFresh);
        // Not twice, not after a response byte, not with a body, not a POST, not a timeout.
        for t in [
            Try {
                was_resend: true,
                ..stale
            },
            Try {
                any_response_byte: true,
                ..stale
            },
            Try {
                has_body: true,
                ..stale
            },
            Try {
                idempotent: false,
                ..stale
            },
            Try {
                outcome: Outcome::Timeout,
                ..stale
            },
            Try {
                reused: false,
                ..stale
            },
        ] {
            assert_eq!(decide(&s, &t), Decision::Answer, "{t:?}");
        }
    }

    #[test]
    fn nothing_is_retried_once_an_interim_response_reached_the_client() {
        let s = RetrySpec {
            attempts: 3,
            on: vec![RetryOn::Reset, RetryOn::Timeout, RetryOn::Status(503)],
            ..RetrySpec::default()
        };
        for outcome in [RESET, Outcome::Timeout, Outcome::Response { status: 503 }] {
            let t = get_try(outcome);
            assert_ne!(decide(&s, &t), Decision::Answer, "{t:?}");
            let relayed = Try {
                any_response_byte: true,
                responded: true,
                reused: true,
                ..t
            };
            assert_eq!(decide(&s, &relayed), Decision::Answer, "{relayed:?}");
        }
    }

    #[test]
    fn the_policy_decides_the_rest() {
        let s = RetrySpec::default();
        assert_eq!(decide(&s, &get_try(RESET)), Decision::RetryAnother);
        let r503 = Outcome::Response { status: 503 };
        assert_eq!(decide(&s, &get_try(r503)), Decision::RetryAnother);
        let r500 = Outcome::Response { status: 500 };
        assert_eq!(decide(&s, &get_try(r500)), Decision::Answer);
        let late = Try {
            time_left: false,
            ..get_try(RESET)
        };
        assert_eq!(decide(&s, &late), Decision::Answer);
        let second = Try {
            attempt: 2,
            ..get_try(RESET)
        };
        assert_eq!(decide(&s, &second), Decision::Answer);
        let post = Try {
            idempotent: false,
            ..get_try(RESET)
        };
        assert_eq!(decide(&s, &post), Decision::Answer);
    }

    #[test]
    fn validation_and_deadlines() {
        assert!(RetrySpec::default().validate().is_ok());
        let bad = [
            RetrySpec {
                attempts: 0,
                ..RetrySpec::default()
            },
            RetrySpec {
                budget: 1.5,
                ..RetrySpec::default()
            },
            RetrySpec {
                budget_window: Duration::from_millis(10),
                ..RetrySpec::default()
            },
            RetrySpec {
                per_try_timeout: Some(Duration::ZERO),
                ..RetrySpec::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
        let t0 = Instant::now();
        let s = RetrySpec {
            per_try_timeout: Some(Duration::from_secs(2)),
            total_timeout: Some(Duration::from_secs(5)),
            ..RetrySpec::default()
        };
        assert_eq!(s.try_deadline(t0, t0), Some(t0 + Duration::from_secs(2)));
        let late = t0 + Duration::from_secs(4);
        assert_eq!(s.try_deadline(t0, late), Some(t0 + Duration::from_secs(5)));
        assert!(s.has_time_left(t0, late));
        assert!(!s.has_time_left(t0, t0 + Duration::from_secs(5)));
        assert_eq!(RetrySpec::default().try_deadline(t0, late), None);
        assert!(RetrySpec::default().has_time_left(t0, late + Duration::from_secs(999)));
    }

    /// Every request fails and wants to retry up to 10 times: the budget holds total load
    /// to (1 + ratio) × requests plus the reserve.
    #[test]
    fn budget_caps_retries_under_total_failure() {
        let spec = RetrySpec {
            attempts: 10,
            on: vec![RetryOn::Status(503)],
            ..RetrySpec::default()
        };
        let t0 = Instant::now();
        let mut budget = RetryBudget::from_spec(&spec, t0);
        let failed = Outcome::Response { status: 503 };
        let mut tries = 0u64;
        let requests = 60_000u64; // 1000 requests/s for 60 s
        for k in 0..requests {
            let now = t0 + Duration::from_millis(k);
            budget.record_request(now);
            let mut attempt = 1;
            tries += 1;
            while spec.may_retry(true, false, attempt, failed) && budget.try_retry(now) {
                attempt += 1;
                tries += 1;
            }
        }
        let retries = tries - requests;
        // Per 10 s window: 0.2 × 10 000 + 3 × 10 = 2 030; six windows.
        assert!(retries <= 6 * 2_030, "retries {retries}");
        assert!(retries >= 6 * 1_900, "the budget is used: {retries}");
        assert!(tries as f64 / requests as f64 <= 1.21);
        assert_eq!(budget.granted(), retries);
        assert!(budget.denied() > 0);
    }

    /// At 1 request per second every request may retry thanks to the reserve.
    #[test]
    fn budget_reserve_serves_low_traffic() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 3, Duration::from_secs(10), t0);
        for s in 0..100 {
            let now = t0 + Duration::from_secs(s);
            budget.record_request(now);
            assert!(budget.try_retry(now), "second {s}");
        }
        assert_eq!(budget.denied(), 0);
        // Without a reserve and without traffic, nothing is allowed.
        let mut strict = RetryBudget::new(0.2, 0, Duration::from_secs(10), t0);
        assert!(!strict.try_retry(t0));
        for _ in 0..5 {
            strict.record_request(t0);
        }
        assert!(strict.try_retry(t0));
        assert!(!strict.try_retry(t0));
    }

    /// Old buckets leave the window: a burst of retries long ago does not block new ones.
    #[test]
    fn budget_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.0, 1, Duration::from_secs(10), t0);
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 10);
        assert!(!b.try_retry(t0 + Duration::from_secs(9)));
        // 10 s later the first bucket has left the window.
        assert!(b.try_retry(t0 + Duration::from_secs(10)));
        // A clock reading before the origin counts as the origin.
        let mut fresh = RetryBudget::new(0.0, 1, Duration::from_secs(10), t0);
        if let Some(before) = t0.checked_sub(Duration::from_secs(1)) {
            assert!(fresh.try_retry(before));
            assert_eq!(fresh.granted(), 1);
        }
    }
}
