//! Observability, access-log templates: `[log] access_format` written as a line of
//! `$variables`, as nginx's `log_format` is, parsed once when the configuration is loaded
//! into [`Template`] pieces, and rendered for each logged request by
//! [`crate::observe::access`] (after *respond*). The variables carry nginx's names where
//! nginx has the same fact, so an operator's existing format mostly carries over; the few
//! that are edgeshard's own (`$route`, `$upstream_name`, `$shard`) say so in CONFIG.md.

use std::io::Write;
use std::net::SocketAddr;

use super::access::{Outcome, RequestFields};

/// How variable values are written into the line (nginx's `escape=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// `"`, `\`, control and non-ASCII bytes as `\xHH`; an unset variable is `-`.
    Default,
    /// As inside a JSON string: `\"`, `\\`, `\u00XX` (valid UTF-8 kept); an unset variable
    /// is empty, so a template can put every value between quotes.
    Json,
}

/// One fact of the request or its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    RemoteAddr,
    RemotePort,
    RemoteUser,
    Scheme,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Host,
    Status,
    BodyBytesSent,
    RequestLength,
    RequestTime,
    UpstreamResponseTime,
    UpstreamConnectTime,
    UpstreamHeaderTime,
    UpstreamQueueTime,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamName,
    UpstreamCacheStatus,
    RequestId,
    Route,
    SslProtocol,
    SslCipher,
    SslServerName,
    Shard,
    ConnectionRequests,
    /// `$error_reason`: why the proxy answered itself or the exchange ended early.
    ErrorReason,
    /// `$http_referer` and `$http_user_agent`: copied for the built-in formats already.
    Referer,
    UserAgent,
    /// `$http_NAME`: the request's first field of that name (index into
    /// [`Template::headers`]).
    Header(usize),
}

/// The variables by name (`$http_NAME` is handled apart).
const VARS: &[(&str, Var)] = &[
    ("remote_addr", Var::RemoteAddr),
    ("remote_port", Var::RemotePort),
    ("remote_user", Var::RemoteUser),
    ("scheme", Var::Scheme),
    ("time_local", Var::TimeLocal),
    ("time_iso8601", Var::TimeIso8601),
    ("msec", Var::Msec),
    ("request", Var::Request),
    ("request_method", Var::RequestMethod),
    ("request_uri", Var::RequestUri),
    ("uri", Var::Uri),
    ("args", Var::Args),
    ("query_string", Var::Args),
    ("server_protocol", Var::ServerProtocol),
    ("host", Var::Host),
    ("status", Var::Status),
    ("body_bytes_sent", Var::BodyBytesSent),
    ("request_length", Var::RequestLength),
    ("request_time", Var::RequestTime),
    ("upstream_response_time", Var::UpstreamResponseTime),
    ("upstream_connect_time", Var::UpstreamConnectTime),
    ("upstream_header_time", Var::UpstreamHeaderTime),
    ("upstream_queue_time", Var::UpstreamQueueTime),
    ("upstream_addr", Var::UpstreamAddr),
    ("upstream_status", Var::UpstreamStatus),
    ("upstream_name", Var::UpstreamName),
    ("upstream_cache_status", Var::UpstreamCacheStatus),
    ("request_id", Var::RequestId),
    ("route", Var::Route),
    ("ssl_protocol", Var::SslProtocol),
    ("ssl_cipher", Var::SslCipher),
    ("ssl_server_name", Var::SslServerName),
    ("shard", Var::Shard),
    ("connection_requests", Var::ConnectionRequests),
    ("error_reason", Var::ErrorReason),
];

/// The longest template accepted, and the most distinct `$http_` fields it may name.
pub const MAX_TEMPLATE: usize = 4096;
pub const MAX_HEADERS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<[u8]>),
    /// A variable, and whether the text before it ends with `"` (JSON: an unset value
    /// between quotes is an empty string; anywhere else it is `null`).
    Var(Var, bool),
}

/// A parsed `access_format` template.
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// Lower-case field names of its `$http_NAME` variables, each once.
    pub headers: Vec<Box<[u8]>>,
    pub escape: Escape,
    /// Whether it writes `$remote_user` (only then is `Authorization` decoded).
    pub user: bool,
}

/// Parses `src`: text with `$name` or `${name}` variables. The error says what is wrong,
/// for the config error that names the field.
pub fn parse(src: &str, escape: Escape) -> Result<Template, String> {
    if src.len() > MAX_TEMPLATE {
        return Err(format!("is {} bytes; at most {MAX_TEMPLATE}", src.len()));
    }
    if let Some(c) = src.chars().find(|c| c.is_control()) {
        return Err(format!(
            "holds the control character {c:?}; each line ends by itself"
        ));
    }
    let mut t = Template {
        pieces: Vec::new(),
        headers: Vec::new(),
        escape,
        user: false,
    };
    let mut text = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find('$') {
        text.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => return Err(format!("\"${{{inner}\" has no closing }}")),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let var = variable(name, &mut t.headers)?;
        let quoted = text.last() == Some(&b'"');
        if !text.is_empty() {
            t.pieces
                .push(Piece::Text(std::mem::take(&mut text).into_boxed_slice()));
        }
        t.user |= var == Var::RemoteUser;
        t.pieces.push(Piece::Var(var, quoted));
        rest = next;
    }
    text.extend_from_slice(rest.as_bytes());
    if !text.is_empty() {
        t.pieces.push(Piece::Text(text.into_boxed_slice()));
    }
    if !t.pieces.iter().any(|p| matches!(p, Piece::Var(..))) {
        return Err("names no variable; write combined, json, or a line with $variables".into());
    }
    Ok(t)
}

fn variable(name: &str, headers: &mut Vec<Box<[u8]>>) -> Result<Var, String> {
    if name.is_empty() {
        return Err("has a \"$\" without a variable name after it".into());
    }
    if let Some((_, v)) = VARS.iter().find(|(n, _)| *n == name) {
        return Ok(*v);
    }
    if let Some(field) = name.strip_prefix("http_") {
        let ok = !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!("${name}: not a field name after http_"));
        }
        let lower: Box<[u8]> = field
            .bytes()
            .map(|b| {
                if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect();
        match &*lower {
            b"referer" => return Ok(Var::Referer),
            b"user-agent" => return Ok(Var::UserAgent),
            _ => {}
        }
        let i = match headers.iter().position(|h| *h == lower) {
            Some(i) => i,
            None if headers.len() >= MAX_HEADERS => {
                return Err(format!("names more than {MAX_HEADERS} $http_ fields"))
            }
            None => {
                headers.push(lower);
                headers.len() - 1
            }
        };
        return Ok(Var::Header(i));
    }
    Err(format!(
        "${name} is not a variable; known: {}, and $http_NAME",
        VARS.iter()
            .map(|(n, _)| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The clock as a line sees it: the formatted second and the milliseconds within it.
pub struct Clock<'a> {
    pub unix: u64,
    pub millis: u32,
    pub local: &'a str,
    pub iso: &'a str,
}

/// What a value is, before escaping.
enum Value<'a> {
    Bytes(&'a [u8]),
    Num(u64),
    Secs(u64),
    Unset,
}

impl Template {
    /// Appends one line for `req` and `out`.
    pub fn render(
        &self,
        buf: &mut Vec<u8>,
        clock: &Clock<'_>,
        shard: usize,
        req: &RequestFields,
        out: &Outcome<'_>,
    ) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => buf.extend_from_slice(t),
                Piece::Var(v, quoted) => self.var(buf, *v, *quoted, clock, shard, req, out),
            }
        }
        buf.push(b'\n');
    }

    #[allow(clippy::too_many_arguments)]
    fn var(
        &self,
        buf: &mut Vec<u8>,
        var: Var,
        quoted: bool,
        clock: &Clock<'_>,
        shard: usize,
        req: &RequestFields,
        out: &Outcome<'_>,
    ) {
        let parsed = !req.method().is_empty();
        fn text(s: Option<&str>) -> Value<'_> {
            s.map_or(Value::Unset, |s| Value::Bytes(s.as_bytes()))
        }
        if !out.earlier.is_empty()
            && matches!(
                var,
                Var::UpstreamAddr
                    | Var::UpstreamStatus
                    | Var::UpstreamResponseTime
                    | Var::UpstreamConnectTime
                    | Var::UpstreamHeaderTime
            )
        {
            return self.tries(buf, var, quoted, out);
        }
        let value = match var {
            Var::RemoteAddr => {
                let _ = write!(buf, "{}", out.client);
                return;
            }
            Var::UpstreamAddr => match out.backend {
                Some(a) => {
                    let _ = write!(buf, "{a}");
                    return;
                }
                None => Value::Unset,
            },
            Var::RemotePort => Value::Num(u64::from(out.peer_port)),
            Var::Scheme => Value::Bytes(if out.tls.is_some() { b"https" } else { b"http" }),
            Var::UpstreamStatus => out
                .upstream_status
                .map_or(Value::Unset, |s| Value::Num(u64::from(s))),
            Var::TimeLocal => Value::Bytes(clock.local.as_bytes()),
            Var::TimeIso8601 => {
                buf.extend_from_slice(clock.iso.as_bytes());
                buf.extend_from_slice(b"+00:00");
                return;
            }
            Var::Msec => {
                let _ = write!(buf, "{}.{:03}", clock.unix, clock.millis);
                return;
            }
            Var::Request if parsed => {
                self.escaped(buf, req.method());
                buf.push(b' ');
                self.escaped(buf, req.target());
                buf.push(b' ');
                buf.extend_from_slice(protocol(req));
                return;
            }
            Var::RequestMethod if parsed => Value::Bytes(req.method()),
            Var::RequestUri if parsed => Value::Bytes(origin_form(req.target())),
            Var::Uri if parsed => Value::Bytes(split_query(origin_form(req.target())).0),
            Var::Args => split_query(origin_form(req.target()))
                .1
                .map_or(Value::Unset, Value::Bytes),
            Var::ServerProtocol if parsed => Value::Bytes(protocol(req)),
            Var::Request | Var::RequestMethod | Var::RequestUri | Var::Uri => Value::Unset,
            Var::ServerProtocol => Value::Unset,
            Var::Host => {
                let h = host_name(req.host());
                if h.is_empty() {
                    Value::Unset
                } else {
                    self.escaped(buf, &h.to_ascii_lowercase());
                    return;
                }
            }
            // A client's bytes in a field logs often leave unquoted: only token characters
            // stay as they are (nginx would let a space or `[` through).
            Var::RemoteUser if self.escape == Escape::Default => {
                match req.user() {
                    [] => buf.push(b'-'),
                    user => super::access::token_escaped(buf, user),
                }
                return;
            }
            Var::RemoteUser => Value::Bytes(req.user()),
            // No response: `000` as in `combined`, but a number JSON can read.
            Var::Status => match out.status {
                Some(s) => Value::Num(u64::from(s)),
                None if self.escape == Escape::Json => Value::Num(0),
                None => Value::Bytes(b"000"),
            },
            Var::BodyBytesSent => Value::Num(out.bytes_out),
            Var::RequestLength => Value::Num(u64::from(req.head_len) + out.bytes_in),
            Var::RequestTime => Value::Secs(out.total_us),
            Var::UpstreamResponseTime => out.upstream_us.map_or(Value::Unset, Value::Secs),
            Var::UpstreamConnectTime => out.upstream_connect_us.map_or(Value::Unset, Value::Secs),
            Var::UpstreamHeaderTime => out.upstream_header_us.map_or(Value::Unset, Value::Secs),
            Var::UpstreamQueueTime => out.upstream_queue_us.map_or(Value::Unset, Value::Secs),
            Var::UpstreamName => text(out.upstream),
            Var::Route => text(out.route),
            Var::UpstreamCacheStatus => out.cache.map_or(Value::Unset, Value::Bytes),
            Var::RequestId => Value::Bytes(req.request_id()),
            Var::SslProtocol => text(out.tls.map(|t| t.protocol)),
            Var::SslCipher => text(out.tls.map(|t| t.cipher)),
            Var::SslServerName => out
                .tls
                .and_then(|t| t.server_name)
                .map_or(Value::Unset, |s| Value::Bytes(s.as_bytes())),
            Var::Shard => Value::Num(shard as u64),
            Var::ConnectionRequests => Value::Num(u64::from(out.connection_requests)),
            Var::ErrorReason => out
                .error
                .map_or(Value::Unset, |r| Value::Bytes(r.name().as_bytes())),
            Var::Referer => Value::Bytes(req.referer()),
            Var::UserAgent => Value::Bytes(req.user_agent()),
            Var::Header(i) => Value::Bytes(req.header(i)),
        };
        match value {
            Value::Bytes([]) | Value::Unset => match self.escape {
                Escape::Default => buf.push(b'-'),
                Escape::Json if !quoted => buf.extend_from_slice(b"null"),
                Escape::Json => {}
            },
            Value::Bytes(b) => self.escaped(buf, b),
            Value::Num(n) => super::access::num(buf, n),
            Value::Secs(us) => super::access::secs(buf, us),
        }
    }

    /// `$upstream_addr`, `$upstream_status` or `$upstream_response_time` of a request that
    /// was retried: one value per try, `, ` between them, as nginx writes them; the last
    /// try's status or time is `-` when it has none. Bare in a JSON template, the list is
    /// written as a string.
    fn tries(&self, buf: &mut Vec<u8>, var: Var, quoted: bool, out: &Outcome<'_>) {
        let string = self.escape == Escape::Json && !quoted;
        if string {
            buf.push(b'"');
        }
        // One try's value: the address, the status, or a time (`-` when it has none).
        let one = |buf: &mut Vec<u8>,
                   address: SocketAddr,
                   status: Option<u16>,
                   times: [Option<u64>; 3]| {
            let time = match var {
                Var::UpstreamAddr => {
                    let _ = write!(buf, "{address}");
                    return;
                }
                Var::UpstreamStatus => status.map(|s| (u64::from(s), false)),
                Var::UpstreamConnectTime => times[1].map(|us| (us, true)),
                Var::UpstreamHeaderTime => times[2].map(|us| (us, true)),
                _ => times[0].map(|us| (us, true)),
            };
            match time {
                Some((n, false)) => super::access::num(buf, n),
                Some((us, true)) => super::access::secs(buf, us),
                None => buf.push(b'-'),
            }
        };
        for (i, t) in out.earlier.iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b", ");
            }
            one(
                buf,
                t.address,
                Some(t.status),
                [Some(t.us), t.connect_us, t.header_us],
            );
        }
        if let Some(address) = out.backend {
            buf.extend_from_slice(b", ");
            let times = [
                out.upstream_us,
                out.upstream_connect_us,
                out.upstream_header_us,
            ];
            one(buf, address, out.upstream_status, times);
        }
        if string {
            buf.push(b'"');
        }
    }

    fn escaped(&self, buf: &mut Vec<u8>, v: &[u8]) {
        match self.escape {
            Escape::Default => super::access::escaped(buf, v),
            Escape::Json => super::access::json_inner(buf, v),
        }
    }
}

fn protocol(req: &RequestFields) -> &'static [u8] {
    if req.minor == 0 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    }
}

/// The path and the query (without its `?`; `None` when there is none or it is empty).
fn split_query(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (
            &target[..q],
            Some(&target[q + 1..]).filter(|a| !a.is_empty()),
        ),
        None => (target, None),
    }
}

/// The target's path and query: an absolute-form target's (`http://a/p?q` is `/p?q`), as
/// nginx's `$request_uri` has it.
fn origin_form(target: &[u8]) -> &[u8] {
    crate::http::encode::split_target(target).path
}

/// `Host` without its port (`[v6]` kept whole).
fn host_name(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::super::access::tests::{fields, outcome};
    use super::super::access::TlsFacts;
    use super::*;

    #[test]
    fn parses_nginx_main_and_refuses_what_it_cannot_write() {
        let main = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for""#;
        let t = parse(main, Escape::Default).unwrap();
        assert!(t.user);
        assert_eq!(
            t.headers,
            vec![Box::from(&b"x-forwarded-for"[..])],
            "the referer and user agent are copied once, as the built-in formats' fields"
        );
        let braces = parse("${status}x${http_X_Y}", Escape::Json).unwrap();
        assert_eq!(braces.pieces.len(), 3);
        assert_eq!(braces.headers, vec![Box::from(&b"x-y"[..])]);
        for (bad, says) in [
            ("$nope", "$nope is not a variable"),
            ("a $ b", "without a variable name"),
            ("${status", "no closing"),
            ("no variables", "names no variable"),
            ("$http_", "not a field name"),
            ("$status\n", "control character"),
        ] {
            let e = parse(bad, Escape::Default).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("$http_h{i} ")).collect();
        assert!(parse(&many, Escape::Default)
            .unwrap_err()
            .contains("more than"));
        assert!(parse(&"$status".repeat(1000), Escape::Default)
            .unwrap_err()
            .contains("at most"));
    }

    fn line(t: &Template, out: &Outcome<'_>) -> String {
        let clock = Clock {
            unix: 1_795_891_389,
            millis: 7,
            local: "28/Nov/2026:18:43:09 +0000",
            iso: "2026-11-28T18:43:09",
        };
        let mut buf = Vec::new();
        t.render(&mut buf, &clock, 1, &fields(), out);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_retried_request_lists_each_try_as_nginx_does() {
        use super::super::access::UpstreamTry;
        let earlier = [
            UpstreamTry {
                address: "127.0.0.1:9001".parse().unwrap(),
                status: 502,
                us: 250,
                connect_us: Some(250),
                header_us: None,
            },
            UpstreamTry {
                address: "127.0.0.1:9002".parse().unwrap(),
                status: 503,
                us: 2_000,
                connect_us: Some(0),
                header_us: Some(2_000),
            },
        ];
        let mut out = outcome();
        out.earlier = &earlier;
        let t = parse(
            "$upstream_addr|$upstream_status|$upstream_response_time",
            Escape::Default,
        )
        .unwrap();
        assert_eq!(
            line(&t, &out),
            "127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9000|502, 503, 200|0.000, 0.002, 0.001\n"
        );
        let times = parse(
            "$upstream_connect_time|$upstream_header_time",
            Escape::Default,
        )
        .unwrap();
        assert_eq!(line(&times, &out), "0.000, 0.000, 0.000|-, 0.002, 0.001\n");
        // The last try got no answer (the client left): its status and time are dashes.
        out.upstream_status = None;
        out.upstream_us = None;
        assert_eq!(
            line(&t, &out),
            "127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9000|502, 503, -|0.000, 0.002, -\n"
        );
        // Bare in JSON, a list is a string; quoted, it is the string's content.
        let t = parse(
            r#"{"a":"$upstream_addr","s":$upstream_status}"#,
            Escape::Json,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line(&t, &out)).unwrap();
        assert_eq!(v["a"], "127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9000");
        assert_eq!(v["s"], "502, 503, -");
    }

    #[test]
    fn renders_every_variable() {
        let all = VARS
            .iter()
            .map(|(n, _)| format!("{n}=${n}"))
            .collect::<Vec<_>>()
            .join(" ")
            + " h=$http_x_a g=$http_gone ua=$http_User_Agent r=$http_referer";
        let t = parse(&all, Escape::Default).unwrap();
        let mut out = outcome();
        out.cache = Some(b"HIT");
        out.error = Some(crate::error::Reason::UpstreamClosed);
        out.tls = Some(TlsFacts {
            protocol: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            server_name: Some("a.test"),
        });
        assert_eq!(
            line(&t, &out),
            "remote_addr=10.0.0.1 remote_port=40000 remote_user=- scheme=https time_local=28/Nov/2026:18:43:09 +0000 \
             time_iso8601=2026-11-28T18:43:09+00:00 msec=1795891389.007 \
             request=GET /a?\\x22q\\x22 HTTP/1.1 request_method=GET \
             request_uri=/a?\\x22q\\x22 uri=/a args=\\x22q\\x22 query_string=\\x22q\\x22 \
             server_protocol=HTTP/1.1 host=example.com status=200 body_bytes_sent=1234 \
             request_length=40 request_time=0.001 upstream_response_time=0.001 \
             upstream_connect_time=0.000 upstream_header_time=0.001 upstream_queue_time=0.012 upstream_addr=127.0.0.1:9000 upstream_status=200 upstream_name=app upstream_cache_status=HIT \
             request_id=abc route=api ssl_protocol=TLSv1.3 \
             ssl_cipher=TLS13_AES_128_GCM_SHA256 ssl_server_name=a.test shard=1 \
             connection_requests=3 error_reason=upstream_closed h=v\\x0A1 g=- ua=curl/8 \\xFF r=-\n"
        );
        // Unset: a dash by default, nothing in JSON; the request line unknown.
        let mut none = outcome();
        none.status = None;
        none.backend = None;
        none.upstream_us = None;
        let t = parse(
            "$status $upstream_addr $upstream_response_time $ssl_protocol",
            Escape::Default,
        )
        .unwrap();
        assert_eq!(line(&t, &none), "000 - - -\n");
        // JSON: unset between quotes is "", anywhere else null (the line stays JSON).
        let json = r#"{"u":"$upstream_addr","h":"$http_x_a","r":"$request_uri","n":$status,"urt":$upstream_response_time}"#;
        let t = parse(json, Escape::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line(&t, &none)).unwrap();
        assert_eq!(v["u"], "");
        assert!(v["urt"].is_null());
        assert_eq!(v["h"], "v\n1");
        assert_eq!(v["r"], "/a?\"q\"");
        assert_eq!(v["n"], 0);
        let t = parse("[$request] $request_method", Escape::Default).unwrap();
        let mut buf = Vec::new();
        let clock = Clock {
            unix: 0,
            millis: 0,
            local: "",
            iso: "",
        };
        t.render(&mut buf, &clock, 0, &RequestFields::unparsed(), &none);
        assert_eq!(buf, b"[-] -\n");
    }

    #[test]
    fn a_user_name_and_an_absolute_target_cannot_reshape_the_line() {
        let fields = RequestFields::new(
            &super::super::access::HeadFacts {
                method: b"GET",
                target: b"http://good.example/p?q=1",
                minor: 1,
                head_len: 1,
                host: b"good.example",
                referer: b"",
                user_agent: b"",
                request_id: b"",
                user: b"evil [01/Jan/1970",
            },
            std::iter::empty(),
        );
        let t = parse("$remote_user [$request_uri] $uri $args", Escape::Default).unwrap();
        let clock = Clock {
            unix: 0,
            millis: 0,
            local: "",
            iso: "",
        };
        let mut buf = Vec::new();
        t.render(&mut buf, &clock, 0, &fields, &outcome());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "evil\\x20\\x5B01\\x2FJan\\x2F1970 [/p?q=1] /p q=1\n"
        );
    }

    #[test]
    fn hosts_lose_their_port_and_queries_their_mark() {
        assert_eq!(host_name(b"Example.com:8080"), b"Example.com");
        assert_eq!(host_name(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_name(b"a"), b"a");
        assert_eq!(split_query(b"/p?a=1"), (&b"/p"[..], Some(&b"a=1"[..])));
        assert_eq!(split_query(b"/p?"), (&b"/p"[..], None));
        assert_eq!(split_query(b"/p"), (&b"/p"[..], None));
    }
}
