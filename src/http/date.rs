//! Stage 7, *respond*: the `Date` field (RFC 9110 §6.6.1) the proxy writes on its own answers
//! and adds to a forwarded response that has none, and the calendar arithmetic the access
//! log's timestamps share. Each shard keeps one [`DateCache`]: the text is formatted once a
//! second.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), Howard Hinnant's algorithm.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A Unix time (UTC) as (year, month, day, hour, minute, second).
pub fn split_time(unix: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, m, d) = civil((unix / 86_400) as i64);
    let s = unix % 86_400;
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The length of an IMF-fixdate: `Fri, 04 Dec 2026 03:45:09 GMT`.
pub const HTTP_DATE_LEN: usize = 29;

/// `unix` as an IMF-fixdate (RFC 9110 §5.6.7), the form every HTTP date is sent in.
pub fn http_date(unix: u64) -> [u8; HTTP_DATE_LEN] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let (y, m, d, hh, mm, ss) = split_time(unix);
    let text = format!(
        "{}, {d:02} {} {:04} {hh:02}:{mm:02}:{ss:02} GMT",
        DAYS[(unix / 86_400 % 7) as usize],
        MONTHS[(m - 1) as usize],
        y.clamp(0, 9999),
    );
    let mut out = [b' '; HTTP_DATE_LEN];
    out.copy_from_slice(&text.as_bytes()[..HTTP_DATE_LEN]);
    out
}

/// A shard's current `Date` text, formatted again only when the second changes.
pub struct DateCache {
    secs: Cell<u64>,
    text: Cell<[u8; HTTP_DATE_LEN]>,
}

impl Default for DateCache {
    fn default() -> DateCache {
        DateCache {
            secs: Cell::new(u64::MAX),
            text: Cell::new([b' '; HTTP_DATE_LEN]),
        }
    }
}

impl DateCache {
    /// The date now (one clock read).
    pub fn now(&self) -> [u8; HTTP_DATE_LEN] {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs.get() {
            self.secs.set(secs);
            self.text.set(http_date(secs));
        }
        self.text.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_match_rfc_9110_examples_and_calendar_edges() {
        // RFC 9110 §5.6.7's example: Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(1_796_355_909), b"Fri, 04 Dec 2026 03:45:09 GMT");
    }

    #[test]
    fn the_cache_follows_the_clock() {
        let c = DateCache::default();
        let a = c.now();
        let parsed = std::str::from_utf8(&a).unwrap();
        assert!(parsed.ends_with(" GMT"), "{parsed}");
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The cached second is this one or (at a second boundary) the one before.
        assert!(a == http_date(secs) || a == http_date(secs - 1), "{parsed}");
    }
}
