//! Stage 1 of the pipeline, *accept* (sockets): one `SO_REUSEPORT` listening socket per shard
//! per configured address, created with `socket2` on the main thread so that a port in use is
//! reported before any shard starts, and so that `:0` resolves to one port shared by all shards.
//! An address another process already listens on is refused, naming that process (its own
//! `SO_REUSEPORT` sockets would otherwise join the other's group and take half its traffic);
//! one this process holds is an overlapping `[[listener]]` of its own ([`overlaps`]).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use; stop the other process or change [[listener]] address")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: the address is already in use, held by {holder} (a second listener with SO_REUSEPORT would silently take part of its connections); stop it or change [[listener]] address")]
    Owned { addr: SocketAddr, holder: Holder },
    /// This very process holds it: another of its `[[listener]]` addresses, or its
    /// `[admin]` one, overlaps it (see [`overlaps`]).
    #[error("cannot listen on {addr}: this process itself listens on it or on an overlapping address (another [[listener]], or [admin]: the same port on the same or a wildcard address); change one of them")]
    Overlaps { addr: SocketAddr },
    #[error("cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE")]
    Denied { addr: SocketAddr },
    #[error("cannot listen on {addr}: the address is not available on this host")]
    NotAvailable { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other { addr: SocketAddr, source: io::Error },
    #[error("cannot use TCP congestion control {name:?} (server.client_congestion) on {addr}: {source}; an unprivileged process may use only those in net.ipv4.tcp_allowed_congestion_control")]
    Congestion {
        addr: SocketAddr,
        name: String,
        source: io::Error,
    },
}

impl ListenError {
    /// The address that could not be listened on.
    pub fn addr(&self) -> SocketAddr {
        match self {
            ListenError::InUse { addr }
            | ListenError::Owned { addr, .. }
            | ListenError::Overlaps { addr }
            | ListenError::Denied { addr }
            | ListenError::NotAvailable { addr }
            | ListenError::Other { addr, .. }
            | ListenError::Congestion { addr, .. } => *addr,
        }
    }
}

const BACKLOG: i32 = 4096;

fn bind_one(
    addr: SocketAddr,
    congestion: Option<&str>,
) -> Result<std::net::TcpListener, ListenError> {
    let map = |e: io::Error| match e.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse { addr },
        io::ErrorKind::PermissionDenied => ListenError::Denied { addr },
        io::ErrorKind::AddrNotAvailable => ListenError::NotAvailable { addr },
        _ => ListenError::Other { addr, source: e },
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(map)?;
    socket.set_reuse_address(true).map_err(map)?;
    socket.set_reuse_port(true).map_err(map)?;
    // Accepted connections inherit TCP_NODELAY from their listener (Linux copies the
    // listener's socket into each child): no setsockopt per connection.
    socket.set_tcp_nodelay(true).map_err(map)?;
    socket.set_nonblocking(true).map_err(map)?;
    if let Some(name) = congestion {
        // Accepted connections inherit an algorithm set on their listener.
        socket
            .set_tcp_congestion(name.as_bytes())
            .map_err(|source| ListenError::Congestion {
                addr,
                name: name.to_string(),
                source,
            })?;
    }
    socket.bind(&addr.into()).map_err(map)?;
    socket.listen(BACKLOG).map_err(map)?;
    Ok(socket.into())
}

/// Who may already listen on the configured addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// A fresh start: an address some process already listens on is refused
    /// ([`ListenError::Owned`]). The binary upgrade does not bind the addresses it takes
    /// over ([`take_over`]), so only its new listeners are checked.
    Exclusive,
}

/// Each shard's listening sockets, with the index of the `[[listener]]` each serves.
pub type ShardSockets = Vec<Vec<(usize, std::net::TcpListener)>>;

/// Binds `shards` sockets on every address; returns each shard's sockets and the bound
/// addresses (with real ports).
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    congestion: Option<&str>,
    ownership: Ownership,
) -> Result<(ShardSockets, Vec<SocketAddr>), ListenError> {
    take_over(addrs, shards, congestion, ownership, &mut Vec::new())
}

/// [`bind_all`] for a successor process (binary upgrade): an address among `handed` (the
/// predecessor's sockets) is taken over, not bound: its sockets are spread over the shards
/// (a shard may get several; shards left without one get a new `SO_REUSEPORT` socket on
/// it). Other addresses are bound as usual. Sockets no listener takes stay in `handed`.
pub fn take_over(
    addrs: &[SocketAddr],
    shards: usize,
    congestion: Option<&str>,
    ownership: Ownership,
    handed: &mut Vec<crate::upgrade::Handed>,
) -> Result<(ShardSockets, Vec<SocketAddr>), ListenError> {
    let mut per_shard: ShardSockets = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        // A fixed address is matched by address; a `:0` one by its position and IP.
        let ours = |h: &crate::upgrade::Handed| {
            h.address == addr
                || (addr.port() == 0 && h.listener == i && h.address.ip() == addr.ip())
        };
        let mut mine = Vec::new();
        let mut k = 0;
        while k < handed.len() {
            if ours(&handed[k]) {
                mine.push(handed.swap_remove(k).socket);
            } else {
                k += 1;
            }
        }
        let real = if let Some(first) = mine.first() {
            first
                .local_addr()
                .map_err(|e| ListenError::Other { addr, source: e })?
        } else {
            // Port 0 is a fresh port: it never collides.
            if ownership == Ownership::Exclusive && addr.port() != 0 {
                probe_unowned(addr)?;
            }
            let first = bind_one(addr, congestion)?;
            let real = first
                .local_addr()
                .map_err(|e| ListenError::Other { addr, source: e })?;
            mine.push(first);
            real
        };
        if let Some(name) = congestion {
            for s in &mine {
                use std::os::fd::AsRawFd;
                set_congestion(s.as_raw_fd(), name).map_err(|source| ListenError::Congestion {
                    addr,
                    name: name.to_string(),
                    source,
                })?;
            }
        }
        let have = mine.len();
        for (k, s) in mine.into_iter().enumerate() {
            per_shard[k % shards].push((i, s));
        }
        for sockets in per_shard.iter_mut().skip(have) {
            sockets.push((i, bind_one(real, congestion)?));
        }
        bound.push(real);
    }
    Ok((per_shard, bound))
}

/// What holds an address, for the operator.
#[derive(Debug)]
pub enum Holder {
    /// The processes with a descriptor of the listening socket (PID and name, by PID; at
    /// least one): an nginx master and its workers, or a process and a child it has just
    /// forked, before the child's exec closes its copy.
    Processes(Vec<(u32, String)>),
    /// A listening socket whose process is not visible here.
    Hidden,
    /// No socket listens on it: one is bound to it without listening.
    NotListening(u16),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Processes(all) => {
                const NAMED: usize = 4;
                for (i, (pid, name)) in all.iter().take(NAMED).enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}process {pid} ({name})")?;
                }
                if all.len() > NAMED {
                    write!(f, " and {} more", all.len() - NAMED)?;
                }
                Ok(())
            }
            Holder::Hidden => write!(
                f,
                "another process (its PID is not visible here: another user's, or another network namespace's)"
            ),
            Holder::NotListening(port) => write!(
                f,
                "a socket bound to it without listening (`ss -tanp 'sport = :{port}'` shows whose)"
            ),
        }
    }
}

/// Fails with [`ListenError::Owned`] if some process already listens on `addr`: a socket
/// without `SO_REUSEPORT` cannot bind an address that a listener holds (`SO_REUSEADDR`
/// lets it pass sockets merely in TIME_WAIT); [`ListenError::Overlaps`] if this process does.
fn probe_unowned(addr: SocketAddr) -> Result<(), ListenError> {
    let other = |source| ListenError::Other { addr, source };
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(other)?;
    probe.set_reuse_address(true).map_err(other)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => match find_holder(addr) {
            Holder::Processes(all) if all.iter().any(|(pid, _)| *pid == std::process::id()) => {
                Err(ListenError::Overlaps { addr })
            }
            holder => Err(ListenError::Owned { addr, holder }),
        },
        // Permission and availability errors are reported by the real bind, worded for them.
        Err(_) => Ok(()),
    }
}

/// What holds `addr`: the processes with a listening socket on it (the socket's inode from
/// /proc/net/tcp{,6}, then every process whose /proc/PID/fd links to it), or why none is
/// named.
pub fn find_holder(addr: SocketAddr) -> Holder {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| listening_inode(l, addr)),
        );
    }
    if inodes.is_empty() {
        return Holder::NotListening(addr.port());
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Holder::Hidden;
    };
    let mut holders = Vec::new();
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                let name = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                holders.push((pid, name));
                break;
            }
        }
    }
    if holders.is_empty() {
        return Holder::Hidden;
    }
    holders.sort_unstable();
    Holder::Processes(holders)
}

/// The inode of a /proc/net/tcp{,6} line if it is a listening socket on `addr`'s port whose
/// address is `addr`'s, or a wildcard on either side (either one blocks the other).
fn listening_inode(line: &str, addr: SocketAddr) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
    if *state != "0A" {
        return None; // not TCP_LISTEN
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    if u16::from_str_radix(port_hex, 16).ok()? != addr.port() {
        return None;
    }
    // The kernel prints the address as 32-bit words in host byte order.
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip_hex.len()).step_by(8) {
        let word = u32::from_str_radix(ip_hex.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes.as_slice()).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes.as_slice()).ok()?.into(),
        _ => return None,
    };
    let same = ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified();
    same.then(|| inode.parse().ok()).flatten()
}

/// Whether one process cannot listen on both `a` and `b` (the probe of [`take_over`] would
/// refuse the second): the same port (not `:0`), and the same address or a wildcard on either
/// side. Across families, `[::]` covers every IPv4 address when `dual_stack` (Linux's
/// default, `net.ipv6.bindv6only = 0`: see [`dual_stack`]), and an IPv4-mapped IPv6 address
/// is its IPv4 address.
pub fn overlaps(a: SocketAddr, b: SocketAddr, dual_stack: bool) -> bool {
    use std::net::IpAddr;
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |x: IpAddr, y: IpAddr| x == y || x.is_unspecified() || y.is_unspecified();
    match (a.ip(), b.ip()) {
        (IpAddr::V4(v4), IpAddr::V6(v6)) | (IpAddr::V6(v6), IpAddr::V4(v4)) => {
            match v6.to_ipv4_mapped() {
                Some(mapped) => covers(mapped.into(), v4.into()),
                None => v6.is_unspecified() && dual_stack,
            }
        }
        (x, y) => covers(x, y),
    }
}

/// Whether an IPv6 wildcard socket also takes IPv4 connections here: this process's sockets
/// do not set `IPV6_V6ONLY`, so `net.ipv6.bindv6only` decides (0, the default, if unreadable).
pub fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").map_or(true, |v| v.trim() == "0")
}

/// Takes a listening socket out of its `SO_REUSEPORT` group at once and closes it:
/// `shutdown(2)` acts on the socket, whatever other descriptors of it are open, so a
/// duplicate or a copy that another thread registered elsewhere no longer gets connections
/// either (closing one descriptor alone would leave the socket listening while another is
/// open). Connections waiting in its queue are reset.
pub fn close_listening(socket: std::net::TcpListener) {
    let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Both);
}

/// Sets the TCP congestion control of a connected socket (`server.upstream_congestion`).
pub fn set_congestion(fd: std::os::fd::RawFd, name: &str) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads `name.len()` bytes from a live &str on a descriptor the
    // caller keeps open; the kernel copies at most TCP_CA_NAME_MAX bytes. Exercised by
    // tests/congestion.rs (upstream connections with reno).
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes a listening socket drop every new SYN (a classic BPF socket filter), while the
/// handshakes already under way complete into its accept queue. A draining shard does this
/// before it empties the queue and shuts the socket down: a client whose SYN is dropped
/// retries it (after 1 s on Linux) and then finds the port closed (connection refused, safe
/// to retry elsewhere), instead of completing a handshake into a queue that the shutdown is
/// about to reset (its request sent and lost).
pub fn drop_new_handshakes(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use socket2::{SockFilter, SockRef};
    // A TCP socket filter sees the packet from its TCP header: byte 13 holds the flags.
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let program = [
        SockFilter::new(LD_B_ABS, 0, 0, 13),
        SockFilter::new(AND_K, 0, 0, SYN | ACK),
        // A SYN without ACK opens a connection: drop it (keep 0 bytes); keep all else.
        SockFilter::new(JEQ_K, 0, 1, SYN),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ];
    SockRef::from(&fd).attach_filter(&program)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn accepted_connections_inherit_nodelay_and_congestion_from_their_listener() {
        let l = bind_one("127.0.0.1:0".parse().unwrap(), Some("reno")).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // The handshake is complete once connect returns: a blocking accept takes it at once.
        l.set_nonblocking(false).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(
            sock.tcp_nodelay().unwrap(),
            "Nagle is off without a setsockopt"
        );
        let cc = sock.tcp_congestion().unwrap();
        assert_eq!(cc.split(|&b| b == 0).next(), Some(&b"reno"[..]));
    }

    #[test]
    fn proc_net_tcp_lines_are_matched_by_address_and_port() {
        let line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0";
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(listening_inode(line, at("127.0.0.1:8080")), Some(12345));
            assert_eq!(listening_inode(line, at("0.0.0.0:8080")), Some(12345));
            assert_eq!(listening_inode(line, at("127.0.0.2:8080")), None);
        }
        assert_eq!(listening_inode(line, at("127.0.0.1:8081")), None);
        let established = line.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, at("127.0.0.1:8080")), None);
        assert_eq!(listening_inode("garbage", at("127.0.0.1:8080")), None);
    }

    /// The drain's filter: a handshake completed before it is still accepted, a new one is not
    /// (its SYN is dropped, so the connect does not complete; the 300 ms bound only ends the
    /// wait for something that must not happen).
    #[test]
    fn drop_new_handshakes_keeps_queued_and_stops_new() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let before = std::net::TcpStream::connect(addr).unwrap();
        drop_new_handshakes(l.as_fd()).unwrap();
        let after = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            after.is_err(),
            "a connect after the filter must not complete"
        );
        let (accepted, _) = l.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), before.local_addr().unwrap());
    }

    #[test]
    fn overlapping_addresses_share_a_port_and_an_address_or_a_wildcard() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let both = |a: &str, b: &str, dual: bool| {
            let (x, y) = (overlaps(at(a), at(b), dual), overlaps(at(b), at(a), dual));
            assert_eq!(x, y, "{a} {b}: symmetric");
            x
        };
        assert!(both("0.0.0.0:8080", "127.0.0.1:8080", true));
        assert!(both("127.0.0.1:8080", "127.0.0.1:8080", false));
        assert!(!both("127.0.0.1:8080", "127.0.0.2:8080", true));
        assert!(!both("0.0.0.0:8080", "127.0.0.1:8081", true));
        assert!(
            !both("127.0.0.1:0", "127.0.0.1:0", true),
            ":0 is a fresh port"
        );
        assert!(both("[::]:443", "[::1]:443", false));
        // [::] takes IPv4 too unless bindv6only is set.
        assert!(both("[::]:443", "0.0.0.0:443", true));
        assert!(both("[::]:443", "127.0.0.1:443", true));
        assert!(!both("[::]:443", "0.0.0.0:443", false));
        assert!(
            !both("[::1]:443", "0.0.0.0:443", true),
            "0.0.0.0 is IPv4 only"
        );
        assert!(both("[::ffff:127.0.0.1]:443", "127.0.0.1:443", false));
        assert!(both("[::ffff:127.0.0.1]:443", "0.0.0.0:443", false));
    }

    /// Two overlapping addresses of one file: the second is refused as such, not blamed on
    /// "process <our own PID>".
    #[test]
    fn overlapping_addresses_of_one_file_are_refused_as_such() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addrs = [
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([0, 0, 0, 0], port)),
        ];
        let e = bind_all(&addrs, 1, None, Ownership::Exclusive).expect_err("refused");
        assert!(
            matches!(e, ListenError::Overlaps { addr } if addr == addrs[1]),
            "{e}"
        );
    }

    /// A port held by a socket that is bound but not listening is said to be that, not an
    /// invisible process's.
    #[test]
    fn a_bound_socket_that_does_not_listen_is_named_as_such() {
        let held = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        held.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = held.local_addr().unwrap().as_socket().unwrap();
        let e = bind_all(&[addr], 1, None, Ownership::Exclusive).expect_err("refused");
        assert!(
            matches!(&e, ListenError::Owned { holder: Holder::NotListening(p), .. } if *p == addr.port()),
            "{e}"
        );
        assert!(e.to_string().contains("without listening"), "{e}");
    }

    /// A duplicate kept elsewhere does not keep a closed listener in LISTEN.
    #[test]
    fn close_listening_stops_the_socket_whatever_other_descriptors_are_open() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let dup = l.try_clone().unwrap();
        close_listening(l);
        let e = std::net::TcpStream::connect(addr).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        drop(dup);
    }
}
