//! Unit tests of the tunnel's pumps on real socket pairs, on both drivers: bulk both ways at
//! once (spliced, and copied with `splice = "off"`) with half-closes passed on, and small
//! messages after a bulk phase (back to copy mode, every pipe back in the pool), and a tunnel
//! closed by the idle watchdog in the middle of a burst (its pipe discarded, not leaked).

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::config::Config;
use crate::snapshot::Shared;

fn ctx(server: &str) -> ShardCtx {
    ctx_idle(server, "20s")
}

fn ctx_idle(server: &str, idle: &str) -> ShardCtx {
    let text = format!(
        "[server]\n{server}\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n[timeouts]\ntunnel_idle = \"{idle}\"\n"
    );
    let shared = Arc::new(Shared::new(
        Config::parse(&text, Path::new("t.toml")).unwrap(),
    ));
    ShardCtx::new(0, shared)
}

fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// What one end of the tunnel (a thread on a plain socket) does: send `sends` patterned
/// bytes (in pieces of `piece`), shut its write side, and read to EOF. Returns what it read.
fn end(l: TcpListener, sends: u64, piece: usize) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = s.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        let data: Vec<u8> = (0..sends).map(byte).collect();
        for c in data.chunks(piece) {
            s.write_all(c).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        reader.join().unwrap()
    })
}

/// Connects to the two ends (client side, backend side) and runs the tunnel between them
/// to its end.
async fn tunnel_between(ctx: &ShardCtx, client: SocketAddr, backend: SocketAddr) {
    let client = TcpStream::connect_addr(client).await.unwrap();
    let upstream = TcpStream::connect_addr(backend).await.unwrap();
    let up = Upgraded {
        upstream: Transport::Plain(upstream),
        backend: 0,
        early: Vec::new(),
    };
    run(ctx, Transport::Plain(client), Vec::new(), up).await;
}

type Block<'a> = &'a mut dyn FnMut(Pin<Box<dyn std::future::Future<Output = ()> + '_>>);

/// Runs `tunnel::run` between two socket pairs; the client end sends `up` bytes, the backend
/// end `down` bytes. Checks every byte and returns the shard's spliced byte count.
fn tunnel(block: Block, ctx: &ShardCtx, up: u64, down: u64, piece: usize) -> u64 {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let client_end = end(a, up, piece);
    let backend_end = end(b, down, piece);
    block(Box::pin(tunnel_between(ctx, aa, ba)));
    let at_backend = backend_end.join().unwrap();
    let at_client = client_end.join().unwrap();
    assert_eq!(at_backend.len() as u64, up);
    assert_eq!(at_client.len() as u64, down);
    assert!(at_backend
        .iter()
        .enumerate()
        .all(|(i, &b)| b == byte(i as u64)));
    assert!(at_client
        .iter()
        .enumerate()
        .all(|(i, &b)| b == byte(i as u64)));
    assert_eq!(ctx.stats.bytes_in.get(), up);
    assert_eq!(ctx.stats.bytes_out.get(), down);
    ctx.stats.spliced_bytes.get()
}

fn on_both_drivers(f: fn(Block)) {
    for engine in crate::test_engines::engines() {
        f(&mut |fut| crate::test_engines::block_on(engine, fut));
    }
}

#[test]
fn bulk_both_ways_is_spliced_and_exact() {
    on_both_drivers(|block| {
        let c = ctx("");
        let n = 8 << 20;
        let spliced = tunnel(block, &c, n, n + 7, 1 << 20);
        // Only the reads that detect bulk (16 KiB each) are copied.
        assert!(spliced > n, "spliced {spliced} of {}", 2 * n + 7);
        assert!(c.pipes.live() <= 2);
        // Every pipe came back: two loans can be had.
        let (x, y) = (c.pipes.lend(), c.pipes.lend());
        assert!(x.is_some() && y.is_some());
    });
}

#[test]
fn splice_off_copies_everything() {
    on_both_drivers(|block| {
        let c = ctx("splice = \"off\"");
        let n = 2 << 20;
        assert_eq!(tunnel(block, &c, n, n, 1 << 20), 0);
        assert_eq!(c.pipes.live(), 0);
    });
}

#[test]
fn small_pieces_stay_copied() {
    // A bulk phase (1 MiB client -> backend: reads fill the buffer, so that direction
    // splices), then 4,096 request/response rounds of 512 bytes each way, each piece sent
    // only once the previous answer arrived: no read can gather more than one piece, so not
    // one of them may be spliced. A direction that stayed in splice mode after its bulk would
    // splice the 2 MiB of pieces too, well past the bulk's 1 MiB.
    const BULK: u64 = 1 << 20;
    const PIECE: usize = 512;
    const ROUNDS: u64 = 4096;
    fn piece(i: u64) -> [u8; PIECE] {
        [byte(i); PIECE]
    }
    on_both_drivers(|block| {
        let c = ctx("");
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let client_end = thread::spawn(move || {
            let (mut s, _) = a.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_nodelay(true).unwrap();
            let bulk: Vec<u8> = (0..BULK).map(byte).collect();
            s.write_all(&bulk).unwrap();
            // The backend end has all of the bulk before the first piece is sent.
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
            let mut back = [0u8; PIECE];
            for i in 0..ROUNDS {
                s.write_all(&piece(i)).unwrap();
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, piece(i + 1), "answer to piece {i}");
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(
                rest.is_empty(),
                "{} bytes after the last answer",
                rest.len()
            );
        });
        let backend_end = thread::spawn(move || {
            let (mut s, _) = b.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_nodelay(true).unwrap();
            let mut bulk = vec![0u8; BULK as usize];
            s.read_exact(&mut bulk).unwrap();
            assert!(bulk.iter().enumerate().all(|(i, &b)| b == byte(i as u64)));
            s.write_all(&[1]).unwrap();
            let mut got = [0u8; PIECE];
            for i in 0..ROUNDS {
                s.read_exact(&mut got).unwrap();
                assert_eq!(got, piece(i), "piece {i}");
                s.write_all(&piece(i + 1)).unwrap();
            }
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} bytes after the last piece", rest.len());
        });
        block(Box::pin(tunnel_between(&c, aa, ba)));
        client_end.join().unwrap();
        backend_end.join().unwrap();
        let pieces = ROUNDS * PIECE as u64;
        assert_eq!(c.stats.bytes_in.get(), BULK + pieces);
        assert_eq!(c.stats.bytes_out.get(), 1 + pieces);
        let spliced = c.stats.spliced_bytes.get();
        assert!(spliced > 0, "the 1 MiB bulk phase must switch to splicing");
        assert!(
            spliced <= BULK,
            "spliced {spliced} bytes: more than the {BULK}-byte bulk, so small pieces were spliced"
        );
        // Every pipe came back to the pool: two loans can be had.
        assert!(c.pipes.live() <= 2);
        let (x, y) = (c.pipes.lend(), c.pipes.lend());
        assert!(x.is_some() && y.is_some());
    });
}

#[test]
fn idle_close_in_the_middle_of_a_burst_keeps_no_pipe_with_bytes() {
    on_both_drivers(|block| {
        let c = ctx_idle("", "300ms");
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // The client end never reads; it holds its socket until the tunnel is over.
        let (done, hold) = std::sync::mpsc::channel::<()>();
        let client_end = thread::spawn(move || {
            let (s, _) = a.accept().unwrap();
            let _ = hold.recv_timeout(Duration::from_secs(20));
            drop(s);
        });
        // The backend end streams until the tunnel is gone.
        let backend_end = thread::spawn(move || {
            let (mut s, _) = b.accept().unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let data = vec![7u8; 1 << 20];
            while s.write_all(&data).is_ok() {}
        });
        let started = Instant::now();
        block(Box::pin(tunnel_between(&c, aa, ba)));
        let took = started.elapsed();
        done.send(()).unwrap();
        client_end.join().unwrap();
        backend_end.join().unwrap();
        assert!(took < Duration::from_secs(10), "{took:?}");
        // The watchdog dropped the direction wherever it waited: mid-burst, with bytes in
        // its pipe (the usual case), that pipe is closed; between bursts (the backend's
        // socket ran dry for a moment and the direction went back to copying), the pipe went
        // back empty. Either way no pipe is lost from the count and none kept holds a byte.
        assert!(c.stats.spliced_bytes.get() > 0, "no burst happened");
        let idle = c.pipes.idle_contents();
        assert_eq!(c.pipes.live(), idle.len(), "a pipe lost from the count");
        assert!(
            idle.iter().all(|&n| n == 0),
            "a kept pipe holds bytes: {idle:?}"
        );
    });
}
