//! Stage 1½ and 3½ of the pipeline, *admit*: who the client is and whether it may come in.
//! A connection is counted against `limits.max_connections` and
//! `limits.max_connections_per_client` when it is accepted ([`ConnTable`], shared by all
//! shards, by its connecting address), then checked against its listener's `allow`/`deny`
//! before anything is read but a PROXY protocol header ([`listener_admits`]; on a
//! `proxy_protocol` listener the peer is the header's source, see [`crate::proxy_protocol`]);
//! a request's client address is derived once its head is
//! parsed ([`client_address`]: the peer, or, when the peer is one of
//! `server.trusted_proxies`, the address its `X-Forwarded-For` names), and that address is
//! what routes' `allow`/`deny`, hash keys and the access log see.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

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
/// `peer_trusted`: the connection's [`crate::client::Client::forwarded_trusted`].
pub fn client_address(
    trusted: &[IpNet],
    peer: IpAddr,
    peer_trusted: bool,
    buf: &[u8],
    head: &RequestHead,
) -> IpAddr {
    if !peer_trusted {
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
/// `[2001:db8::1]:4711`); an IPv4-mapped one (`::ffff:192.0.2.1`) is its IPv4 address, so a
/// client is one client (one rate-limit bucket) whichever form its proxies wrote.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

/// `ip` as one client, for a rate limit's bucket and `limits.max_connections_per_client`:
/// an IPv6 address by its first `bits` bits (the rest zero: one subscriber's /64 is one
/// client, not 2^64 of them), an IPv4 one whole, and so one a NAT64 gateway writes in
/// `64:ff9b::/96` (RFC 6052: its last 32 bits are the IPv4 client) or an IPv4-mapped one.
pub fn client_prefix(ip: IpAddr, bits: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if u128::from(v6) >> 32 == 0x64_ff9b << 64 => {
            std::net::Ipv4Addr::from(u128::from(v6) as u32).into()
        }
        IpAddr::V6(v6) if bits < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            std::net::Ipv6Addr::from(u128::from(v6) & mask).into()
        }
        other => other,
    }
}

/// The default `limits.max_connections_per_shard`: half the process's descriptors
/// (`nofile`, less 128 for listeners, rings, logs and the admin listener) shared by the
/// shards, at most 65,536. The other half is for what the connections open: an upstream
/// connection each while a request is in flight, the pools' idle ones, splice pipes. So at
/// the bound the shard closes its longest-idle connection for a new one ([`crate::reclaim`])
/// before `accept` runs out of descriptors, where no client, and no admin probe, gets in.
pub fn connections_per_shard(nofile: u64, shards: usize) -> usize {
    let per_shard = nofile.saturating_sub(128) / 2 / shards.max(1) as u64;
    per_shard.clamp(16, 65536) as usize
}

/// The process's open-file limit (`RLIMIT_NOFILE`, soft: `main` raises it to the hard one
/// first); 1024 if it cannot be read.
pub fn descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the `rlimit` we own; failure is its return value.
    // Exercised by every proxy start (the snapshot's default connection bound).
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
        0 => lim.rlim_cur,
        _ => 1024,
    }
}

/// Counters per row of the per-address sketch.
const WIDTH: usize = 4096;

/// Open client connections of the whole process, counted when a limit is on: in total, and
/// per client address in a count-min sketch (two rows of [`WIDTH`] counters, indexed by two
/// halves of a hash seeded per process). An address's count is the smaller of its two cells,
/// so it is never under-counted; two addresses share a count only if they collide in both
/// rows (about 1 in 16 million pairs), and then the limit is applied early, never late. The
/// atomics are touched once at accept and once at close, by connections only while a limit
/// is on: with both limits off (the default) nothing here runs.
pub struct ConnTable {
    total: AtomicUsize,
    cells: Box<[AtomicU32]>,
    seed: RandomState,
}

/// Why [`ConnTable::enter`] refused a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerClient,
}

/// What one admitted connection holds in the table, given back by [`ConnTable::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    cells: Option<[u32; 2]>,
    total: bool,
}

impl Default for ConnTable {
    fn default() -> ConnTable {
        ConnTable {
            total: AtomicUsize::new(0),
            cells: (0..2 * WIDTH).map(|_| AtomicU32::new(0)).collect(),
            seed: RandomState::new(),
        }
    }
}

impl ConnTable {
    /// Counts a connection from `ip` unless that would exceed `max_total` or `per_client`
    /// (0 = no bound). `Ok(None)`: no limit is on, nothing was counted.
    pub fn enter(
        &self,
        ip: IpAddr,
        max_total: usize,
        per_client: usize,
    ) -> Result<Option<Held>, Refused> {
        if max_total == 0 && per_client == 0 {
            return Ok(None);
        }
        let total = max_total > 0;
        if total && self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let mut held = Held { cells: None, total };
        if per_client > 0 {
            let cells = self.cells_of(ip);
            for c in cells {
                self.cells[c as usize].fetch_add(1, Ordering::Relaxed);
            }
            held.cells = Some(cells);
            // Read back after both increments: two shards admitting the same address at once
            // both see both increments (and may both refuse), never neither.
            let counts = cells.map(|c| self.cells[c as usize].load(Ordering::Relaxed));
            if counts[0].min(counts[1]) as usize > per_client {
                self.leave(held);
                return Err(Refused::PerClient);
            }
        }
        Ok(Some(held))
    }

    /// Gives back what [`ConnTable::enter`] counted.
    pub fn leave(&self, held: Held) {
        if held.total {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(cells) = held.cells {
            for c in cells {
                self.cells[c as usize].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn cells_of(&self, ip: IpAddr) -> [u32; 2] {
        // IPv4-mapped IPv6 clients count as their IPv4 address.
        let h = self.seed.hash_one(ip.to_canonical());
        [
            (h as usize % WIDTH) as u32,
            (WIDTH + (h >> 32) as usize % WIDTH) as u32,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, HeadLimits, Parsed};

    #[test]
    fn ipv6_clients_are_counted_by_their_prefix() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let p = |s: &str, bits| client_prefix(ip(s), bits);
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 64), ip("2001:db8:1:2::"));
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 48), ip("2001:db8:1::"));
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 128), ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(p("2001:db8:1:2:3:4:5:6", 1), ip("::"));
        assert_eq!(p("ffff::1", 1), ip("8000::"));
        assert_eq!(p("192.0.2.7", 64), ip("192.0.2.7"), "IPv4 whole");
        assert_eq!(p("::ffff:192.0.2.7", 64), ip("192.0.2.7"), "IPv4-mapped");
        assert_eq!(
            p("64:ff9b::c000:207", 64),
            ip("192.0.2.7"),
            "NAT64: the IPv4 client"
        );
        assert_eq!(
            p("64:ff9b:1::c000:207", 64),
            ip("64:ff9b:1::"),
            "not the well-known prefix"
        );
    }

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
        let peer: IpAddr = peer.parse().unwrap();
        client_address(&trusted, peer, holds(&trusted, peer), raw.as_bytes(), &head)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_connection_bound_leaves_half_the_descriptors() {
        assert_eq!(connections_per_shard(20_000, 2), 4968);
        assert_eq!(connections_per_shard(1 << 20, 16), 32764);
        assert_eq!(
            connections_per_shard(1 << 30, 1),
            65536,
            "at most nginx-sized bounds"
        );
        assert_eq!(connections_per_shard(1024, 64), 16, "at least a few");
        assert_eq!(connections_per_shard(100, 0), 16);
        assert!(descriptor_limit() >= 16);
    }

    #[test]
    fn one_ipv6_subscriber_is_one_client_of_the_table() {
        // As admit() counts them: a /64's addresses share one count (were they counted
        // whole, one subscriber would have 2^64 clients' worth of connections).
        let t = ConnTable::default();
        let enter = |s: &str, bits| t.enter(client_prefix(ip(s), bits), 0, 2);
        let held = [enter("2001:db8:1:2::a", 64), enter("2001:db8:1:2::b", 64)];
        assert!(held.iter().all(|h| matches!(h, Ok(Some(_)))));
        assert_eq!(enter("2001:db8:1:2:ffff::c", 64), Err(Refused::PerClient));
        assert!(
            matches!(enter("2001:db8:1:3::a", 64), Ok(Some(_))),
            "the next /64"
        );
        assert!(
            matches!(enter("2001:db8:1:2::c", 128), Ok(Some(_))),
            "128 counts each address apart"
        );
    }

    #[test]
    fn the_table_bounds_each_address_and_the_total_and_gives_back() {
        let t = ConnTable::default();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(t.enter(a, 0, 0), Ok(None), "no limit: nothing counted");
        let held: Vec<Held> = (0..3).map(|_| t.enter(a, 0, 3).unwrap().unwrap()).collect();
        assert_eq!(t.enter(a, 0, 3), Err(Refused::PerClient));
        assert_eq!(
            t.enter(ip("::ffff:192.0.2.1"), 0, 3),
            Err(Refused::PerClient),
            "an IPv4-mapped address is the same client"
        );
        let other = t.enter(b, 0, 3).unwrap().unwrap();
        t.leave(held[0]);
        let again = t.enter(a, 0, 3).unwrap().unwrap();
        // The total bound, alone and with per-client counting on too.
        let x = t.enter(ip("198.51.100.1"), 2, 0).unwrap().unwrap();
        let y = t.enter(ip("198.51.100.2"), 2, 3).unwrap().unwrap();
        assert_eq!(t.enter(ip("198.51.100.3"), 2, 3), Err(Refused::Total));
        for h in [held[1], held[2], other, again, x, y] {
            t.leave(h);
        }
        assert_eq!(t.total.load(Ordering::Relaxed), 0);
        assert!(
            t.cells.iter().all(|c| c.load(Ordering::Relaxed) == 0),
            "every count given back"
        );
        let h = t.enter(ip("198.51.100.1"), 1, 0).unwrap().unwrap();
        assert_eq!(t.enter(a, 1, 0), Err(Refused::Total));
        t.leave(h);
        assert!(t.enter(a, 1, 0).is_ok());
    }

    #[test]
    fn concurrent_entries_never_overshoot_the_per_client_bound() {
        use std::sync::Arc;
        let t = Arc::new(ConnTable::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (t, inside, most) = (t.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(Some(h)) = t.enter(ip("192.0.2.1"), 0, 2) {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            t.leave(h);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "{} admitted at once",
            most.load(Ordering::SeqCst)
        );
        assert!(t.cells.iter().all(|c| c.load(Ordering::Relaxed) == 0));
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
        // An IPv4-mapped hop is its IPv4 client (one rate-limit bucket, whichever form a
        // proxy wrote), with or without a port; a mapped trusted hop is trusted.
        for mapped in ["::ffff:203.0.113.7", "[::ffff:203.0.113.7]:1"] {
            assert_eq!(client(&t, "127.0.0.1", &[mapped]), ip("203.0.113.7"));
        }
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7, ::ffff:10.9.1.1"]),
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
