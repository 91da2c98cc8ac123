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
