//! The access log sent to syslog (`access = "syslog:server=..."`, nginx's syntax): one RFC 3164
//! datagram per request over UDP and over a Unix datagram socket, and a socket nobody
//! listens on stops start-up naming `log.access`.

use super::*;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;

/// Receives `n` datagrams (each within 10 s: a deadline, not a pause; a signal to the test
/// process interrupts the wait, which goes on).
fn datagrams(recv: impl Fn(&mut [u8]) -> std::io::Result<usize>, n: usize) -> Vec<String> {
    let mut buf = vec![0; 64 << 10];
    (0..n)
        .map(|i| loop {
            match recv(&mut buf) {
                Ok(got) => break String::from_utf8(buf[..got].to_vec()).unwrap(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("datagram {i}: {e}"),
            }
        })
        .collect()
}

/// `<PRI>Mmm dd hh:mm:ss HOST TAG: MESSAGE`: returns (PRI, TAG, MESSAGE).
fn rfc3164(d: &str) -> (u32, String, String) {
    let (pri, rest) = d
        .strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .unwrap_or_else(|| panic!("{d:?}"));
    // "Dec  6 09:05:03 " is 16 bytes.
    let (stamp, rest) = rest.split_at(16);
    assert!(
        MONTHS.iter().any(|m| stamp.starts_with(m)) && stamp.as_bytes()[9] == b':',
        "{d:?}"
    );
    let (_host, rest) = rest.split_once(' ').unwrap();
    let (tag, msg) = rest.split_once(": ").unwrap();
    (pri.parse().unwrap(), tag.to_string(), msg.to_string())
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

both_engines! {
    fn access_log_lines_go_to_syslog_over_udp(engine) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let o = Origin::start("o");
        let log = format!(
            "access = \"syslog:server={},facility=local0,tag=edge\"\naccess_flush = \"50ms\"\naccess_format = '$request_uri $status'",
            rx.local_addr().unwrap()
        );
        let proxy = Config::single(o.addr()).section("log", &log).start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/one").status(), 200);
        assert_eq!(get_on(&mut c, "x.example", "/two").status(), 200);
        let got = datagrams(|b| rx.recv(b), 2);
        // local0 (16) × 8 + info (6).
        assert_eq!(rfc3164(&got[0]), (134, "edge".into(), "/one 200".into()), "{got:?}");
        assert_eq!(rfc3164(&got[1]), (134, "edge".into(), "/two 200".into()), "{got:?}");
    }

    fn access_log_lines_go_to_a_unix_syslog_socket(engine) {
        let dir = TempDir::new("syslog");
        let path = dir.path("log.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let o = Origin::start("o");
        let log = format!("access = \"syslog:server=unix:{}\"\naccess_flush = \"50ms\"", path.display());
        let proxy = Config::single(o.addr()).section("log", &log).start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/u").status(), 200);
        let got = datagrams(|b| rx.recv(b), 1);
        // Defaults: local7 (23) × 8 + info (6), tag edgeshard, the combined format.
        let (pri, tag, msg) = rfc3164(&got[0]);
        assert_eq!((pri, tag.as_str()), (190, "edgeshard"), "{got:?}");
        let line = parse_combined(&msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
        assert_eq!(line.request, Some(("GET".into(), "/u".into(), "HTTP/1.1".into())));
        drop(proxy);
        // Nobody at the path: start-up stops, naming the key and the socket.
        drop(rx);
        let _ = std::fs::remove_file(&path);
        let cfg = Config::single(o.addr()).section("log", &log).render();
        let err = Proxy::try_start(&cfg, engine).err().expect("start-up must fail");
        assert!(err.contains(": log.access: syslog: cannot reach the syslog server unix:"), "{err}");
    }
}
