//! `[server]` keys that decide what clients see of the proxy and its backends: the `Server`
//! field the proxy sends (`server_header`) and the response fields it removes
//! (`hide_response_headers`, beyond `Server` and `X-Powered-By`, always removed). Applied
//! by `http::encode` to every forwarded response head and by `respond` to the proxy's own.

use super::raw::Checker;

/// What the proxy shows clients of itself and hides of its backends.
#[derive(Clone, Debug, Default)]
pub struct ResponseFields {
    /// `server.server_header`: sent as `Server` on every response. `None`: no `Server`.
    pub server: Option<Box<str>>,
    /// `server.hide_response_headers`, lowercased: removed from every forwarded response.
    pub hide: Vec<Box<str>>,
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
    }
}
