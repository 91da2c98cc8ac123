//! The response cache's byte ranges, decided in its *lookup* and served in *respond*: a
//! cached `200` answers a `GET` that asks for one byte range (RFC 9110 §14.2) with
//! `206 Partial Content` and that part of the stored body, and one whose range starts past
//! the body's end with `416 Range Not Satisfiable`, as the backend (or nginx's cache) would.
//! A range the cache does not serve is ignored, which RFC 9110 §14.2 allows: the whole `200`
//! goes out. That is a `Range` with several ranges, a unit other than `bytes`, bad syntax,
//! or an `If-Range` the entry does not match (§13.1.5: a strong `ETag` compared strongly,
//! or the `Last-Modified` date exactly), or an entry whose backend said `Accept-Ranges:
//! none`. Which fetches drop the client's `Range` to fill the cache: `Fill::condition`.

use super::policy::parse_http_date;

/// What part of a cached body the request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole response, as stored.
    Whole,
    /// Bytes `start..end` of the body: a `206`.
    Bytes { start: u64, end: u64 },
    /// A range starting past the end: a `416`.
    Unsatisfiable,
}

/// Whether a request with `fields` asks for a part of the object that a fetch of the whole
/// would hold: one `Range: bytes=...` other than `bytes=0-` (all of it). Such a miss fetches
/// the whole object in the background ([`super::Lookup::RangeMiss`]).
pub fn asks_part<'h>(mut fields: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> bool {
    let mut ranges = fields
        .by_ref()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"range"));
    let (Some((_, v)), None) = (ranges.next(), ranges.next()) else {
        return false;
    };
    let v = v.trim_ascii();
    v.len() > 6 && v[..6].eq_ignore_ascii_case(b"bytes=") && !v.eq_ignore_ascii_case(b"bytes=0-")
}

/// The complete length a `206`'s `Content-Range: bytes A-B/LENGTH` names (`None` for `*`
/// or anything else).
pub fn total_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"bytes ") {
        return None;
    }
    let slash = v.iter().rposition(|&b| b == b'/')?;
    let len = &v[slash + 1..];
    if len.is_empty() || len.len() > 19 || !len.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(len).ok()?.parse().ok()
}

impl Part {
    /// The part of a `len`-byte body with ETag `etag` and `Last-Modified` `last_modified`
    /// (Unix seconds) that a request with `fields` asks for.
    pub fn of<'h>(
        fields: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
        len: u64,
        etag: Option<&[u8]>,
        last_modified: Option<u64>,
    ) -> Part {
        let one = |name: &[u8]| {
            let mut it = fields.clone().filter(|(n, _)| n.eq_ignore_ascii_case(name));
            match (it.next(), it.next()) {
                (Some((_, v)), None) => Ok(Some(v)),
                (None, _) => Ok(None),
                // Two lines: which one the client meant is a guess.
                (Some(_), Some(_)) => Err(()),
            }
        };
        let Ok(Some(range)) = one(b"range") else {
            return Part::Whole;
        };
        match one(b"if-range") {
            Ok(None) => {}
            Ok(Some(v)) if if_range_holds(v.trim_ascii(), etag, last_modified) => {}
            _ => return Part::Whole,
        }
        parse(range.trim_ascii(), len)
    }

    /// The `Content-Range` value of a `206` or a `416` for a `len`-byte body, written into
    /// `out`; `None` for [`Part::Whole`].
    pub fn content_range(self, len: u64, out: &mut Vec<u8>) -> Option<&[u8]> {
        use std::io::Write;
        out.clear();
        match self {
            Part::Whole => return None,
            Part::Bytes { start, end } => {
                let _ = write!(out, "bytes {start}-{}/{len}", end - 1);
            }
            Part::Unsatisfiable => {
                let _ = write!(out, "bytes */{len}");
            }
        }
        Some(&out[..])
    }
}

/// RFC 9110 §13.1.5: an entity tag matches a strong `etag` strongly; a date matches
/// `Last-Modified` exactly.
fn if_range_holds(v: &[u8], etag: Option<&[u8]>, last_modified: Option<u64>) -> bool {
    if v.starts_with(b"\"") || v.starts_with(b"W/") {
        return !v.starts_with(b"W/") && etag.is_some_and(|e| e == v);
    }
    last_modified.is_some_and(|lm| parse_http_date(v) == Some(lm))
}

/// One `bytes=` range of a `len`-byte body: [`Part::Whole`] for what is not served.
fn parse(v: &[u8], len: u64) -> Part {
    let Some(unit) = v.get(..6) else {
        return Part::Whole;
    };
    if !unit.eq_ignore_ascii_case(b"bytes=") {
        return Part::Whole;
    }
    let spec = v[6..].trim_ascii();
    if spec.contains(&b',') {
        return Part::Whole;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return Part::Whole;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last)) {
        // `-n`: the last n bytes. Of an empty body, no `206` can say it (RFC 9110 §14.1.1
        // calls it satisfiable): the whole, empty, `200`.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 {
                Part::Unsatisfiable
            } else if len == 0 {
                Part::Whole
            } else {
                Part::Bytes {
                    start: len - n.min(len),
                    end: len,
                }
            }
        }
        // `a-`: from a to the end.
        (Some(a), None) if last.is_empty() => from(a, len, len),
        (Some(a), Some(b)) if b >= a => from(a, b.saturating_add(1).min(len), len),
        _ => Part::Whole,
    }
}

fn from(start: u64, end: u64, len: u64) -> Part {
    if start >= len {
        Part::Unsatisfiable
    } else {
        Part::Bytes { start, end }
    }
}

/// Digits as a number, saturating (a position past any body is past this one's end too);
/// `None` if empty or not all digits.
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(range: &str, len: u64) -> Part {
        Part::of(
            [(&b"Range"[..], range.as_bytes())].into_iter(),
            len,
            None,
            None,
        )
    }

    fn bytes(start: u64, end: u64) -> Part {
        Part::Bytes { start, end }
    }

    #[test]
    fn the_length_a_content_range_names() {
        assert_eq!(total_length(b"bytes 0-9/1000"), Some(1000));
        assert_eq!(total_length(b" Bytes 5-9/10 "), Some(10));
        for none in [
            &b"bytes 0-9/*"[..],
            b"bytes */1000x",
            b"items 0-1/2",
            b"bytes 0-9/",
            b"bytes 0-9/99999999999999999999",
            b"",
        ] {
            assert_eq!(
                total_length(none),
                None,
                "{:?}",
                String::from_utf8_lossy(none)
            );
        }
    }

    #[test]
    fn which_ranges_a_whole_fetch_would_answer() {
        let f = |v: &'static [u8]| [(&b"Range"[..], v)];
        assert!(asks_part(f(b"bytes=100-").into_iter()));
        assert!(asks_part(f(b" BYTES=0-9 ").into_iter()));
        assert!(asks_part(f(b"bytes=-500").into_iter()));
        assert!(!asks_part(f(b"bytes=0-").into_iter()));
        assert!(!asks_part(f(b"items=1-2").into_iter()));
        assert!(!asks_part(f(b"bytes=").into_iter()));
        assert!(!asks_part(std::iter::empty()));
        let two = [(&b"range"[..], &b"bytes=1-2"[..]), (b"range", b"bytes=3-4")];
        assert!(!asks_part(two.into_iter()));
    }

    #[test]
    fn single_ranges_of_every_form() {
        assert_eq!(part("bytes=0-9", 100), bytes(0, 10));
        assert_eq!(part("bytes=90-", 100), bytes(90, 100));
        assert_eq!(part("bytes=-10", 100), bytes(90, 100));
        assert_eq!(
            part("bytes=-1000", 100),
            bytes(0, 100),
            "a suffix longer than the body"
        );
        assert_eq!(
            part("bytes=50-1000", 100),
            bytes(50, 100),
            "clamped to the end"
        );
        assert_eq!(part("bytes=99-99", 100), bytes(99, 100));
        assert_eq!(part("BYTES= 5-6 ", 100), bytes(5, 7), "unit case, spaces");
        assert_eq!(part("bytes=0-99999999999999999999999", 100), bytes(0, 100));
    }

    #[test]
    fn past_the_end_is_unsatisfiable() {
        assert_eq!(part("bytes=100-", 100), Part::Unsatisfiable);
        assert_eq!(part("bytes=100-200", 100), Part::Unsatisfiable);
        assert_eq!(
            part("bytes=99999999999999999999999-", 100),
            Part::Unsatisfiable
        );
        assert_eq!(part("bytes=-0", 100), Part::Unsatisfiable);
        assert_eq!(part("bytes=0-", 0), Part::Unsatisfiable);
        assert_eq!(
            part("bytes=-5", 0),
            Part::Whole,
            "RFC 9110 §14.1.1: satisfiable, no 206"
        );
    }

    #[test]
    fn what_is_not_served_is_ignored() {
        for v in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-1",
            "bytes",
            "",
        ] {
            assert_eq!(part(v, 100), Part::Whole, "{v:?}");
        }
        let two = [(&b"range"[..], &b"bytes=0-1"[..]), (b"range", b"bytes=2-3")];
        assert_eq!(Part::of(two.into_iter(), 100, None, None), Part::Whole);
        assert_eq!(Part::of(std::iter::empty(), 100, None, None), Part::Whole);
    }

    #[test]
    fn if_range_takes_a_strong_etag_or_the_exact_date() {
        let lm = parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT");
        let with = |if_range: &str, etag: Option<&[u8]>| {
            let f = [
                (&b"Range"[..], &b"bytes=0-0"[..]),
                (b"If-Range", if_range.as_bytes()),
            ];
            Part::of(f.into_iter(), 10, etag, lm)
        };
        assert_eq!(with("\"v1\"", Some(b"\"v1\"")), bytes(0, 1));
        assert_eq!(with("\"v2\"", Some(b"\"v1\"")), Part::Whole);
        assert_eq!(
            with("W/\"v1\"", Some(b"W/\"v1\"")),
            Part::Whole,
            "weak never matches"
        );
        assert_eq!(with("\"v1\"", Some(b"W/\"v1\"")), Part::Whole);
        assert_eq!(with("\"v1\"", None), Part::Whole);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT", None), bytes(0, 1));
        assert_eq!(with("Sun, 06 Nov 1994 08:49:38 GMT", None), Part::Whole);
        assert_eq!(with("garbage", None), Part::Whole);
    }

    #[test]
    fn content_range_values() {
        let mut out = Vec::new();
        assert_eq!(
            bytes(0, 10).content_range(100, &mut out),
            Some(&b"bytes 0-9/100"[..])
        );
        assert_eq!(
            Part::Unsatisfiable.content_range(100, &mut out),
            Some(&b"bytes */100"[..])
        );
        assert_eq!(Part::Whole.content_range(100, &mut out), None);
    }
}
