//! Feeds stage 4, *balance*: the pure, incremental matcher of an HTTP health check's
//! response. The prober ([`super::prober`]) feeds it whatever bytes arrive; it checks the
//! status against the check's ranges and, if asked, searches the (de-chunked) body. It never
//! panics on any input, never holds more than [`MAX_HEAD_BYTES`] + [`MAX_BODY_BYTES`], and
//! parses the head only once its end may have arrived, so a dripping backend costs linear work.

use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::{
    parse_response, BodyFraming, HeadLimits, Method, ParseError, Parsed, ResponseHead,
};

use super::check::{HttpCheck, ProbeFailure, MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// Header fields a check response may carry.
const MAX_HEADERS: usize = 64;

/// What the matcher concluded so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    NeedMore,
    Pass,
    Fail(ProbeFailure),
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilEof,
}

#[derive(Debug)]
enum Phase {
    Head,
    Body {
        framing: Framing,
        body: Vec<u8>,
        /// Body bytes already searched (minus the needle overlap).
        searched: usize,
    },
    Done {
        verdict: Verdict,
    },
}

/// Incremental matcher of one HTTP check response.
#[derive(Debug)]
pub struct ResponseMatcher<'a> {
    check: &'a HttpCheck,
    head: Vec<u8>,
    /// Bytes of `head` already searched for the end of the head (`\n\r\n` or `\n\n`), so a
    /// backend dripping bytes costs linear work, not a re-parse per read.
    scanned: usize,
    phase: Phase,
}

impl<'a> ResponseMatcher<'a> {
    pub fn new(check: &'a HttpCheck) -> ResponseMatcher<'a> {
        ResponseMatcher {
            check,
            head: Vec::new(),
            scanned: 0,
            phase: Phase::Head,
        }
    }

    /// Feeds newly received bytes. Once the verdict is `Pass` or `Fail` it stays so and
    /// further input is ignored: callers stop reading at the first final verdict.
    pub fn feed(&mut self, data: &[u8]) -> Verdict {
        match &self.phase {
            Phase::Done { verdict } => verdict.clone(),
            Phase::Head => {
                let room = (MAX_HEAD_BYTES + MAX_BODY_BYTES).saturating_sub(self.head.len());
                self.head.extend_from_slice(&data[..data.len().min(room)]);
                let v = self.parse_head();
                self.settle(v)
            }
            Phase::Body { .. } => {
                let v = self.feed_body(data);
                self.settle(v)
            }
        }
    }

    /// The backend closed the connection (EOF).
    pub fn finish(&mut self) -> Verdict {
        let v = match &self.phase {
            Phase::Done { verdict } => return verdict.clone(),
            Phase::Head => Verdict::Fail(ProbeFailure::Closed),
            Phase::Body { .. } => Verdict::Fail(ProbeFailure::BodyMismatch),
        };
        self.settle(v)
    }

    fn settle(&mut self, v: Verdict) -> Verdict {
        if v != Verdict::NeedMore {
            self.phase = Phase::Done { verdict: v.clone() };
            self.head = Vec::new();
        }
        v
    }

    fn parse_head(&mut self) -> Verdict {
        loop {
            let from = self.scanned.saturating_sub(2);
            let ended = self.head.get(from..).is_some_and(|tail| {
                tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
            });
            self.scanned = self.head.len();
            if !ended {
                if self.head.len() > MAX_HEAD_BYTES {
                    return Verdict::Fail(ProbeFailure::Malformed {
                        what: "response head too large",
                    });
                }
                return Verdict::NeedMore;
            }
            // The request path's own parser, so a probe fails on what a client's request
            // would get a 502 for (ambiguous framing, obs-fold, a bad status line), whether
            // or not the body is read.
            let limits = HeadLimits {
                max_header_bytes: MAX_HEAD_BYTES,
                max_headers: MAX_HEADERS,
                max_uri_bytes: 0,
            };
            let mut resp = ResponseHead::default();
            match parse_response(&self.head, &limits, &mut resp) {
                Ok(Parsed::Complete(())) => {}
                Ok(Parsed::Partial) => return Verdict::NeedMore,
                Err(ParseError::HeadTooLarge) => {
                    return Verdict::Fail(ProbeFailure::Malformed {
                        what: "response head too large",
                    });
                }
                Err(ParseError::TooManyHeaders) => {
                    return Verdict::Fail(ProbeFailure::Malformed {
                        what: "too many header fields",
                    });
                }
                Err(ParseError::Malformed(what)) => {
                    return Verdict::Fail(ProbeFailure::Malformed { what });
                }
                Err(_) => {
                    return Verdict::Fail(ProbeFailure::Malformed {
                        what: "bad response head",
                    });
                }
            }
            let (len, status) = (resp.head_len, resp.status);
            if (100..200).contains(&status) && status != 101 {
                // Interim response: drop it and parse the next head.
                self.head.drain(..len);
                self.scanned = 0;
                continue;
            }
            if !self.check.expect.contains(status) {
                return Verdict::Fail(ProbeFailure::Status { status });
            }
            let method = if self.check.method.eq_ignore_ascii_case("HEAD") {
                Method::Head
            } else {
                Method::Get
            };
            let framing = match resp.framing(method) {
                BodyFraming::None => Framing::Length { remaining: 0 },
                BodyFraming::Length(n) => Framing::Length { remaining: n },
                BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new(MAX_HEAD_BYTES)),
                BodyFraming::UntilClose => Framing::UntilEof,
            };
            let Some(needle) = &self.check.body_contains else {
                return Verdict::Pass;
            };
            if needle.is_empty() {
                return Verdict::Pass;
            }
            let rest = self.head.split_off(len);
            self.head = Vec::new();
            self.phase = Phase::Body {
                framing,
                body: Vec::new(),
                searched: 0,
            };
            return self.feed_body(&rest);
        }
    }

    fn feed_body(&mut self, mut data: &[u8]) -> Verdict {
        let Some(needle) = self.check.body_contains.as_deref() else {
            return Verdict::Pass;
        };
        let Phase::Body {
            framing,
            body,
            searched,
        } = &mut self.phase
        else {
            return Verdict::NeedMore;
        };
        let push = |body: &mut Vec<u8>, bytes: &[u8]| {
            let room = MAX_BODY_BYTES - body.len();
            body.extend_from_slice(&bytes[..bytes.len().min(room)]);
        };
        let complete = match framing {
            Framing::Length { remaining } => {
                let take = (*remaining).min(data.len() as u64) as usize;
                push(body, &data[..take]);
                *remaining -= take as u64;
                *remaining == 0
            }
            Framing::UntilEof => {
                push(body, data);
                false
            }
            Framing::Chunked(dec) => loop {
                if data.is_empty() {
                    break false;
                }
                let step = match dec.decode(data) {
                    Ok(s) => s,
                    Err(_) => {
                        return Verdict::Fail(ProbeFailure::Malformed {
                            what: "bad chunked body",
                        });
                    }
                };
                if let Some(payload) = data.get(step.data.0..step.data.1) {
                    push(body, payload);
                }
                if step.done {
                    break true;
                }
                if step.consumed == 0 || body.len() >= MAX_BODY_BYTES {
                    break false;
                }
                data = data.get(step.consumed..).unwrap_or(&[]);
            },
        };
        let from = searched.saturating_sub(needle.len().saturating_sub(1));
        if contains(&body[from..], needle) {
            return Verdict::Pass;
        }
        *searched = body.len();
        if complete || body.len() >= MAX_BODY_BYTES {
            return Verdict::Fail(ProbeFailure::BodyMismatch);
        }
        Verdict::NeedMore
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(expect: &str, body: Option<&str>) -> HttpCheck {
        HttpCheck {
            expect: expect.parse().unwrap(),
            body_contains: body.map(|b| b.as_bytes().to_vec()),
            ..HttpCheck::default()
        }
    }

    /// Feeds `input` split at every position (and byte by byte); all must agree.
    fn verdict(check: &HttpCheck, input: &[u8], eof: bool) -> Verdict {
        let whole = run(check, &[input], eof);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(run(check, &[a, b], eof), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(check, &bytes, eof), whole, "byte by byte");
        whole
    }

    fn run(check: &HttpCheck, parts: &[&[u8]], eof: bool) -> Verdict {
        let mut m = ResponseMatcher::new(check);
        for p in parts {
            match m.feed(p) {
                Verdict::NeedMore => {}
                v => return v,
            }
        }
        if eof {
            m.finish()
        } else {
            Verdict::NeedMore
        }
    }

    #[test]
    fn framing_the_request_path_refuses_fails_the_probe() {
        // Without a body to search the body is not read, but its framing is still checked:
        // these heads get a client 502 on the request path (docs/SMUGGLING.md rows 90, 91,
        // 101).
        let c = http("200", None);
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
        ] {
            let v = verdict(&c, head, false);
            assert!(
                matches!(v, Verdict::Fail(ProbeFailure::Malformed { .. })),
                "{}: {v:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn status_only() {
        let c = http("200-399", None);
        assert_eq!(
            verdict(&c, b"HTTP/1.1 200 OK\r\n\r\n", false),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&c, b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n", false),
            Verdict::Pass
        );
        assert_eq!(
            verdict(
                &c,
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                false
            ),
            Verdict::Fail(ProbeFailure::Status { status: 503 })
        );
        // Interim 1xx responses are skipped.
        assert_eq!(
            verdict(
                &c,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                false
            ),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&c, b"HTTP/1.1 200 OK\r\n", true),
            Verdict::Fail(ProbeFailure::Closed)
        );
        assert_eq!(verdict(&c, b"", true), Verdict::Fail(ProbeFailure::Closed));
    }

    #[test]
    fn garbage_fails_without_panicking() {
        let c = http("200-399", Some("ok"));
        for input in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"\x00\xff\xfe\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                matches!(verdict(&c, input, true), Verdict::Fail(_)),
                "{input:?}"
            );
        }
        // An endless head is refused once it passes the limit.
        let mut m = ResponseMatcher::new(&c);
        let mut v = m.feed(b"HTTP/1.1 200 OK\r\n");
        let filler = [b'a'; 1000];
        let mut fed = 0;
        while v == Verdict::NeedMore && fed < 1_000_000 {
            v = m.feed(b"X-Filler: ");
            if v == Verdict::NeedMore {
                v = m.feed(&filler);
            }
            if v == Verdict::NeedMore {
                v = m.feed(b"\r\n");
            }
            fed += 1012;
        }
        assert!(
            matches!(v, Verdict::Fail(ProbeFailure::Malformed { .. })),
            "{v:?}"
        );
        assert!(fed < 2 * MAX_HEAD_BYTES);
    }

    #[test]
    fn body_with_content_length() {
        let c = http("200", Some("\"status\":\"up\""));
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"status\":\"up\"}\n";
        assert_eq!(verdict(&c, ok, true), Verdict::Pass);
        let down = b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{\"status\":\"down\"}\n";
        assert_eq!(
            verdict(&c, down, false),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
        // Truncated: EOF before the length is reached and before the text.
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{\"sta";
        assert_eq!(
            verdict(&c, cut, true),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
        // Bytes after the declared length are not part of the body.
        let after = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxx\"status\":\"up\"";
        assert_eq!(
            verdict(&c, after, true),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
    }

    #[test]
    fn body_chunked_across_chunk_boundaries() {
        let c = http("200-299", Some("healthy"));
        let ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nheal\r\n3;x=y\r\nthy\r\n0\r\n\r\n";
        assert_eq!(verdict(&c, ok, true), Verdict::Pass);
        let no = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nheal\r\n0\r\n\r\n";
        assert_eq!(
            verdict(&c, no, false),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
    }

    #[test]
    fn body_until_eof_and_cap() {
        let c = http("200", Some("ready"));
        assert_eq!(
            verdict(&c, b"HTTP/1.0 200 OK\r\n\r\nall ready now", false),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&c, b"HTTP/1.0 200 OK\r\n\r\nnot yet", true),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
        // The text beyond MAX_BODY_BYTES is not found.
        let mut m = ResponseMatcher::new(&c);
        assert_eq!(m.feed(b"HTTP/1.0 200 OK\r\n\r\n"), Verdict::NeedMore);
        let filler = vec![b'.'; 4096];
        let mut v = Verdict::NeedMore;
        for _ in 0..(MAX_BODY_BYTES / 4096) {
            v = m.feed(&filler);
            if v != Verdict::NeedMore {
                break;
            }
        }
        assert_eq!(v, Verdict::Fail(ProbeFailure::BodyMismatch));
        assert_eq!(
            m.feed(b"ready"),
            Verdict::Fail(ProbeFailure::BodyMismatch),
            "after a verdict input is ignored"
        );
        assert_eq!(m.finish(), Verdict::Fail(ProbeFailure::BodyMismatch));
    }

    #[test]
    fn bodyless_responses() {
        let c = http("200-399", Some("x"));
        assert_eq!(
            verdict(&c, b"HTTP/1.1 204 No Content\r\n\r\nx", false),
            Verdict::Fail(ProbeFailure::BodyMismatch)
        );
        assert_eq!(
            verdict(&http("200", Some("")), b"HTTP/1.1 200 OK\r\n\r\n", false),
            Verdict::Pass
        );
    }
}
