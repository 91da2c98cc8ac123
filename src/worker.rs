//! Stage 1 of the pipeline, *accept*, and the shard's life: a thread pinned to one CPU builds
//! its own `monoio` runtime (io_uring, or epoll), its [`ShardCtx`], registers its
//! `SO_REUSEPORT` listeners and accepts connections, handing each to [`crate::conn::serve`]
//! (stage 2 on). It also runs the shard's housekeeping (pool sweep, access-log flush), answers
//! the admin thread's questions, and drains on shutdown.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};
use monoio::io::Canceller;
use monoio::net::TcpListener;

use crate::config::IoEngine;
use crate::observe::access::LogSink;
use crate::shard::ShardCtx;
use crate::snapshot::Published;
use crate::stats::{bump, Snapshot};

/// A question the admin thread asks a shard; answered on the shard's own thread.
pub enum ShardQuery {
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Counts a live client connection; wakes the drainer when the last one closes.
pub struct ActiveGuard {
    ctx: Rc<ShardCtx>,
}

impl ActiveGuard {
    fn new(ctx: Rc<ShardCtx>) -> ActiveGuard {
        ctx.active.set(ctx.active.get() + 1);
        ctx.stats.active.set(ctx.active.get() as u64);
        ActiveGuard { ctx }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let n = self.ctx.active.get() - 1;
        self.ctx.active.set(n);
        self.ctx.stats.active.set(n as u64);
        if n == 0 && self.ctx.draining() {
            self.ctx.idle.notify_all();
        }
    }
}

/// What a shard reports when it stops.
#[derive(Debug)]
pub struct ShardReport {
    pub id: usize,
    pub summary: String,
    pub unfinished: usize,
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// The shard's io_uring runtime. A shard's ring is used by its own thread only, so it asks the
/// kernel for SINGLE_ISSUER and DEFER_TASKRUN (completion work runs when the shard waits,
/// not by interrupting it) with COOP_TASKRUN: on this project's loadtest that cut the
/// proxy's CPU per keep-alive request by about a fifth (25.0 vs 32.0 µs). Kernels before 6.1
/// refuse those flags; the ring is then built with the defaults.
fn build_uring_runtime() -> std::io::Result<UringRuntime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let tuned = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .build();
    match tuned {
        Ok(rt) => Ok(rt),
        Err(e) => {
            tracing::info!(error = %e, "io_uring without DEFER_TASKRUN/SINGLE_ISSUER (kernel < 6.1?)");
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()
        }
    }
}

/// Everything a shard thread is started with.
pub struct ShardStart {
    pub id: usize,
    pub engine: IoEngine,
    /// Where the shard loads the configuration snapshot in force.
    pub snapshot: Arc<Published>,
    pub listeners: Vec<std::net::TcpListener>,
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
    /// Resolves (or is dropped) when the shard must drain and stop.
    pub shutdown: oneshot::Receiver<()>,
    /// Questions from the admin thread.
    pub queries: mpsc::UnboundedReceiver<ShardQuery>,
    /// Where full access-log buffers go, when the access log is on.
    pub log_sink: Option<LogSink>,
}

/// Builds this thread's runtime for the chosen engine and runs the shard to completion.
pub fn run_shard(start: ShardStart) -> ShardReport {
    let id = start.id;
    let failed = |ready: &std::sync::mpsc::Sender<_>, e: std::io::Error, what: &str| {
        let _ = ready.send(Err(format!("shard {id}: {what} runtime failed: {e}")));
        ShardReport {
            id,
            summary: String::new(),
            unfinished: 0,
        }
    };
    match start.engine {
        IoEngine::Uring | IoEngine::Auto => match build_uring_runtime() {
            Ok(mut rt) => rt.block_on(shard_main(start)),
            Err(e) => failed(&start.ready, e, "io_uring"),
        },
        IoEngine::Epoll => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(shard_main(start)),
            Err(e) => failed(&start.ready, e, "epoll"),
        },
    }
}

async fn shard_main(start: ShardStart) -> ShardReport {
    let ShardStart {
        id,
        snapshot,
        listeners,
        ready,
        shutdown,
        mut queries,
        log_sink,
        ..
    } = start;
    let ctx = Rc::new(ShardCtx::with_log(id, snapshot.load(), log_sink));
    let mut accepting = Vec::new();
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => accepting.push(l),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot register listener: {e}")));
                return ShardReport {
                    id,
                    summary: String::new(),
                    unfinished: 0,
                };
            }
        }
    }
    if let Some(flag) = ctx.shared.accepting.get(id) {
        flag.store(true, Ordering::Release);
    }
    let _ = ready.send(Ok(id));

    // Idle upstream connections: expire and close dead ones once a second. The access log's
    // buffer is handed to the writer at least every `flush` interval.
    let sweeper = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let tick = ctx
                .shared
                .config
                .log
                .access
                .as_ref()
                .map_or(Duration::from_secs(1), |a| {
                    a.flush.min(Duration::from_secs(1))
                });
            let mut last_sweep = Instant::now();
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(tick) => {}
                    _ = ctx.drain.notified() => break,
                }
                let now = Instant::now();
                if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                    ctx.pool.borrow_mut().sweep(now);
                    last_sweep = now;
                }
                if let Some(log) = &ctx.access {
                    log.flush(&ctx.stats);
                }
                ctx.errors.report(ctx.id, &ctx.stats);
            }
        })
    };

    // The admin thread's questions, answered between requests on this thread.
    let answering = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            while let Some(q) = next_query(&mut queries).await {
                match q {
                    ShardQuery::Snapshot(reply) => {
                        let _ = reply.send(ctx.snapshot());
                    }
                }
            }
        })
    };

    let accept_loops: Vec<_> = accepting
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let ctx = ctx.clone();
            monoio::spawn(accept_loop(ctx, l, i))
        })
        .collect();

    // Run until told to stop (a dropped sender means the process is going down: stop too).
    let _ = shutdown.await;
    if let Some(flag) = ctx.shared.accepting.get(id) {
        flag.store(false, Ordering::Release);
    }
    ctx.begin_drain();
    for a in accept_loops {
        a.await;
    }
    // The accept loops owned the listeners: they are closed now.
    tracing::info!(shard = id, "listeners closed; draining");
    sweeper.await;
    ctx.pool.borrow_mut().clear();
    let deadline = ctx.shared.config.shutdown_timeout;
    if ctx.active.get() > 0 {
        let _ = monoio::time::timeout(deadline, ctx.idle.notified()).await;
    }
    if let Some(log) = &ctx.access {
        log.flush_final(&ctx.stats).await;
    }
    drop(answering);
    ShardReport {
        id,
        summary: ctx.stats.summary(),
        unfinished: ctx.active.get(),
    }
}

async fn next_query(rx: &mut mpsc::UnboundedReceiver<ShardQuery>) -> Option<ShardQuery> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *rx), cx))
        .await
}

/// Takes a listening socket out of LISTEN state at once: on io_uring dropping the listener
/// only queues an asynchronous close, and until it runs the kernel would still complete
/// handshakes into a backlog nobody accepts from.
fn stop_listening(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor owned by `listener`, which is alive for the call;
    // it changes socket state only and touches no memory of ours. Exercised by the
    // graceful-shutdown tests (new connections are refused right after the log line below).
    let _ = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Accepts on the `index`-th `[[listener]]`.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener, index: usize) {
    loop {
        let canceller = Canceller::new();
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let accepted = monoio::select! {
            r = accept.as_mut() => Some(r),
            _ = ctx.drain.notified() => None,
        };
        let accepted = match accepted {
            Some(r) => r,
            None => {
                // On io_uring the accept may complete in the kernel just before the cancel
                // lands: await it, and serve the connection it took.
                let _ = canceller.cancel();
                if let Ok((stream, peer)) = accept.await {
                    admit(&ctx, stream, peer, index);
                }
                refuse_handshakes(&ctx, &listener);
                take_queued(&ctx, &listener, index).await;
                stop_listening(&listener);
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => admit(&ctx, stream, peer, index),
            Err(e) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves an accepted connection, unless the shard is at `max_connections_per_shard`: then
/// the stream is dropped (the client sees a TCP close).
fn admit(
    ctx: &Rc<ShardCtx>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    listener: usize,
) {
    bump(&ctx.stats.accepted);
    if ctx.active.get() >= ctx.shared.config.limits.max_connections_per_shard {
        bump(&ctx.stats.rejected_conn_limit);
        drop(stream);
        return;
    }
    let guard = ActiveGuard::new(ctx.clone());
    monoio::spawn(async move {
        let ctx = guard.ctx.clone();
        crate::conn::serve(ctx, stream, peer, Instant::now(), listener).await;
        drop(guard);
    });
}

/// Accepts, when draining, every connection already in the listener's queue: shutting a
/// listening socket down resets the connections still queued on it, clients whose handshake
/// the kernel completed and who may have sent their request already. They are served like
/// the others (within the drain's grace). Only connections that complete their handshake in
/// the few microseconds between the last check and the shutdown can still be lost.
async fn take_queued(ctx: &Rc<ShardCtx>, listener: &TcpListener, index: usize) {
    while has_queued(listener) {
        match listener.accept().await {
            Ok((stream, peer)) => admit(ctx, stream, peer, index),
            Err(_) => return,
        }
    }
}

/// New SYNs are dropped from now on (see [`crate::listener::drop_new_handshakes`]).
fn refuse_handshakes(ctx: &ShardCtx, listener: &TcpListener) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `listener`, which is alive and not closed for as long
    // as this borrow (this function's body) lasts. Exercised by tests/shutdown.rs.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    if let Err(e) = crate::listener::drop_new_handshakes(fd) {
        tracing::warn!(shard = ctx.id, error = %e, "cannot filter new connections while draining");
    }
}

/// Whether a connection waits in the listener's accept queue (poll(2), no wait).
fn has_queued(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own, with a zero timeout; it writes only `revents`.
    // The descriptor belongs to `listener`, alive for the call. Exercised by
    // tests/shutdown.rs (connections queued while the proxy is stopped are all served).
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}
