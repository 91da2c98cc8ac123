//! Feeds stage 6, *forward* (and back into 4, *balance*, for the next pick): whether a failed
//! attempt may be tried again on another backend ([`RetrySpec::may_retry`]), and the retry
//! budget that keeps retries to a fraction of traffic ([`RetryBudget`]). Pure and shard-local.
//!
//! **Rules** (all must hold; the caller also picks a backend this request has not tried):
//! 1. fewer than `attempts` tries so far (`attempts` counts the first try: `attempts = 2` is
//!    one retry, like gRPC's `maxAttempts` and nginx's `proxy_next_upstream_tries`);
//! 2. the outcome is in `on`;
//! 3. no body byte has been written to any backend (`body_sent_anywhere`): the proxy streams
//!    bodies and keeps no copy to send again, and a non-idempotent request whose body arrived
//!    may already have taken effect;
//! 4. the method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or
//!    the outcome is a connect failure (nothing reached any backend on this attempt). PUT and
//!    DELETE are allowed: RFC 9110 defines them as idempotent, and the proxy's existing
//!    retry rule already treats them so. A POST that reached a backend is never retried;
//! 5. the shard's [`RetryBudget`] has a token (checked last, so only real retries spend).
//!
//! **Budget.** Like Finagle's `RetryBudget`: over a sliding window (10 s, 10 buckets) a
//! shard allows `retries ≤ ratio × requests + min_per_sec × window`. Under a 100 % failure
//! load the backends therefore see at most `(1 + ratio)` times the offered load plus the
//! small reserve, however large `attempts` is; at low traffic the reserve (3/s by default)
//! still lets every request retry.

use std::fmt;
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

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Timeout => f.write_str("timeout"),
            RetryOn::Status(s) => write!(f, "{s}"),
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

/// Idempotent per RFC 9110 §9.2.2 (method names are case-sensitive).
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
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
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts == 0 {
            return Err("retry attempts must be at least 1 (1 = no retries)".to_owned());
        }
        if !(0.0..=1.0).contains(&self.budget) {
            return Err(format!(
                "retry budget {} must be between 0 and 1",
                self.budget
            ));
        }
        if self.budget_window < Duration::from_secs(1) {
            return Err("retry budget window must be at least 1s".to_owned());
        }
        if self.per_try_timeout.is_some_and(|d| d.is_zero())
            || self.total_timeout.is_some_and(|d| d.is_zero())
        {
            return Err("retry per_try_timeout and total_timeout must be more than 0".to_owned());
        }
        Ok(())
    }

    /// Whether `outcome` is one the policy retries.
    pub fn retries_on(&self, outcome: Outcome) -> bool {
        self.on.iter().any(|r| r.matches(outcome))
    }

    /// Rules 1-4 of the module header: `attempt` is the number of tries made so far (1 after
    /// the first), `outcome` how the last one ended. The budget (rule 5) is separate:
    /// call [`RetryBudget::try_retry`] only when this says yes.
    pub fn may_retry(
        &self,
        method: &[u8],
        body_sent_anywhere: bool,
        attempt: u32,
        outcome: Outcome,
    ) -> bool {
        attempt < self.attempts
            && self.retries_on(outcome)
            && !body_sent_anywhere
            && (is_idempotent(method) || outcome == Outcome::ConnectFailure)
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

    /// Spends a retry token if the window allows one more retry; counts denials.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        if (retries as f64) < self.ratio * requests as f64 + self.reserve {
            self.bucket(now).retries += 1;
            self.granted += 1;
            true
        } else {
            self.denied += 1;
            false
        }
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
        for r in RetrySpec::default().on {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
        assert!(RetryOn::Timeout.matches(Outcome::Timeout));
        assert!(!RetryOn::Status(503).matches(Outcome::Response { status: 502 }));
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "PROPFIND"] {
            assert!(!is_idempotent(m.as_bytes()), "{m}");
        }
    }

    #[test]
    fn may_retry_rules() {
        let s = RetrySpec::default(); // attempts 2, on connect-failure, reset, 503
        let r503 = Outcome::Response { status: 503 };
        assert!(s.may_retry(b"GET", false, 1, RESET));
        assert!(s.may_retry(b"GET", false, 1, r503));
        assert!(s.may_retry(b"DELETE", false, 1, CONNECT));
        // Rule 1: attempts counts the first try.
        assert!(!s.may_retry(b"GET", false, 2, CONNECT));
        // Rule 2: outcome not configured.
        assert!(!s.may_retry(b"GET", false, 1, Outcome::Timeout));
        assert!(!s.may_retry(b"GET", false, 1, Outcome::Response { status: 500 }));
        // Rule 3: a body already sent is never sent again.
        assert!(!s.may_retry(b"PUT", true, 1, RESET));
        assert!(!s.may_retry(b"POST", true, 1, CONNECT));
        // Rule 4: non-idempotent only when nothing reached a backend.
        assert!(s.may_retry(b"POST", false, 1, CONNECT));
        assert!(!s.may_retry(b"POST", false, 1, RESET));
        assert!(!s.may_retry(b"PATCH", false, 1, r503));
        let once = RetrySpec {
            attempts: 1,
            ..RetrySpec::default()
        };
        assert!(!once.may_retry(b"GET", false, 1, CONNECT));
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
            while spec.may_retry(b"GET", false, attempt, failed) && budget.try_retry(now) {
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
