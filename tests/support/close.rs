//! The kernel's view of a test connection's proxy side (/proc/net/tcp): which state its
//! socket is in, and a wait for the proxy's half-close (the kernel announces no change).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wait_until;

/// The state of the proxy's side of the TCP connection from `client` (the client socket's
/// local address) to `proxy`, as /proc/net/tcp shows it ("01" established, "04" FIN_WAIT1,
/// "05" FIN_WAIT2, ...); `None` when there is no such socket (never opened, or reset).
fn proxy_side_state(proxy: SocketAddr, client: SocketAddr) -> Option<String> {
    fn hex(a: SocketAddr) -> String {
        let std::net::IpAddr::V4(ip) = a.ip() else {
            panic!("{a}: IPv4 only")
        };
        format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), a.port())
    }
    let (local, remote) = (hex(proxy), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[1] == local && f[2] == remote).then(|| f[3].to_string())
    })
}

/// Waits until the proxy has half-closed its side of the connection from `client` (its FIN
/// is queued: FIN_WAIT1, FIN_WAIT2 or CLOSING): it has sent the whole response and decided
/// how to close, its look for unread bytes behind it. The kernel announces no state change,
/// so the table is read on a 5 ms schedule up to the deadline.
pub fn wait_proxy_half_closed(proxy: SocketAddr, client: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = proxy_side_state(proxy, client);
        if matches!(state.as_deref(), Some("04" | "05" | "0B")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not half-close its side of {client} within {within:?} (state {state:?})"
        );
        wait_until(Instant::now() + Duration::from_millis(5));
    }
}
