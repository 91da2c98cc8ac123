//! What the test origin ([`super::Origin`]) writes back: the built-in path-based answers
//! ([`default_reply`]) and the writer for every [`Reply`] a handler may return, in each
//! framing (`Content-Length`, chunked in uneven chunk sizes, close-delimited, none).

use super::super::pattern;
use super::{BodyMode, ConnReader, Recorded, Reply};
use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn std_headers(name: &str, rec: &Recorded) -> Vec<(String, String)> {
    vec![
        ("X-Backend".into(), name.into()),
        ("X-Path".into(), rec.target.clone()),
        ("X-Method".into(), rec.method.clone()),
        ("X-Body-Len".into(), rec.body_len.to_string()),
        ("X-Body-Sha256".into(), rec.body_sha256.clone()),
        (
            "X-Body-Pattern".into(),
            match rec.pattern_mismatch {
                None => "ok".into(),
                Some(o) => format!("mismatch@{o}"),
            },
        ),
        ("X-Conn".into(), rec.conn.to_string()),
        ("X-Seq".into(), rec.seq.to_string()),
    ]
}

/// Built-in behaviour:
/// - `/gen/N/cl|chunked|close`: N bytes of the test pattern with that framing;
/// - `/echo`: the request body back (Content-Length);
/// - `/status/NNN`: that status (no body for 1xx/204/304);
/// - anything else: 200 with the origin's name as body.
///
/// Every response carries X-Backend, X-Path, X-Method, X-Body-Len,
/// X-Body-Sha256, X-Body-Pattern, X-Conn and X-Seq.
pub fn default_reply(name: &str, rec: &Recorded) -> Reply {
    let path = rec.path();
    let headers = std_headers(name, rec);
    if let Some(rest) = path.strip_prefix("/gen/") {
        let mut it = rest.split('/');
        let len: u64 = it.next().and_then(|s| s.parse().ok()).expect("/gen/N/mode");
        let mode = match it.next() {
            Some("cl") => BodyMode::Length,
            Some("chunked") => BodyMode::Chunked,
            Some("close") => BodyMode::Close,
            m => panic!("bad /gen mode {m:?}"),
        };
        return Reply::Pattern { len, mode };
    }
    if path == "/echo" {
        return Reply::Response {
            status: 200,
            headers,
            body: rec.body.clone(),
            mode: BodyMode::Length,
            close_after: false,
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status: u16 = code.parse().expect("/status/NNN");
        let no_body = (100..200).contains(&status) || status == 204 || status == 304;
        return Reply::Response {
            status,
            headers,
            body: if no_body {
                vec![]
            } else {
                format!("status {status}\n").into_bytes()
            },
            mode: if no_body {
                BodyMode::Omit
            } else {
                BodyMode::Length
            },
            close_after: false,
        };
    }
    Reply::Response {
        status: 200,
        headers,
        body: name.as_bytes().to_vec(),
        mode: BodyMode::Length,
        close_after: false,
    }
}

const CHUNK_SIZES: &[usize] = &[1, 10, 4096, 8192, 65536, 100_003, 7];

fn write_chunked(
    w: &mut dyn Write,
    body_len: u64,
    data: &mut dyn FnMut(u64, usize) -> Vec<u8>,
) -> io::Result<()> {
    let mut off = 0u64;
    let mut i = 0;
    while off < body_len {
        let n = (CHUNK_SIZES[i % CHUNK_SIZES.len()] as u64).min(body_len - off) as usize;
        write!(w, "{n:x}\r\n")?;
        w.write_all(&data(off, n))?;
        w.write_all(b"\r\n")?;
        off += n as u64;
        i += 1;
    }
    w.write_all(b"0\r\n\r\n")
}

/// Returns Ok(true) if the connection may be kept alive.
pub(super) fn write_reply(
    name: &str,
    stream: &mut TcpStream,
    rec: &Recorded,
    reply: Reply,
    rd: &mut ConnReader,
) -> io::Result<bool> {
    let is_head = rec.method.eq_ignore_ascii_case("HEAD");
    match reply {
        Reply::Default => unreachable!(),
        Reply::Hang => {
            // Hold the connection until the peer closes it (or the origin stops).
            let _ = rd.stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut b = [0u8; 4096];
            loop {
                match rd.stream.read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            Ok(false)
        }
        Reply::Close => Ok(false),
        Reply::Raw { bytes, close_after } => {
            stream.write_all(&bytes)?;
            Ok(!close_after)
        }
        Reply::Pattern { len, mode } => {
            let mut w = BufWriter::with_capacity(1 << 16, &mut *stream);
            write!(
                w,
                "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nX-Pattern-Len: {len}\r\n"
            )?;
            match mode {
                BodyMode::Length => write!(w, "Content-Length: {len}\r\n\r\n")?,
                BodyMode::Chunked => write!(w, "Transfer-Encoding: chunked\r\n\r\n")?,
                BodyMode::Close => write!(w, "Connection: close\r\n\r\n")?,
                BodyMode::Omit => write!(w, "\r\n")?,
            }
            if !is_head {
                match mode {
                    BodyMode::Length | BodyMode::Close => pattern::write_pattern(&mut w, len)?,
                    BodyMode::Chunked => write_chunked(&mut w, len, &mut |off, n| {
                        let mut v = Vec::with_capacity(n);
                        let mut o = off;
                        while v.len() < n {
                            let k = (n - v.len()).min(pattern::MAX_SLICE);
                            v.extend_from_slice(pattern::pattern_slice(o, k));
                            o += k as u64;
                        }
                        v
                    })?,
                    BodyMode::Omit => {}
                }
            }
            w.flush()?;
            Ok(mode != BodyMode::Close)
        }
        Reply::Response {
            status,
            headers,
            body,
            mode,
            close_after,
        } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            for (n, v) in &headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            match mode {
                BodyMode::Length => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
                BodyMode::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
                BodyMode::Close => head.push_str("Connection: close\r\n"),
                BodyMode::Omit => {}
            }
            head.push_str("\r\n");
            let mut out = head.into_bytes();
            if !is_head {
                match mode {
                    BodyMode::Length | BodyMode::Close => out.extend_from_slice(&body),
                    BodyMode::Chunked => {
                        let mut v = Vec::new();
                        write_chunked(&mut v, body.len() as u64, &mut |off, n| {
                            body[off as usize..off as usize + n].to_vec()
                        })?;
                        out.extend_from_slice(&v);
                    }
                    BodyMode::Omit => {}
                }
            }
            stream.write_all(&out)?;
            Ok(mode != BodyMode::Close && !close_after)
        }
    }
}
