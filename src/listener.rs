//! Stage 1 of the pipeline, *accept* (sockets): one `SO_REUSEPORT` listening socket per shard
//! per configured address, created with `socket2` on the main thread so that a port in use is
//! reported before any shard starts, and so that `:0` resolves to one port shared by all shards.
//! An address another process already listens on is refused, naming that process (its own
//! `SO_REUSEPORT` sockets would otherwise join the other's group and take half its traffic).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use; stop the other process or change [[listener]] address")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: the address is already in use: {holder} listens on it (a second listener with SO_REUSEPORT would silently take part of its connections); stop that process or change [[listener]] address")]
    Owned { addr: SocketAddr, holder: Holder },
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
    /// ([`ListenError::Owned`]). The binary upgrade, when it is built, takes the listening
    /// sockets over from the old process instead of binding; it will pass its own variant
    /// here, which skips this check.
    Exclusive,
}

/// Binds `shards` sockets on every address; returns `sockets[shard][listener]` and the bound
/// addresses (with real ports).
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    congestion: Option<&str>,
    ownership: Ownership,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), ListenError> {
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        // Port 0 is a fresh port: it never collides.
        if ownership == Ownership::Exclusive && addr.port() != 0 {
            probe_unowned(addr)?;
        }
        let first = bind_one(addr, congestion)?;
        let real = first
            .local_addr()
            .map_err(|e| ListenError::Other { addr, source: e })?;
        per_shard[0].push(first);
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push(bind_one(real, congestion)?);
        }
        bound.push(real);
    }
    Ok((per_shard, bound))
}

/// The process found listening on an address, for the operator.
#[derive(Debug)]
pub struct Holder(Option<(u32, String)>);

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some((pid, name)) => write!(f, "process {pid} ({name})"),
            None => write!(
                f,
                "another process (its PID is not visible here: another user's, or another network namespace's)"
            ),
        }
    }
}

/// Fails with [`ListenError::Owned`] if some process already listens on `addr`: a socket
/// without `SO_REUSEPORT` cannot bind an address that a listener holds (`SO_REUSEADDR`
/// lets it pass sockets merely in TIME_WAIT).
fn probe_unowned(addr: SocketAddr) -> Result<(), ListenError> {
    let other = |source| ListenError::Other { addr, source };
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(other)?;
    probe.set_reuse_address(true).map_err(other)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ListenError::Owned {
            addr,
            holder: Holder(find_listener_pid(addr)),
        }),
        // Permission and availability errors are reported by the real bind, worded for them.
        Err(_) => Ok(()),
    }
}

/// The PID and command name of a process with a listening socket on `addr`: the socket's
/// inode from /proc/net/tcp{,6}, then the process whose /proc/PID/fd links to it.
fn find_listener_pid(addr: SocketAddr) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| listening_inode(l, addr)),
        );
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
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
                return Some((pid, name));
            }
        }
    }
    None
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
}
