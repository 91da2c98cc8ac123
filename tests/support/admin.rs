//! A client for the admin listener (`[admin]`): one request per connection, since every
//! admin response carries `Connection: close`. The response is read to EOF (bounded) and
//! checked: exactly `Content-Length` body bytes, then the close.

use super::client::{parse_head, Client, ClientError, Head};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one admin exchange may take before the test fails.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AdminReply {
    pub status: u16,
    pub head: Head,
    pub body: String,
}

impl AdminReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as JSON; panics (with the body) if it is not valid JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "admin response body is not valid JSON ({e}):\n{}\n{}",
                self.head.raw, self.body
            )
        })
    }
}

/// Sends raw bytes to the admin listener and returns everything it answers until it closes
/// (EOF or reset) within `ADMIN_TIMEOUT`.
pub fn admin_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut c = Client::try_connect(addr).map_err(ClientError::Io)?;
    c.try_send(bytes).map_err(ClientError::Io)?;
    c.read_until_closed(ADMIN_TIMEOUT)
}

/// One admin request; `token` adds `Authorization: Bearer TOKEN`. Panics if the answer is not
/// a well-formed HTTP/1.1 response with `Connection: close` and an exact `Content-Length`.
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> AdminReply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let raw = admin_raw(addr, req.as_bytes())
        .unwrap_or_else(|e| panic!("admin {method} {path}: no complete answer: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("admin {method} {path}: no response head in {text:?}"));
    let head = parse_head(&raw[..end + 4])
        .unwrap_or_else(|e| panic!("admin {method} {path}: bad response head ({e}): {text:?}"));
    let body = &raw[end + 4..];
    assert!(
        head.has_token("connection", "close"),
        "admin responses must carry Connection: close; {method} {path} got:\n{}",
        head.raw
    );
    let cl: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "admin {method} {path}: no valid Content-Length:\n{}",
                head.raw
            )
        });
    let expect_body = if method == "HEAD" { 0 } else { cl };
    assert_eq!(
        body.len(),
        expect_body,
        "admin {method} {path}: Content-Length {cl} but {} body bytes before the close:\n{text}",
        body.len()
    );
    AdminReply {
        status: head.status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

pub fn admin_get(addr: SocketAddr, path: &str, token: Option<&str>) -> AdminReply {
    admin_request(addr, "GET", path, token)
}

pub fn admin_post(addr: SocketAddr, path: &str, token: Option<&str>) -> AdminReply {
    admin_request(addr, "POST", path, token)
}
