//! `[server] client_congestion` / `upstream_congestion`: the TCP congestion control the
//! proxy's sockets use (setsockopt `TCP_CONGESTION`), per side, instead of the host's default.
//! Accepted client connections inherit it from their listener; upstream connections get it
//! after connecting. Part of the *accept* and *pool* stages' socket setup; validated here
//! against the algorithms the kernel has, so a typo fails at start-up, not per connection.
//!
//! Why an operator sets it: BBR without the `fq` qdisc paces in TCP itself with a timer per
//! burst, which costs CPU on a proxy that sends large bodies in bursts (splice): measured in
//! loadtest/results (splice.md). A LAN-facing upstream side rarely needs BBR at all.

use super::Checker;

/// Where the kernel lists the algorithms it has.
const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// TCP_CA_NAME_MAX is 16, with the terminating NUL.
const NAME_MAX: usize = 15;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Congestion {
    /// For client connections (set on the listening sockets).
    pub client: Option<String>,
    /// For connections to backends.
    pub upstream: Option<String>,
}

pub(super) fn validate(c: &mut Checker, field: &str, name: Option<&String>) -> Option<String> {
    let name = name?;
    if name.is_empty()
        || name.len() > NAME_MAX
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        c.err(
            field,
            format!("{name:?}: expected an algorithm name such as \"cubic\" or \"bbr\""),
        );
        return None;
    }
    // Checked only where the kernel says what it has; setting it on the socket is the final
    // word (and names what is wrong then).
    if let Ok(list) = std::fs::read_to_string(AVAILABLE) {
        if !list.split_whitespace().any(|a| a == name) {
            c.err(
                field,
                format!(
                    "{name:?} is not available in this kernel (available: {}); load its module \
                     (modprobe tcp_{name}) or choose one of those",
                    list.trim()
                ),
            );
            return None;
        }
    }
    Some(name.clone())
}
