//! `[server]` keys that decide what clients see of the proxy and its backends: the `Server`
//! field the proxy sends (`server_header`), the response fields it removes
//! (`hide_response_headers`, beyond `Server` and `X-Powered-By`, always removed), and the
//! pages it sends for the errors it answers itself (`error_pages`), and a route's own
//! answer (`[[route]] respond`). Applied by `http::encode` to every forwarded response head
//! and by `respond` to the proxy's own.

use std::path::Path;

use super::raw::Checker;
use crate::http::canned::Canned;

/// What the proxy shows clients of itself and hides of its backends.
#[derive(Clone, Debug, Default)]
pub struct ResponseFields {
    /// `server.server_header`: sent as `Server` on every response. `None`: no `Server`.
    pub server: Option<Box<str>>,
    /// `server.hide_response_headers`, lowercased: removed from every forwarded response.
    pub hide: Vec<Box<str>>,
    /// `server.error_pages`, by status.
    pub error_pages: Vec<ErrorPage>,
}

/// A page the proxy sends instead of its own short text for a status it answers itself
/// (nginx's `error_page` with a file, HAProxy's `errorfile`): read when the configuration is
/// loaded, so a reload picks up a changed file.
#[derive(Clone, Debug)]
pub struct ErrorPage {
    pub status: u16,
    /// The whole response (status line, `Content-Type`, `Content-Length`, the page), and the
    /// same with `Connection: close`: written as the canned answer's bytes are.
    keep: Box<[u8]>,
    close: Box<[u8]>,
}

/// The page for `status` among `pages`, as a whole response.
pub fn error_page(pages: &[ErrorPage], status: u16, close: bool) -> Option<&[u8]> {
    let p = pages.iter().find(|p| p.status == status)?;
    Some(if close { &p.close } else { &p.keep })
}

/// The largest error page: pages are held in memory (in the configuration the shards
/// share) and each answer copies its page.
const MAX_ERROR_PAGE: u64 = 1 << 20;

/// `server.error_pages` or a route's (`at`): status → file (relative to the configuration
/// file's directory). Only the error statuses the proxy answers itself (a backend's own
/// errors are relayed as they are); the type is told by the file's extension.
pub(super) fn error_pages(
    c: &mut Checker,
    at: &str,
    raw: std::collections::BTreeMap<String, String>,
    base: &Path,
) -> Vec<ErrorPage> {
    let mut pages = Vec::new();
    for (code, file) in raw {
        let key = format!("{at}.{code}");
        // Three digits as in a status line: "+404" or "0404" would be a second key for 404.
        let digits = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
        let canned = code
            .parse::<u16>()
            .ok()
            .filter(|_| digits)
            .and_then(|s| Canned::ALL.iter().find(|c| c.status() == s && s >= 400));
        let Some(&canned) = canned else {
            let answered: Vec<String> = Canned::ALL
                .iter()
                .filter(|c| c.status() >= 400)
                .map(|c| c.status().to_string())
                .collect();
            c.err(
                key,
                format!(
                    "{code:?} is not an error status the proxy answers itself; expected one of {}",
                    answered.join(", ")
                ),
            );
            continue;
        };
        let body = read_page(&base.join(&file), &file);
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                c.err(key, e);
                continue;
            }
        };
        let line = canned.bytes(false);
        let line = &line[..line
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |i| i + 2)];
        let ctype = Some(content_type(&file));
        let page = |close| render(line, ctype, &[], Some(&body), close);
        pages.push(ErrorPage {
            status: canned.status(),
            keep: page(false),
            close: page(true),
        });
    }
    pages
}

/// A page's bytes: a regular file (a pipe or a device would hang the load or never end) of
/// at most [`MAX_ERROR_PAGE`] bytes, read no further than that.
fn read_page(path: &Path, file: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {file:?}: {e}");
    // Looked at before it is opened: opening a pipe waits for a writer.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(format!("{file:?} is not a regular file"));
    }
    let f = std::fs::File::open(path).map_err(cannot)?;
    let mut body = Vec::new();
    f.take(MAX_ERROR_PAGE + 1)
        .read_to_end(&mut body)
        .map_err(cannot)?;
    if body.len() as u64 > MAX_ERROR_PAGE {
        return Err(format!(
            "{file:?} is larger than 1 MiB, the most a page the proxy sends may be"
        ));
    }
    Ok(body)
}

/// A route's `respond`, as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRespond {
    status: Option<u16>,
    body: Option<String>,
    file: Option<String>,
    content_type: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
}

/// A route's own answer (nginx's `return 200 "text"`, HAProxy's `http-request return`):
/// rendered when the configuration is loaded, a file read then.
#[derive(Clone, Debug)]
pub struct RouteResponse {
    pub status: u16,
    /// The whole response without the proxy's `Server` and `Date`, and the same with
    /// `Connection: close`.
    keep: Box<[u8]>,
    close: Box<[u8]>,
}

impl RouteResponse {
    pub fn bytes(&self, close: bool) -> &[u8] {
        if close {
            &self.close
        } else {
            &self.keep
        }
    }
}

/// A route's upstream and `respond`: a route forwards to its upstream or answers itself
/// (`respond`, `redirect`); a `respond` route names no upstream and none of the keys that
/// act on a forwarded request or its response.
pub(super) fn route_target(
    c: &mut Checker,
    path: &str,
    r: &mut super::raw::RawRoute,
    rules: &super::RouteRules,
    base: &Path,
    upstreams: &[super::UpstreamConfig],
    redirects: bool,
) -> (Option<usize>, Option<Box<RouteResponse>>) {
    let respond = r.respond.take().map(|raw| respond(c, path, raw, base));
    let upstream = match &r.upstream {
        Some(u) if respond.is_some() => {
            c.err(
                format!("{path}.upstream"),
                format!("a route with respond sends nothing upstream; remove upstream = {u:?}"),
            );
            None
        }
        Some(u) => c.upstream_named(format!("{path}.upstream"), u, upstreams),
        None if respond.is_some() || redirects => None,
        None => {
            c.err(
                format!("{path}.upstream"),
                "missing: name the [[upstream]] this route forwards to (or give it a redirect or a respond)",
            );
            None
        }
    };
    if (respond.is_some() || redirects) && r.max_body_bytes.is_some() {
        c.err(
            format!("{path}.max_body_bytes"),
            "a route that answers itself forwards no body; remove max_body_bytes",
        );
    }
    if respond.is_some() {
        // What only a forwarded request or its relayed response uses.
        let unused = [
            ("redirect", redirects),
            ("auth", r.auth.is_some()),
            ("cache", r.cache.is_some()),
            ("compress", r.compress.is_some()),
            ("request_headers", rules.request.is_some()),
            ("response_headers", rules.response.is_some()),
            (
                "strip_prefix, add_prefix or rewrite",
                rules.rewrite.is_some(),
            ),
            ("upstream_host", rules.upstream_host.is_some()),
        ];
        for (key, set) in unused {
            if set {
                c.err(
                    format!("{path}.respond"),
                    format!("{key} acts on forwarded requests and relayed responses, and a route with respond forwards nothing; remove {key}, or respond"),
                );
            }
        }
    }
    (upstream, respond.flatten())
}

/// `[[route]] respond = { status, body | file, content_type }`.
pub(super) fn respond(
    c: &mut Checker,
    path: &str,
    raw: RawRespond,
    base: &Path,
) -> Option<Box<RouteResponse>> {
    let key = format!("{path}.respond");
    let status = raw.status.unwrap_or(200);
    // Statuses whose meaning needs a field (RFC 9110 §15): a 3xx's `Location`, a 401's
    // `WWW-Authenticate`, a 407's `Proxy-Authenticate`, a 405's `Allow`, given in `headers`;
    // a 206's or 416's `Content-Range` or a 426's `Upgrade`, which an answer to any request
    // cannot have. 304 answers a conditional request; 408 must close; 1xx are interim.
    let has = |field: &str| {
        let mut names = raw.headers.iter().flat_map(|h| h.keys());
        names.any(|n| n.eq_ignore_ascii_case(field))
    };
    let why = match status {
        _ if !(200..=599).contains(&status) => Some("use a final status, 200 to 599"),
        304 => Some("it answers a conditional request"),
        300..=399 if !has("location") => {
            Some("a 3xx needs a Location in headers (or use redirect)")
        }
        401 if !has("www-authenticate") => {
            Some("it needs a WWW-Authenticate in headers (or use auth)")
        }
        407 if !has("proxy-authenticate") => Some("it needs a Proxy-Authenticate in headers"),
        405 if !has("allow") => Some("it needs an Allow in headers"),
        206 | 416 => Some("it needs a Content-Range"),
        408 => Some("it closes the connection; use 503 or 429"),
        426 => Some("it needs an Upgrade field"),
        _ => None,
    };
    if let Some(why) = why {
        c.err(
            format!("{key}.status"),
            format!("{status} cannot be a route's answer: {why}"),
        );
        return None;
    }
    let (body, guessed) = match (raw.body, &raw.file) {
        (Some(_), Some(_)) => {
            c.err(&key, "set either body or file, not both");
            return None;
        }
        (Some(b), None) if b.len() as u64 > MAX_ERROR_PAGE => {
            c.err(
                format!("{key}.body"),
                "larger than 1 MiB, the most a route's answer may be",
            );
            return None;
        }
        (Some(b), None) => (b.into_bytes(), "text/plain; charset=utf-8"),
        (None, Some(f)) => match read_page(&base.join(f), f) {
            Ok(b) => (b, content_type(f)),
            Err(e) => {
                c.err(format!("{key}.file"), e);
                return None;
            }
        },
        (None, None) => (Vec::new(), "text/plain; charset=utf-8"),
    };
    // RFC 9110 §15.3.5, §15.3.6: no content, and for 204 no Content-Length either.
    let bodiless = matches!(status, 204 | 205);
    if bodiless && !body.is_empty() {
        c.err(&key, format!("a {status} response has no body"));
        return None;
    }
    let ctype = match raw.content_type {
        Some(_) if bodiless => {
            c.err(
                format!("{key}.content_type"),
                format!("a {status} response has no body, so no type"),
            );
            return None;
        }
        Some(t) if t.is_empty() || !t.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            c.err(
                format!("{key}.content_type"),
                format!("{t:?}: expected a media type in printable ASCII"),
            );
            return None;
        }
        Some(t) => Some(t),
        None => (!body.is_empty()).then(|| guessed.to_string()),
    };
    // Fields of the operator's own (`Cache-Control` on a robots.txt, a CORS field), never
    // the framing or the proxy's own, nor the type (`content_type` says it).
    let mut fields = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        let field = format!("{key}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if !super::fields::token(&name) {
            c.err(field, "not a header field name");
        } else if super::fields::reserved_response_field(&lower) || lower == "content-type" {
            c.err(
                field,
                format!("{name:?} is written by the proxy (content_type sets the type)"),
            );
        } else if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            c.err(field, format!("{value:?} holds a control character"));
        } else {
            fields.push(format!("{name}: {}\r\n", value.trim()));
        }
    }
    let line = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    let body = (status != 204).then_some(&body[..]);
    let page = |close| render(line.as_bytes(), ctype.as_deref(), &fields, body, close);
    Some(Box::new(RouteResponse {
        status,
        keep: page(false),
        close: page(true),
    }))
}

/// A whole response the proxy sends as it is (an error page, a route's answer): the status
/// `line`, `Content-Type`, `fields` (each ending in CRLF), `Content-Length` and the `body`
/// (none for a 204), `Connection: close` when `close`.
fn render(
    line: &[u8],
    ctype: Option<&str>,
    fields: &[String],
    body: Option<&[u8]>,
    close: bool,
) -> Box<[u8]> {
    let mut out = line.to_vec();
    if let Some(t) = ctype {
        out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
    }
    for f in fields {
        out.extend_from_slice(f.as_bytes());
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.unwrap_or_default());
    out.into_boxed_slice()
}

/// The reason phrase of a status (RFC 9110 §15); clients ignore it, and a code it does not
/// name gets none, which RFC 9112 §4 allows.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The `Content-Type` of an error page or a route's answer file, by the file's extension.
fn content_type(file: &str) -> &'static str {
    let ext = Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain; charset=utf-8",
        // Not guessed: bytes a browser must not read as text.
        Some(_) => "application/octet-stream",
        None => "text/plain; charset=utf-8",
    }
}

/// Fields the proxy writes itself: hiding them would break framing or the connection (or,
/// for `Date`, which the proxy adds when a response has none, would do nothing).
const FRAMING: &[&str] = &[
    "date",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

pub(super) fn response_fields(
    c: &mut Checker,
    server_header: Option<String>,
    hide: Option<Vec<String>>,
) -> ResponseFields {
    let server = server_header.and_then(|s| {
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            c.err(
                "server.server_header",
                format!("{s:?}: expected 1 to 256 printable ASCII characters"),
            );
            return None;
        }
        Some(s.into_boxed_str())
    });
    let mut names: Vec<Box<str>> = Vec::new();
    for (i, name) in hide.unwrap_or_default().into_iter().enumerate() {
        let key = format!("server.hide_response_headers[{i}]");
        let lower = name.to_ascii_lowercase();
        if !super::fields::token(&name) {
            c.err(key, format!("{name:?} is not a header field name"));
        } else if FRAMING.contains(&lower.as_str()) {
            c.err(
                key,
                format!("{name:?} is written by the proxy itself and cannot be hidden"),
            );
        } else if !names.iter().any(|n| **n == *lower) {
            names.push(lower.into_boxed_str());
        }
    }
    ResponseFields {
        server,
        hide: names,
        error_pages: Vec::new(),
    }
}
