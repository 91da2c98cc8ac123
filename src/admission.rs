//! Stage 1½ and 3½ of the pipeline, *admit*: who the client is and whether it may come in.
//! A connection is checked against its listener's `allow`/`deny` at accept, before anything
//! is read but a PROXY protocol header ([`listener_admits`]; on a `proxy_protocol` listener
//! the peer is the header's source, see [`crate::proxy_protocol`]); a request's client address is derived once its head is
//! parsed ([`client_address`]: the peer, or, when the peer is one of
//! `server.trusted_proxies`, the address its `X-Forwarded-For` names), and that address is
//! what routes' `allow`/`deny`, hash keys and the access log see.

use std::net::{IpAddr, SocketAddr};

use crate::config::{holds, AccessList, IpNet};
use crate::http::parse::{HeaderKind, RequestHead};

/// Whether a listener's list lets `peer` in (an open list needs no work).
#[inline]
pub fn listener_admits(list: &AccessList, peer: IpAddr) -> bool {
    list.is_open() || list.admits(peer)
}

/// The request's client: `peer`, unless `peer` is a trusted proxy. Then `X-Forwarded-For`
/// (all its fields, in order) is read from the right, each hop appended by the proxy
/// before it: the first address that is not a trusted proxy is the client. A list made only
/// of trusted proxies gives its leftmost address; an entry that is not an address (a forged
/// or garbled field) ends the walk at the last address read, so a client can never choose
/// an address its trusted proxies did not write.
pub fn client_address(trusted: &[IpNet], peer: IpAddr, buf: &[u8], head: &RequestHead) -> IpAddr {
    if trusted.is_empty() || !holds(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    let fields = head
        .headers
        .iter()
        .rev()
        .filter(|h| h.kind == HeaderKind::XForwardedFor);
    for field in fields {
        for entry in field.value.get(buf).rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_hop(entry) else {
                return client;
            };
            client = ip;
            if !holds(trusted, ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, HeadLimits, Parsed};

    fn client(trusted: &[&str], peer: &str, xff: &[&str]) -> IpAddr {
        let trusted: Vec<IpNet> = trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect();
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for v in xff {
            raw.push_str(&format!("X-Forwarded-For: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 64,
            max_uri_bytes: 8192,
        };
        assert!(matches!(
            parse_request(raw.as_bytes(), &limits, &mut head),
            Ok(Parsed::Complete(()))
        ));
        client_address(&trusted, peer.parse().unwrap(), raw.as_bytes(), &head)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_send() {
        assert_eq!(client(&[], "192.0.2.9", &["10.1.1.1"]), ip("192.0.2.9"));
        assert_eq!(
            client(&["10.0.0.0/8"], "192.0.2.9", &["10.1.1.1"]),
            ip("192.0.2.9")
        );
    }

    #[test]
    fn a_trusted_chain_is_walked_from_the_right() {
        let t = ["127.0.0.1", "10.9.0.0/16"];
        assert_eq!(client(&t, "127.0.0.1", &["203.0.113.7"]), ip("203.0.113.7"));
        // A forged leftmost entry is not believed: the first untrusted hop from the right is.
        assert_eq!(
            client(&t, "127.0.0.1", &["6.6.6.6, 203.0.113.7, 10.9.1.1"]),
            ip("203.0.113.7")
        );
        // Several fields are one list, in order.
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7", "10.9.1.1"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(&t, "127.0.0.1", &["10.9.3.3, 10.9.1.1"]),
            ip("10.9.3.3")
        );
        assert_eq!(client(&t, "127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(
            client(&t, "127.0.0.1", &["[2001:db8::7]:443, 198.51.100.2:5000"]),
            ip("198.51.100.2")
        );
        assert_eq!(client(&t, "127.0.0.1", &["2001:db8::7"]), ip("2001:db8::7"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_address_read() {
        let t = ["127.0.0.1", "10.9.0.0/16"];
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7, unknown, 10.9.1.1"]),
            ip("10.9.1.1")
        );
        assert_eq!(client(&t, "127.0.0.1", &["nonsense"]), ip("127.0.0.1"));
    }
}
