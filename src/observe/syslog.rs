//! Observability, the access log's syslog destination: `[log] access =
//! "syslog:server=ADDR[,facility=F][,severity=S][,tag=T]"`, nginx's syntax, for the hosts
//! where HAProxy and nginx already log to a local syslog daemon or a collector. The target is
//! parsed with the configuration ([`parse`]); the access log's writer thread
//! ([`crate::observe::access`]) sends each line as one RFC 3164 datagram, as nginx and
//! HAProxy do, over UDP or a Unix datagram socket (`/dev/log`). Never on a shard.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::date::{split_time, MONTHS};

/// The longest message (after the header) sent in one datagram; longer lines are cut.
pub const MAX_MESSAGE: usize = 16 << 10;

/// How long a send to a Unix socket whose reader lags may wait before the batch is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the datagrams go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    Udp(SocketAddr),
    Unix(PathBuf),
}

/// A parsed `syslog:` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogTarget {
    pub server: Server,
    pub facility: u8,
    pub severity: u8,
    pub tag: String,
}

const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

const SEVERITIES: &[&str] = &[
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
];

/// Parses what follows `syslog:`; the error says what is wrong.
pub fn parse(spec: &str) -> Result<SyslogTarget, String> {
    let mut server = None;
    let mut t = SyslogTarget {
        server: Server::Udp(([127, 0, 0, 1], 514).into()),
        facility: 23,
        severity: 6,
        tag: "edgeshard".into(),
    };
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("syslog: {part:?} is not key=value"))?;
        match key {
            "server" => server = Some(parse_server(value)?),
            "facility" => {
                t.facility = FACILITIES.iter().position(|f| *f == value).ok_or_else(|| {
                    format!(
                        "syslog: unknown facility {value:?}; expected one of {}",
                        FACILITIES.join(", ")
                    )
                })? as u8
            }
            "severity" => {
                t.severity = SEVERITIES.iter().position(|s| *s == value).ok_or_else(|| {
                    format!(
                        "syslog: unknown severity {value:?}; expected one of {}",
                        SEVERITIES.join(", ")
                    )
                })? as u8
            }
            "tag" => {
                let ok = !value.is_empty()
                    && value.len() <= 32
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(format!(
                        "syslog: tag {value:?}: 1 to 32 letters, digits or underscores"
                    ));
                }
                t.tag = value.to_owned();
            }
            other => {
                return Err(format!(
                "syslog: unknown parameter {other:?}; expected server, facility, severity or tag"
            ))
            }
        }
    }
    t.server = server.ok_or("syslog: server= is required (e.g. syslog:server=127.0.0.1:514 or syslog:server=unix:/dev/log)")?;
    Ok(t)
}

fn parse_server(v: &str) -> Result<Server, String> {
    if let Some(path) = v.strip_prefix("unix:") {
        return match path.starts_with('/') {
            true => Ok(Server::Unix(PathBuf::from(path))),
            false => Err(format!("syslog: unix:{path}: write an absolute path")),
        };
    }
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(Server::Udp(a));
    }
    // An address without its port: 514.
    let ip = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    ip.parse::<std::net::IpAddr>()
        .map(|ip| Server::Udp((ip, 514).into()))
        .map_err(|_| {
            format!("syslog: server={v}: write an IP address with an optional port, or unix:/path")
        })
}

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

/// An open syslog destination: the socket, connected, and the parts of each header that do
/// not change.
pub struct Syslog {
    target: SyslogTarget,
    socket: Socket,
    host: String,
}

impl Syslog {
    /// Opens (connects) the socket: a Unix path nobody listens on is an error now, so a
    /// wrong path stops start-up rather than every line.
    pub fn open(target: &SyslogTarget) -> std::io::Result<Syslog> {
        let socket = connect(&target.server)?;
        Ok(Syslog {
            target: target.clone(),
            socket,
            host: hostname(),
        })
    }

    /// Connects again (SIGUSR1: after the syslog daemon restarted).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.socket = connect(&self.target.server)?;
        Ok(())
    }

    /// Sends each line of `lines` as one datagram; the first error is returned after every
    /// line was tried.
    pub fn send(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = self.header(unix);
        let mut dgram = Vec::with_capacity(header.len() + 512);
        let mut first_error = None;
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            dgram.clear();
            dgram.extend_from_slice(header.as_bytes());
            dgram.extend_from_slice(&line[..line.len().min(MAX_MESSAGE)]);
            let sent = match &self.socket {
                Socket::Udp(s) => s.send(&dgram),
                Socket::Unix(s) => s.send(&dgram),
            };
            if let Err(e) = sent {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `<PRI>Mmm dd hh:mm:ss HOST TAG: ` (RFC 3164, UTC).
    fn header(&self, unix: u64) -> String {
        let (_, m, d, hh, mm, ss) = split_time(unix);
        let pri = u32::from(self.target.facility) * 8 + u32::from(self.target.severity);
        format!(
            "<{pri}>{} {d:>2} {hh:02}:{mm:02}:{ss:02} {} {}: ",
            MONTHS[(m - 1) as usize],
            self.host,
            self.target.tag
        )
    }
}

fn connect(server: &Server) -> std::io::Result<Socket> {
    let named = |e: std::io::Error, what: String| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach the syslog server {what}: {e}"),
        )
    };
    match server {
        Server::Udp(a) => {
            let local: SocketAddr = if a.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(local).map_err(|e| named(e, a.to_string()))?;
            s.connect(a).map_err(|e| named(e, a.to_string()))?;
            Ok(Socket::Udp(s))
        }
        Server::Unix(p) => {
            let what = || format!("unix:{}", p.display());
            let s = UnixDatagram::unbound().map_err(|e| named(e, what()))?;
            s.connect(p).map_err(|e| named(e, what()))?;
            s.set_write_timeout(Some(SEND_TIMEOUT))
                .map_err(|e| named(e, what()))?;
            Ok(Socket::Unix(s))
        }
    }
}

/// The host's name as syslog writes it (`-` when unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_as_nginx_writes_them() {
        let t = parse("server=10.0.0.1:5140,facility=local0,severity=notice,tag=edge_1").unwrap();
        assert_eq!(t.server, Server::Udp("10.0.0.1:5140".parse().unwrap()));
        assert_eq!((t.facility, t.severity, t.tag.as_str()), (16, 5, "edge_1"));
        let t = parse("server=10.0.0.1").unwrap();
        assert_eq!(t.server, Server::Udp("10.0.0.1:514".parse().unwrap()));
        assert_eq!(
            (t.facility, t.severity, t.tag.as_str()),
            (23, 6, "edgeshard")
        );
        assert_eq!(
            parse("server=[::1]").unwrap().server,
            Server::Udp("[::1]:514".parse().unwrap())
        );
        assert_eq!(
            parse("server=unix:/dev/log").unwrap().server,
            Server::Unix("/dev/log".into())
        );
        for (bad, says) in [
            ("", "not key=value"),
            ("facility=local0", "server= is required"),
            ("server=logs.example", "IP address"),
            ("server=unix:dev/log", "absolute"),
            ("server=10.0.0.1,facility=local9", "unknown facility"),
            ("server=10.0.0.1,severity=loud", "unknown severity"),
            ("server=10.0.0.1,tag=a b", "tag"),
            ("server=10.0.0.1,nohostname", "not key=value"),
            ("server=10.0.0.1,port=1", "unknown parameter"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn each_line_is_one_datagram_with_an_rfc3164_header() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let spec = format!("server={},facility=local0,tag=t", rx.local_addr().unwrap());
        let mut s = Syslog::open(&parse(&spec).unwrap()).unwrap();
        // 2026-12-06 09:05:03 UTC
        assert!(s.header(1_796_547_903).starts_with("<134>Dec  6 09:05:03 "));
        let long = "x".repeat(MAX_MESSAGE + 10);
        s.send(format!("one\ntwo\n{long}\n").as_bytes()).unwrap();
        let mut buf = vec![0; 64 << 10];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        let head = format!(" {} t: ", s.host);
        assert!(
            got[0].starts_with("<134>") && got[0].ends_with(&format!("{head}one")),
            "{:?}",
            got[0]
        );
        assert!(got[1].ends_with(&format!("{head}two")), "{:?}", got[1]);
        assert!(
            got[2].ends_with(&"x".repeat(MAX_MESSAGE)) && !got[2].ends_with(&long),
            "cut"
        );
    }
}
