//! `[server] client_congestion` / `upstream_congestion`: the proxy's client connections
//! (inherited from the listener) and its upstream connections use the configured TCP
//! congestion control, seen from outside with `ss -ti`; unknown names fail `check`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::support::{expect_check_error_in, Config, Origin};

/// The host's default congestion control (what a socket gets when nobody sets one).
fn host_default() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .expect("read the host's default congestion control")
        .trim()
        .to_string()
}

/// Sends one keep-alive GET on `c` and reads up to the end of the response head (the
/// connection, and the proxy's pooled upstream connection, stay open).
fn one_exchange(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.unwrap(),
        };
        assert!(n > 0, "EOF before the response head: {got:?}");
        got.extend_from_slice(&b[..n]);
    }
}

/// An algorithm this kernel has that is not the host default (so seeing it proves the
/// setting took effect): reno is built into every Linux kernel.
fn other_algorithm() -> String {
    let default = host_default();
    let available =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
    available
        .split_whitespace()
        .find(|a| *a != default)
        .expect("a second congestion control algorithm")
        .to_string()
}

/// The congestion control names `ss -ti` shows for established sockets matching `filter`.
fn algorithms(filter: &str) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", filter])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss {filter}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let known = [
        "reno", "cubic", "bbr", "bbr2", "htcp", "vegas", "dctcp", "westwood", "bic",
    ];
    text.split_whitespace()
        .filter(|w| known.contains(w))
        .map(String::from)
        .collect()
}

both_engines! {
    fn client_and_upstream_sockets_use_the_configured_algorithm(engine) {
        let algo = other_algorithm();
        let origin = Origin::start("o");
        let quoted = format!("\"{algo}\"");
        let proxy = Config::single(origin.addr())
            .server("client_congestion", &quoted)
            .server("upstream_congestion", &quoted)
            .start(engine);
        // One keep-alive exchange; both connections stay open while ss looks.
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        one_exchange(&mut c);
        let client_side = algorithms(&format!("( sport = :{} )", proxy.addr().port()));
        assert_eq!(client_side, vec![algo.clone()], "the proxy's client socket");
        let upstream_side = algorithms(&format!("( dport = :{} )", origin.addr().port()));
        assert_eq!(upstream_side, vec![algo.clone()], "the proxy's upstream socket");
    }

    fn without_the_setting_sockets_keep_the_host_default(engine) {
        let default = host_default();
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        one_exchange(&mut c);
        let client_side = algorithms(&format!("( sport = :{} )", proxy.addr().port()));
        assert_eq!(client_side, vec![default.clone()], "the proxy's client socket keeps the host default");
        let upstream_side = algorithms(&format!("( dport = :{} )", origin.addr().port()));
        assert_eq!(upstream_side, vec![default.clone()], "the proxy's upstream socket keeps the host default");
    }
}

#[test]
fn check_rejects_unknown_and_malformed_algorithms() {
    let base = |key: &str, value: &str| {
        format!(
            "[server]\n{key} = {value}\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\n\
             [[route]]\nupstream = \"u\"\n"
        )
    };
    expect_check_error_in(
        &base("client_congestion", "\"nosuchalgo\""),
        "server.client_congestion",
        &["not available", "nosuchalgo", "modprobe"],
    );
    expect_check_error_in(
        &base("upstream_congestion", "\"bad name\""),
        "server.upstream_congestion",
        &["expected an algorithm name"],
    );
}
