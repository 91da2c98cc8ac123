//! The minimum-rate rule for slow clients, part of [`super`] (stage 6, *forward*): how long
//! a body's client may still be waited for, given the payload it has moved and the time
//! already spent waiting on it. [`super::Leg`] applies it to every wait of a body relay.

use std::time::Duration;

/// How long a body's client may still be waited for under a minimum rate: `base`, plus one
/// second for every `rate` bytes moved so far, less the time already spent waiting for it.
/// Like Apache's `mod_reqtimeout` (`body=20,MinRate=500`), but only the time the proxy waits
/// on the client is charged, so a slow backend (or a server-sent event stream that is quiet
/// for minutes) never counts against the client. Saturating: no input can overflow or
/// panic. A `rate` of 0 is read as 1 ([`Pace`] never asks with 0: it means no rule).
pub fn rate_allowance(base: Duration, rate: u64, bytes: u64, waited: Duration) -> Duration {
    let rate = rate.max(1);
    let secs = bytes / rate;
    // (bytes % rate) < rate, so the product fits in u128 and the quotient below 1e9.
    let nanos = (u128::from(bytes % rate) * 1_000_000_000 / u128::from(rate)) as u32;
    base.saturating_add(Duration::new(secs, nanos))
        .saturating_sub(waited)
}

/// A minimum transfer rate on the client's side of one body: the time spent waiting on the
/// client, over the whole body, must stay within [`rate_allowance`]. Off when `rate` is 0.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Bytes per second; 0: no rule.
    pub rate: u64,
    /// The allowance before any byte moved (the side's per-wait timeout).
    pub base: Duration,
    /// Body bytes the client has moved so far (received from it, or accepted by its socket).
    pub bytes: u64,
    /// Of those, the bytes that were chunk framing (size lines, extensions, trailer
    /// section), not payload: they earn no time. Credited, a client that padded 1-byte
    /// chunks with 700 bytes of extensions met 500 B/s with 1 payload byte a second, and
    /// held its connection and the backend's worker with no end (second review, F5).
    pub framing: u64,
    /// Time spent waiting on the client so far.
    pub waited: Duration,
}

impl Pace {
    pub const OFF: Pace = Pace::new(Duration::ZERO, 0);

    pub const fn new(base: Duration, rate: u64) -> Pace {
        Pace {
            rate,
            base,
            bytes: 0,
            framing: 0,
            waited: Duration::ZERO,
        }
    }

    /// What is left of the allowance, for the payload moved; None when there is no rule.
    pub fn left(&self) -> Option<Duration> {
        let payload = self.bytes.saturating_sub(self.framing);
        (self.rate > 0).then(|| rate_allowance(self.base, self.rate, payload, self.waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_allowance_is_the_base_plus_a_second_per_rate_bytes_less_the_time_waited() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Nothing moved yet: the base.
        assert_eq!(rate_allowance(s(30), 500, 0, s(0)), s(30));
        // 1 s per 500 bytes, fractions included.
        assert_eq!(rate_allowance(s(30), 500, 1000, s(0)), s(32));
        assert_eq!(rate_allowance(s(30), 500, 250, s(0)), ms(30_500));
        assert_eq!(
            rate_allowance(s(1), 3, 1, s(0)),
            Duration::new(1, 333_333_333)
        );
        // The time waited on the client comes off.
        assert_eq!(rate_allowance(s(30), 500, 1000, s(12)), s(20));
        // A trickle of 1 byte/s against 500 bytes/s: after 40 s of waiting for 40 bytes,
        // nothing is left (30 + 0.08 < 40); saturating, not negative.
        assert_eq!(rate_allowance(s(30), 500, 40, s(40)), s(0));
        // No input overflows or panics.
        assert_eq!(
            rate_allowance(Duration::MAX, 1, u64::MAX, s(0)),
            Duration::MAX
        );
        assert_eq!(rate_allowance(s(1), u64::MAX, u64::MAX, s(0)), s(2));
        assert_eq!(
            rate_allowance(s(1), u64::MAX, u64::MAX - 1, s(0)),
            ms(1999) + Duration::new(0, 999_999)
        );
        assert_eq!(
            rate_allowance(s(1), 0, 5, s(0)),
            s(6),
            "0 is read as 1, never a division by zero"
        );
        assert_eq!(rate_allowance(s(0), 7, 0, Duration::MAX), s(0));
    }

    #[test]
    fn a_rate_of_zero_is_no_rule() {
        assert_eq!(Pace::OFF.left(), None);
        let mut p = Pace::new(Duration::from_secs(1), 0);
        p.waited = Duration::from_secs(3600);
        assert_eq!(p.left(), None);
        let p = Pace::new(Duration::from_secs(1), 100);
        assert_eq!(p.left(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn only_payload_earns_time() {
        let s = Duration::from_secs;
        let mut p = Pace::new(s(1), 100);
        (p.bytes, p.framing) = (700, 600);
        assert_eq!(
            p.left(),
            Some(s(2)),
            "700 bytes read, 100 of them payload: 1 s more"
        );
        // More framing than bytes (never, from the relay): nothing, not negative.
        (p.bytes, p.framing) = (10, 600);
        assert_eq!(p.left(), Some(s(1)));
    }
}
