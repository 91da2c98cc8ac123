//! Stage 1 of the pipeline, *accept* (sockets): one `SO_REUSEPORT` listening socket per shard
//! per configured address, created with `socket2` on the main thread so that a port in use is
//! reported before any shard starts, and so that `:0` resolves to one port shared by all shards.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use; stop the other process or change [[listener]] address")]
    InUse { addr: SocketAddr },
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

/// Binds `shards` sockets on every address; returns `sockets[shard][listener]` and the bound
/// addresses (with real ports).
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    congestion: Option<&str>,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), ListenError> {
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let first = bind_one(addr, congestion)?;
        let real = first
            .local_addr()
            .map_err(|e| ListenError::Other { addr, source: e })?;
        // An address already taken by another process with SO_REUSEPORT set by the same user
        // would be shared silently; a fresh port 0 bind never collides.
        per_shard[0].push(first);
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push(bind_one(real, congestion)?);
        }
        bound.push(real);
    }
    Ok((per_shard, bound))
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
