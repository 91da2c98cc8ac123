//! `edgeshard demo`: two tiny built-in origins on ephemeral loopback ports and a config that
//! puts the proxy on 127.0.0.1:8080 in front of them, so a fresh machine can serve real
//! traffic with no other setup. The origins answer every request with 200 and their name.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::config::{Config, ConfigError};
use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::{parse_request, BodyFraming, HeadLimits, Parsed, RequestHead};
use crate::io::{read_more, Deadline, IoFail};

/// Starts one origin on its own thread; returns its bound address.
pub fn start_origin(name: &'static str) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("origin-{name}"))
        .spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "demo origin runtime failed");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "demo origin listener failed");
                        return;
                    }
                };
                while let Ok((stream, _)) = listener.accept().await {
                    monoio::spawn(origin_conn(stream, name, addr));
                }
            })
        })?;
    Ok(addr)
}

async fn origin_conn(mut stream: TcpStream, name: &'static str, addr: SocketAddr) {
    let body = format!("hello from edgeshard demo origin {name} ({addr})\n");
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let limits = HeadLimits {
        max_header_bytes: 65536,
        max_headers: 256,
        max_uri_bytes: 65536,
    };
    let mut buf = Vec::with_capacity(8192);
    let mut head = RequestHead::default();
    let idle = Duration::from_secs(120);
    let mut dl = Deadline::new();
    loop {
        // Parse one request head.
        let (framing, keep_alive, head_len) = loop {
            match parse_request(&buf, &limits, &mut head) {
                Ok(Parsed::Complete(())) => {
                    break (head.framing(), head.wants_keep_alive(), head.head_len)
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return,
            }
            if read_more(&mut stream, &mut buf, &mut dl, idle)
                .await
                .is_err()
            {
                return;
            }
        };
        buf.drain(..head_len);
        // Discard the body.
        match framing {
            BodyFraming::Length(mut n) => loop {
                let take = (buf.len() as u64).min(n) as usize;
                buf.drain(..take);
                n -= take as u64;
                if n == 0 {
                    break;
                }
                if read_more(&mut stream, &mut buf, &mut dl, idle)
                    .await
                    .is_err()
                {
                    return;
                }
            },
            BodyFraming::Chunked => {
                let mut d = ChunkedDecoder::new(1 << 20);
                loop {
                    while !buf.is_empty() && !d.is_done() {
                        let Ok(step) = d.decode(&buf) else { return };
                        buf.drain(..step.consumed);
                    }
                    if d.is_done() {
                        break;
                    }
                    if let Err(IoFail::Eof | IoFail::Timeout | IoFail::Io(_)) =
                        read_more(&mut stream, &mut buf, &mut dl, idle).await
                    {
                        return;
                    }
                }
            }
            BodyFraming::None | BodyFraming::UntilClose => {}
        }
        let (res, r) = stream.write_all(response).await;
        response = r;
        if res.is_err() || !keep_alive {
            return;
        }
    }
}

/// The demo configuration: `listen` in front of the given origins, round robin.
pub fn demo_config(
    listen: SocketAddr,
    origins: &[SocketAddr],
    admin: Option<SocketAddr>,
) -> Result<Config, ConfigError> {
    let backends: Vec<String> = origins
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let mut text = format!(
        "[[listener]]\naddress = \"{listen}\"\n\n[[route]]\nname = \"demo\"\nupstream = \"demo\"\n\n[[upstream]]\nname = \"demo\"\nbalance = \"round_robin\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    if let Some(a) = admin {
        text.push_str(&format!("\n[admin]\naddress = \"{a}\"\n"));
    }
    Config::parse(&text, Path::new("<demo>"))
}
