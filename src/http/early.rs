//! Stage 6, *forward*, while a request body goes out: what the backend sent meanwhile.
//! A backend may answer before it read the whole body (a `401`, a `413` to an upload), or
//! send interim heads (`100`, `103`) unasked; the body's relay looks at those bytes, without
//! parsing them as a response yet, to tell which ([`crate::forward::body`], and over TLS
//! [`crate::tls::stream::TlsStream`]).

/// Whether `b` starts an error response (`HTTP/1.x ` and a 4xx or 5xx status: RFC 9112
/// §9.5's "an error response" that tells the client to stop sending). Fewer than 10 bytes is
/// not yet.
fn starts_error_response(b: &[u8]) -> bool {
    starts_final(b) && b[9] >= b'4'
}

/// Whether `b` is, or may still become, the start of an interim (1xx) response head.
fn may_start_interim(b: &[u8]) -> bool {
    let n = b.len().min(10);
    b[..n]
        .iter()
        .zip(b"HTTP/1.x 1")
        .all(|(&c, &p)| c == p || p == b'x' && c.is_ascii_digit())
}

/// What a backend sent before the whole request went out, past the complete interim (1xx)
/// heads at its start (a `100`, a `103`: relayed or dropped later, never the answer).
fn after_interim(mut b: &[u8]) -> &[u8] {
    while !b.is_empty() && may_start_interim(b) {
        let end = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
        let end = match b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            Some(crlf) => Some(end.map_or(crlf, |lf| lf.min(crlf))),
            None => end,
        };
        match end {
            Some(end) => b = &b[end..],
            None => return b,
        }
    }
    b
}

/// Whether `b`, the bytes a backend sent while the request's body was still going out,
/// hold an early answer that asks the body to stop (RFC 9112 §9.5): after any complete
/// interim heads, an error answer (a 401, a 413 to an upload), or any final head, complete
/// here, that says the backend closes the connection (`Connection: close`). A `100` it sent
/// unasked does not, and neither does a 2xx or 3xx that keeps the connection: a backend that
/// streams its answer while it reads (an echo, a transcoder) or answers at once and then
/// reads the rest gets the whole body, its answer read once the body is out (or once the
/// body's write has timed out, [`holds_answer`]).
pub fn holds_final_response(b: &[u8]) -> bool {
    let rest = after_interim(b);
    starts_error_response(rest) || (starts_final(rest) && head_says_close(rest))
}

/// `HTTP/1.x ` and a status that is not 1xx.
fn starts_final(b: &[u8]) -> bool {
    b.len() >= 10 && b.starts_with(b"HTTP/1.") && b[8] == b' ' && (b'2'..=b'9').contains(&b[9])
}

/// Whether the head at the start of `b` is complete and has a `Connection` field with the
/// `close` option (an incomplete head says nothing yet: the body goes on).
fn head_says_close(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    b[..end].split(|&c| c == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"connection")
            && line[colon + 1..]
                .split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Whether `b`, what a backend sent before a request body's write timed out, is its answer
/// to read: anything but interim heads (complete, or a start that may still become one).
/// A final response, or bytes that are no response at all (the head's read refuses them as
/// a 502), are read; a backend that sent only a `100` and then stopped is not waited for a
/// second time.
pub fn holds_answer(b: &[u8]) -> bool {
    let rest = after_interim(b);
    !rest.is_empty() && !may_start_interim(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_answer_is_told_from_interim_heads_at_every_split() {
        let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
        let cont = b"HTTP/1.1 100 Continue\n\n";
        let answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nno key";
        // Final: after any complete interim heads, a final status line.
        for bytes in [
            answer.to_vec(),
            [&interim[..], answer].concat(),
            [&cont[..], interim, answer].concat(),
        ] {
            assert!(holds_final_response(&bytes));
            assert!(holds_answer(&bytes));
            // Every prefix: final once 10 bytes of the final status line are there, never before.
            let start = bytes.len() - answer.len();
            for cut in 0..bytes.len() {
                let part = &bytes[..cut];
                assert_eq!(holds_final_response(part), cut >= start + 10, "{cut}");
                assert_eq!(holds_answer(part), cut >= start + 10, "{cut}");
            }
        }
        // Only interim heads (or the start of one): no answer, whatever the split.
        for bytes in [&interim[..], cont, b"HTTP/1.1 1", b"HTT", b""] {
            assert!(!holds_final_response(bytes));
            assert!(!holds_answer(bytes));
        }
        // Bytes that are no response, and a 2xx or 3xx (a backend that streams its answer
        // while it reads): not an early error answer (the body goes on), but an answer to
        // read once the body's write timed out.
        for bytes in [
            &b"garbage!!!\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 099 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n",
            b"HTTP/1.1 307 Temporary Redirect\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n",
            b"HTTP/1.1 200 OK\r\nX-Connection: close\r\n\r\n",
        ] {
            assert!(!holds_final_response(bytes), "{bytes:?}");
            assert!(holds_answer(bytes), "{bytes:?}");
        }
        // A complete 2xx or 3xx head that closes the connection stops the body.
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 303 See Other\r\nconnection: keep-alive, Close\r\n\r\n",
        ] {
            assert!(holds_final_response(bytes), "{bytes:?}");
        }
    }
}
