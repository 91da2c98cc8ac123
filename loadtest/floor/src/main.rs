//! edgeshard-floor: the cheapest possible relay on the same runtime as edgeshard.
//!
//! One thread per shard, each with its own monoio runtime and its own SO_REUSEPORT
//! listener, pinned to one CPU. For every accepted client connection it opens one
//! upstream connection and copies bytes both ways until either side closes.
//! No HTTP parsing, no pooling, no timeouts: it is the lower bound of what a proxy
//! on this runtime can cost per request.
//!
//! usage: edgeshard-floor --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//!                        [--shards N] [--cpus 0,1|0-3] [--io-engine auto|uring|epoll]
//! prints "floor: listening on ADDR" then "floor: ready shards=N engine=E" on stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

const BUF: usize = 16 * 1024;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    shards: usize,
    cpus: Vec<usize>,
    engine: String,
}

fn parse_cpus(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
            v.extend(a..=b);
        } else {
            v.push(part.parse().expect("cpu"));
        }
    }
    v
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut listen = None;
    let mut upstream = None;
    let mut shards = None;
    let mut cpus = Vec::new();
    let mut engine = "auto".to_string();
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => listen = Some(val().parse().unwrap_or_else(|_| usage("bad --listen"))),
            "--upstream" => upstream = Some(val().parse().unwrap_or_else(|_| usage("bad --upstream"))),
            "--shards" => shards = Some(val().parse().unwrap_or_else(|_| usage("bad --shards"))),
            "--cpus" => cpus = parse_cpus(&val()),
            "--io-engine" => engine = val(),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let shards = shards.unwrap_or(if cpus.is_empty() { 1 } else { cpus.len() });
    Args {
        listen: listen.unwrap_or_else(|| usage("--listen required")),
        upstream: upstream.unwrap_or_else(|| usage("--upstream required")),
        shards,
        cpus,
        engine,
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("edgeshard-floor: {msg}\nusage: edgeshard-floor --listen ADDR --upstream ADDR [--shards N] [--cpus LIST] [--io-engine auto|uring|epoll]");
    std::process::exit(2)
}

fn pin(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("floor: warning: cannot pin to cpu {cpu}");
        }
    }
}

async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(mut r: R, mut w: W) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        let (res, b) = r.read(buf).await;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (res, mut b) = w.write_all(b).await;
        if res.is_err() {
            break;
        }
        b.clear();
        buf = b;
    }
    let _ = w.shutdown().await;
}

async fn relay(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let origin = match TcpStream::connect_addr(upstream).await {
        Ok(o) => o,
        Err(_) => return,
    };
    let _ = origin.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (or, ow) = origin.into_split();
    let up = pump(cr, ow);
    let down = pump(or, cw);
    monoio::join!(up, down);
}

async fn serve(listener: TcpListener, upstream: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                monoio::spawn(relay(s, upstream));
            }
            Err(e) => {
                eprintln!("floor: accept error: {e}");
                // EMFILE and friends: back off a little instead of spinning.
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn run_shard(idx: usize, a: &Args, ready: mpsc::Sender<(SocketAddr, &'static str)>) {
    if !a.cpus.is_empty() {
        pin(a.cpus[idx % a.cpus.len()]);
    }
    let opts = ListenerOpts::default().reuse_port(true).backlog(4096);
    let upstream = a.upstream;
    let listen = a.listen;
    macro_rules! go {
        ($drv:ty, $name:expr) => {{
            let mut rt = monoio::RuntimeBuilder::<$drv>::new()
                .enable_timer()
                .with_entries(1024)
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = TcpListener::bind_with_config(listen, &opts).expect("bind");
                let _ = ready.send((l.local_addr().unwrap(), $name));
                serve(l, upstream).await
            })
        }};
    }
    match a.engine.as_str() {
        "uring" => go!(monoio::IoUringDriver, "uring"),
        "epoll" => go!(monoio::LegacyDriver, "epoll"),
        _ => {
            if monoio::utils::detect_uring() {
                go!(monoio::IoUringDriver, "uring")
            } else {
                go!(monoio::LegacyDriver, "epoll")
            }
        }
    }
}

fn main() {
    let a = std::sync::Arc::new(parse_args());
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..a.shards {
        let a = a.clone();
        let tx = tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || run_shard(i, &a, tx))
                .expect("thread"),
        );
    }
    drop(tx);
    let mut engine = "";
    let mut addr = None;
    for _ in 0..a.shards {
        let (ad, e) = rx.recv().expect("shard failed to start");
        engine = e;
        addr = Some(ad);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "floor: listening on {}", addr.unwrap());
    let _ = writeln!(out, "floor: ready shards={} engine={}", a.shards, engine);
    let _ = out.flush();
    drop(out);
    for h in handles {
        let _ = h.join();
    }
}
