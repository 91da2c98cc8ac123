//! For tests of how the proxy closes a client connection: a client whose large response
//! waits in the proxy's send queue, a wait for the proxy's half-close in the kernel's view
//! of its side (/proc/net/tcp), and the whole response read.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
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

/// A client connected to `addr` with a 16 KiB receive buffer: most of a large response waits
/// in the proxy's send queue until it reads. Reads time out after 10 s.
pub fn small_window_client(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads `s` to its end: a 200 whose body is `len` bytes, then an orderly end (a TLS one's
/// close_notify), not a reset that cut the body short. `what` names the case.
pub fn read_whole_response(s: &mut impl Read, len: usize, what: &str) {
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{what}: {head}");
    let whole = (got.len() - head_end, end.err().map(|e| e.kind()));
    assert_eq!(whole, (len, None), "{what}: the whole body, then the end");
}
