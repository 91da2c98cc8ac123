//! Stage 1 of the pipeline, *accept*, and the shard's life: a thread pinned to one CPU builds
//! its own `monoio` runtime (io_uring, or epoll), its [`ShardCtx`], registers its
//! `SO_REUSEPORT` listeners and accepts connections, handing each to [`crate::conn::serve`]
//! (stage 2 on) with its listener's settings, looked up by [`ListenerId`] in the snapshot in
//! force. It also runs the shard's housekeeping (pool sweep, access-log flush), answers the
//! admin thread's questions, switches to a reloaded snapshot (closing the accept loops of
//! removed listeners and starting those of added ones; an added socket it does not take is
//! shut down and reported), and drains on shutdown.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};
use monoio::io::Canceller;
use monoio::net::TcpListener;

use crate::admission::{Held, Refused};
use crate::config::IoEngine;
use crate::notify::Notify;
use crate::observe::log_writer::LogSink;
use crate::shard::{ShardCommon, ShardCtx};
use crate::snapshot::{ListenerId, Published};
use crate::stats::{bump, Snapshot};

/// A question the admin thread asks a shard; answered on the shard's own thread.
pub enum ShardQuery {
    Snapshot(oneshot::Sender<Snapshot>),
    /// `POST /cache/purge`: remove from this shard's caches; answers how many entries went.
    Purge(crate::cache::Purge, oneshot::Sender<u64>),
    /// A reload published a new snapshot (see [`ShardReload`]).
    Reload(ShardReload),
}

/// What a reload asks of a shard, in this order: stop accepting on the listeners in `close`
/// (serving what their queues hold, on the snapshot that still names them), build this
/// shard's state for the published snapshot (carrying over what remains) and make it
/// current, then accept on the sockets in `open` (this shard's socket of each added
/// listener). Requests in flight finish on the state they started with; connections accepted
/// on a closed listener stay open. The shard answers on `done` ([`Switched`]).
pub struct ShardReload {
    pub done: std::sync::mpsc::Sender<Switched>,
    pub open: Vec<(ListenerId, std::net::TcpListener)>,
    pub close: Vec<ListenerId>,
}

/// A shard's answer to a [`ShardReload`]: its id, and each added listener whose socket it
/// does not accept from, with why (it could not register it, it is stopping, or the
/// configuration in force no longer has the listener). It has shut those sockets down; the
/// reloader shuts down its duplicates ([`crate::listening::Listening::apply`]).
#[derive(Debug)]
pub struct Switched {
    pub shard: usize,
    pub failed: Vec<(ListenerId, String)>,
}

/// Counts a live client connection; wakes the drainer when the last one closes. It holds the
/// shard-wide half only, so a long-lived connection does not keep an old snapshot's state.
pub struct ActiveGuard {
    common: Rc<ShardCommon>,
    /// What the connection counts in the process's limits, given back at close.
    held: Option<Held>,
}

impl ActiveGuard {
    pub(crate) fn new(ctx: &ShardCtx, held: Option<Held>) -> ActiveGuard {
        ctx.active.set(ctx.active.get() + 1);
        ctx.stats.active.set(ctx.active.get() as u64);
        ActiveGuard {
            common: ctx.common().clone(),
            held,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.common.conns.leave(held);
        }
        let n = self.common.active.get() - 1;
        self.common.active.set(n);
        if let Some(ctx) = self.common.current() {
            ctx.stats.active.set(n as u64);
        }
        if n == 0 && self.common.draining() {
            self.common.idle.notify_all();
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
pub(crate) fn build_uring_runtime() -> std::io::Result<UringRuntime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let tuned = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .build();
    crate::bufring::runs_deferred(tuned.is_ok());
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

/// How a shard stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Drain: answer what is queued on the listeners, then shut them (SIGTERM).
    Drain,
    /// A successor process holds the same listening sockets (binary upgrade): stop
    /// accepting and leave the sockets and their queues to it; then drain what is open.
    HandOver,
}

/// Everything a shard thread is started with.
pub struct ShardStart {
    pub id: usize,
    pub engine: IoEngine,
    /// Where the shard loads the configuration snapshot in force.
    pub snapshot: Arc<Published>,
    /// This shard's listening sockets, each with the `[[listener]]` it serves.
    pub listeners: Vec<(ListenerId, std::net::TcpListener)>,
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
    /// Resolves (or is dropped) when the shard must drain and stop.
    pub shutdown: oneshot::Receiver<Stop>,
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
    let ctx = Rc::new(ShardCtx::with_log(
        id,
        snapshot.load(),
        log_sink,
        snapshot.conns.clone(),
        snapshot.rates.clone(),
        snapshot.invalidations.clone(),
    ));
    ctx.set_current(Some(ctx.clone()));
    let common = ctx.common().clone();
    drop(ctx);
    let ctx = || common.current().expect("set until the shard stops");
    let loops: AcceptLoops = Rc::default();
    let handing_over = Rc::new(Cell::new(false));
    for (listener, l) in listeners {
        if let Err(e) = start_accepting(&common, &loops, &handing_over, listener, l) {
            let _ = ready.send(Err(format!("shard {id}: cannot register listener: {e}")));
            return ShardReport {
                id,
                summary: String::new(),
                unfinished: 0,
            };
        }
    }
    if let Some(flag) = ctx().shared.accepting.get(id) {
        flag.store(true, Ordering::Release);
    }
    let _ = ready.send(Ok(id));

    // Idle upstream connections: expire and close dead ones once a second. The access log's
    // buffer is handed to the writer at least every `flush` interval.
    let sweeper = {
        let common = common.clone();
        let tick_of = ctx().shared.config.log.access.clone();
        monoio::spawn(async move {
            let tick = tick_of.as_ref().map_or(Duration::from_secs(1), |a| {
                a.flush.min(Duration::from_secs(1))
            });
            let tick = tick.min(QUIET);
            let mut last_sweep = Instant::now();
            let (mut last_activity, mut returned) = ((0, 0, 0, 0), false);
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(tick) => {}
                    _ = common.drain.notified() => break,
                }
                let Some(ctx) = common.current() else { break };
                let now = Instant::now();
                if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                    ctx.pool.borrow_mut().sweep(now);
                    ctx.leases.sweep(&ctx.rates, ctx.rates.now_ns());
                    last_sweep = now;
                }
                // Parks count too: a crowd's tasks are freed when it is parked, 200 ms
                // after its last request, and that memory too is to be given back; so do
                // closes (the open count): connections that end after a long transfer free
                // their buffers then, with nothing accepted or served since (300 slow
                // readers' 50 MB stayed resident until the next request).
                let activity = (
                    ctx.stats.accepted.get(),
                    ctx.stats.requests.get(),
                    common.lot.parks(),
                    ctx.stats.active.get(),
                );
                if activity != last_activity {
                    (last_activity, returned) = (activity, false);
                } else if !returned {
                    common.buffers.release_all();
                    give_back_free_memory();
                    bump(&ctx.stats.memory_returns);
                    returned = true;
                }
                if let Some(log) = &ctx.access {
                    log.flush(&ctx.stats);
                }
                ctx.errors.report(ctx.id, &ctx.stats);
                ctx.logins.report(ctx.id, &ctx.stats);
            }
        })
    };

    // Idle keep-alive connections parked outside their tasks (crate::park).
    monoio::spawn(crate::park::run(common.clone()));

    // The admin thread's questions and the control plane's reloads, answered between
    // requests on this thread.
    let answering = {
        let (common, loops, handing_over) = (common.clone(), loops.clone(), handing_over.clone());
        monoio::spawn(async move {
            while let Some(q) = next_query(&mut queries).await {
                let Some(ctx) = common.current() else { break };
                match q {
                    ShardQuery::Snapshot(reply) => {
                        let _ = reply.send(ctx.snapshot());
                    }
                    ShardQuery::Purge(p, reply) => {
                        let _ = reply.send(ctx.cache.purge(&p));
                    }
                    ShardQuery::Reload(r) => {
                        let failed = switch(
                            &common,
                            &ctx,
                            &snapshot,
                            &loops,
                            &handing_over,
                            r.open,
                            &r.close,
                        )
                        .await;
                        let _ = r.done.send(Switched {
                            shard: ctx.id,
                            failed,
                        });
                    }
                }
            }
        })
    };

    // Run until told to stop (a dropped sender means the process is going down: stop too).
    let stop = shutdown.await.unwrap_or(Stop::Drain);
    handing_over.set(stop == Stop::HandOver);
    if let Some(flag) = ctx().shared.accepting.get(id) {
        flag.store(false, Ordering::Release);
    }
    ctx().begin_drain();
    let accept_loops = std::mem::take(&mut *loops.borrow_mut());
    for a in accept_loops {
        a.task.await;
    }
    // The accept loops owned the listeners: they are closed now (handed over: the successor
    // holds the same sockets).
    if stop == Stop::HandOver {
        tracing::info!(
            shard = id,
            "stopped accepting, the successor accepts; draining"
        );
    } else {
        tracing::info!(shard = id, "listeners closed; draining");
    }
    sweeper.await;
    ctx().pool.borrow_mut().clear();
    let deadline = ctx().shared.config.shutdown_timeout;
    if common.active.get() > 0 {
        let _ = monoio::time::timeout(deadline, common.idle.notified()).await;
    }
    if let Some(log) = &common.access {
        log.flush_final(&ctx().stats).await;
    }
    drop(answering);
    // Whatever is still parked (shutdown_timeout ended the wait first) is closed now.
    common.lot.close();
    let summary = ctx().stats.summary();
    // Ends the reference cycle between the shard-wide half and the current state.
    common.set_current(None);
    ShardReport {
        id,
        summary,
        unfinished: common.active.get(),
    }
}

/// One accept loop of this shard: its listener, the signal that closes it (a reload removed
/// the listener), and its task.
struct AcceptLoop {
    listener: ListenerId,
    close: Rc<Notify>,
    task: monoio::task::JoinHandle<()>,
}

/// The shard's accept loops, one per listening socket; a reload adds and removes entries. No
/// borrow is held across an `.await`.
type AcceptLoops = Rc<RefCell<Vec<AcceptLoop>>>;

/// Registers `socket` on this shard's runtime and starts accepting on it.
fn start_accepting(
    common: &Rc<ShardCommon>,
    loops: &AcceptLoops,
    handing_over: &Rc<Cell<bool>>,
    listener: ListenerId,
    socket: std::net::TcpListener,
) -> std::io::Result<()> {
    let socket = TcpListener::from_std(socket)?;
    let close = Rc::new(Notify::default());
    let task = monoio::spawn(accept_loop(
        common.clone(),
        socket,
        listener,
        handing_over.clone(),
        close.clone(),
    ));
    loops.borrow_mut().push(AcceptLoop {
        listener,
        close,
        task,
    });
    Ok(())
}

/// A reload on this shard (see [`ShardReload`] for the order and why). Returns the added
/// listeners it does not accept on, and why (see [`Switched`]).
async fn switch(
    common: &Rc<ShardCommon>,
    ctx: &ShardCtx,
    snapshot: &Published,
    loops: &AcceptLoops,
    handing_over: &Rc<Cell<bool>>,
    open: Vec<(ListenerId, std::net::TcpListener)>,
    close: &[ListenerId],
) -> Vec<(ListenerId, String)> {
    let closing: Vec<AcceptLoop> = {
        let mut all = loops.borrow_mut();
        let (closing, kept) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|a| close.contains(&a.listener));
        *all = kept;
        closing
    };
    for a in closing {
        a.close.notify_all();
        a.task.await;
        tracing::debug!(shard = ctx.id, listener = %a.listener, "stopped accepting: the listener was removed");
    }
    let next = snapshot.load();
    if !Arc::ptr_eq(&next, &ctx.shared) {
        common.set_current(Some(Rc::new(ctx.successor(next.clone()))));
    }
    let mut failed = Vec::new();
    for (listener, socket) in open {
        // A draining shard accepts nothing new; a shard that switches late (after the
        // reloader stopped waiting) may be on a later snapshot without the listener. Either
        // way the socket leaves the port's group now, not when its queue is dropped.
        let refused = if common.draining() {
            Some(format!("shard {} is stopping", ctx.id))
        } else if next.listener(listener).is_none() {
            Some(format!(
                "shard {} switched after a later reload removed it",
                ctx.id
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            crate::listener::close_listening(socket);
            failed.push((listener, why));
        } else if let Err(e) = start_accepting(common, loops, handing_over, listener, socket) {
            // The socket was closed with the error; the reloader shuts its duplicate down.
            failed.push((
                listener,
                format!("shard {} cannot accept on it: {e}", ctx.id),
            ));
        }
    }
    failed
}

/// How long a shard must go without accepting or serving before it frees its buffer free
/// list and gives its free memory back ([`give_back_free_memory`]).
const QUIET: Duration = Duration::from_millis(250);

/// Returns the calling shard's free memory to the kernel now. mimalloc does so lazily: pages
/// emptied by a burst (2,000 TLS handshakes, each with its 16 KiB read buffer) are purged
/// only when the thread next allocates, a second after, so a shard that went quiet kept them
/// resident, ~8 KB per connection that stayed open (loadtest/results/2026-12-03-vm/
/// tls-final.md). Once per quiet spell, never while traffic flows.
fn give_back_free_memory() {
    // SAFETY: mi_collect has no preconditions: it frees the calling thread's empty pages and
    // purges unused memory; it reads no memory of ours. Exercised by the test below.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

async fn next_query(rx: &mut mpsc::UnboundedReceiver<ShardQuery>) -> Option<ShardQuery> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *rx), cx))
        .await
}

/// Whether a connection waits in `listener`'s accept queue (it is readable), looked at
/// without taking a descriptor.
fn has_pending(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one `pollfd` we own, for the call only; the
    // descriptor is `listener`'s, alive for the call. Exercised by the descriptor tests
    // (tests/access.rs, tests/limits.rs).
    unsafe { libc::poll(&mut fd, 1, 0) == 1 && fd.revents & libc::POLLIN != 0 }
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

/// Accepts on one socket of the `[[listener]]` `id` until the shard drains or `close` fires
/// (a reload removed the listener). Either way it then serves what is queued and shuts the
/// socket down, except when handing over (the successor accepts from it).
async fn accept_loop(
    ctx: Rc<ShardCommon>,
    listener: TcpListener,
    id: ListenerId,
    handing_over: Rc<Cell<bool>>,
    close: Rc<Notify>,
) {
    // When an accept out of descriptors last closed an idle connection.
    let mut made_room = None;
    loop {
        let canceller = Canceller::new();
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let accepted = monoio::select! {
            r = accept.as_mut() => Some(r),
            _ = ctx.drain.notified() => None,
            _ = close.notified() => None,
        };
        let accepted = match accepted {
            Some(r) => r,
            None => {
                // On io_uring the accept may complete in the kernel just before the cancel
                // lands: await it, and serve the connection it took.
                let _ = canceller.cancel();
                if let Ok((stream, peer)) = accept.await {
                    admit(&ctx, stream, peer, id);
                }
                if handing_over.get() {
                    // The successor accepts from the same socket: its queue is its now, and
                    // closing our descriptor (dropping `listener`) does not touch it.
                    return;
                }
                refuse_handshakes(&ctx, &listener);
                take_queued(&ctx, &listener, id).await;
                stop_listening(&listener);
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                // The room made (if any) was taken: a client queued behind this one that
                // finds no descriptor makes room again at once, instead of waiting out
                // `ROOM_WAIT` for a close that was already used.
                made_room = None;
                admit(&ctx, stream, peer, id)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The socket no longer listens: the reloader shut it down, having stopped
                // waiting for this shard to take it (`Listening::apply`). Nothing more comes.
                tracing::warn!(shard = ctx.id, listener = %id, "the listening socket was shut down (a reload gave up on this shard); stopped accepting on it");
                return;
            }
            Err(e) => {
                // Out of descriptors (a bound set above the descriptor limit, or upstream
                // connections and pipes using the rest) with a client waiting in the queue
                // (`accept` fails for want of a descriptor whether or not one is): close
                // an idle connection, pooled upstream first ([`crate::reclaim::descriptor`]),
                // and accept again once the loop had a turn. The descriptor is free only
                // once the close is submitted (io_uring): until then, and for at most
                // `reclaim::ROOM_WAIT`, the loop tries again without closing another.
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && has_pending(&listener) {
                    let waiting =
                        made_room.is_some_and(|t: Instant| t.elapsed() < crate::reclaim::ROOM_WAIT);
                    if waiting
                        || ctx
                            .current()
                            .is_some_and(|now| crate::reclaim::descriptor(&ctx, &now))
                    {
                        if !waiting {
                            made_room = Some(Instant::now());
                        }
                        monoio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                }
                // Otherwise back off briefly instead of spinning, and log within
                // `log.error_rate` (out of descriptors, this repeats every backoff).
                let allowed = ctx.current().is_none_or(|now| ctx.errors.allow(&now.stats));
                if allowed {
                    tracing::warn!(shard = ctx.id, error = %e, "accept failed; out of file descriptors? raise LimitNOFILE / ulimit -n");
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves an accepted connection, with the settings its listener has in the snapshot in
/// force. At `max_connections_per_shard` or `max_connections` the shard's longest-idle
/// or waiting connection is closed to make room ([`crate::reclaim`]); without one, or over
/// `max_connections_per_client`, or when that snapshot does not have the listener, the
/// stream is dropped (the client sees a TCP close) and counted.
fn admit(
    common: &ShardCommon,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    id: ListenerId,
) {
    // The snapshot in force now: the connection's first request starts on it.
    let Some(ctx) = common.current() else {
        return;
    };
    bump(&ctx.stats.accepted);
    // It names the listener: a reload closes a removed listener's accept loops before it
    // switches the shard, and starts an added one's after, on the latest snapshot only.
    // (Were it missing, the connection would be one more queued on a closed port, and is
    // closed like those.)
    let Some(listener) = ctx.shared.listener(id).and_then(|i| ctx.listeners.get(i)) else {
        bump(&ctx.stats.rejected_no_listener);
        if ctx.errors.allow(&ctx.stats) {
            tracing::warn!(shard = ctx.id, listener = %id, "connection closed at accept: the configuration in force on this shard has no such listener");
        }
        return;
    };
    let limits = &ctx.shared.config.limits;
    if ctx.active.get() >= limits.max_connections_per_shard
        && !crate::reclaim::reclaim(common, &ctx)
    {
        bump(&ctx.stats.rejected_conn_limit);
        drop(stream);
        return;
    }
    let enter = || {
        ctx.conns.enter(
            crate::admission::client_prefix(peer.ip(), limits.per_client_ipv6_prefix),
            limits.max_connections,
            limits.max_connections_per_client,
        )
    };
    let held = match enter() {
        Err(Refused::Total) if crate::reclaim::reclaim(common, &ctx) => enter(),
        entered => entered,
    };
    let held = match held {
        Ok(held) => held,
        Err(refused) => {
            let (counter, limit) = match refused {
                Refused::Total => (&ctx.stats.rejected_total_limit, "max_connections"),
                Refused::PerClient => (
                    &ctx.stats.rejected_client_limit,
                    "max_connections_per_client",
                ),
            };
            bump(counter);
            if ctx.errors.allow(&ctx.stats) {
                tracing::warn!(shard = ctx.id, client = %peer.ip(), limit, "connection closed at accept: over limits.{limit}");
            }
            return;
        }
    };
    let listener = listener.clone();
    let guard = ActiveGuard::new(&ctx, held);
    monoio::spawn(crate::clock::fresh(crate::conn::serve(
        ctx,
        stream,
        peer,
        Instant::now(),
        listener,
        guard,
    )));
}

/// Accepts, when draining or closing, every connection already in the listener's queue: shutting a
/// listening socket down resets the connections still queued on it, clients whose handshake
/// the kernel completed and who may have sent their request already. They are served like
/// the others (within the drain's grace). Only connections that complete their handshake in
/// the few microseconds between the last check and the shutdown can still be lost.
async fn take_queued(ctx: &ShardCommon, listener: &TcpListener, id: ListenerId) {
    while has_queued(listener) {
        match listener.accept().await {
            Ok((stream, peer)) => admit(ctx, stream, peer, id),
            Err(_) => return,
        }
    }
}

/// New SYNs are dropped from now on (see [`crate::listener::drop_new_handshakes`]).
fn refuse_handshakes(ctx: &ShardCommon, listener: &TcpListener) {
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

#[cfg(test)]
mod tests {
    fn rss_kib() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }

    #[test]
    fn an_idle_shard_returns_the_memory_a_burst_freed() {
        std::thread::spawn(|| {
            // 64 MiB in TLS-record-sized blocks from mimalloc (the binary's allocator), all
            // touched, then all freed: mimalloc keeps them resident until told.
            let blocks: Vec<_> = (0..4096)
                .map(|_| {
                    // SAFETY: a plain allocation, checked, written within its size, freed once.
                    unsafe {
                        let p = libmimalloc_sys::mi_malloc(16 * 1024).cast::<u8>();
                        assert!(!p.is_null());
                        p.write_bytes(1, 16 * 1024);
                        p
                    }
                })
                .collect();
            let full = rss_kib();
            for p in blocks {
                // SAFETY: allocated above by mi_malloc, freed once.
                unsafe { libmimalloc_sys::mi_free(p.cast()) };
            }
            super::give_back_free_memory();
            let after = rss_kib();
            assert!(
                full.saturating_sub(after) > 32 * 1024,
                "RSS {full} KiB with the blocks, {after} KiB after giving them back"
            );
        })
        .join()
        .unwrap();
    }
}
