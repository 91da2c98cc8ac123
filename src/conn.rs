//! Stage 1 to 2 of the pipeline for one client connection: the keep-alive loop. It waits for
//! a request (bounded by `client_idle`, or `client_header` for the first), reads the head
//! within `client_header`, parses it in place and hands it to [`crate::proxy`]; pipelined
//! requests are answered in order because each is served before the next is parsed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::client::{Client, ListenerSide, Outcome, Served, Transport};
use crate::http::canned::Canned;
use crate::http::parse::{names_head, parse_request, HeadLimits, Parsed, RequestHead};
use crate::io::{read_more, Deadline, IoFail};
use crate::linger::linger_close;
use crate::park::Parked;
use crate::proxy::serve_request;
use crate::respond::{parse_error_status, respond_canned, respond_canned_with};
use crate::shard::ShardCtx;
use crate::trace::record_refused;
use crate::worker::ActiveGuard;

/// Answers a client its listener's list refuses (at accept, or at its next request after a
/// reload: [`relisten`]): 403 with `Connection: close`, whatever it sends, then a lingering
/// close so the answer is not reset away.
async fn refuse(ctx: &ShardCtx, mut client: Client) {
    respond_canned(ctx, &mut client, Canned::Forbidden, true).await;
    linger_close(ctx, &mut client).await;
}

/// Client read buffers start small (idle keep-alive connections are the common case) and
/// grow up to `max_header_bytes` for heads, or the relay size for bodies.
const INITIAL_BUF: usize = 4096;
/// After an exchange a buffer larger than this is given back to the allocator.
const KEEP_BUF: usize = 32 * 1024;

pub async fn serve(
    ctx: Rc<ShardCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    listener: Rc<ListenerSide>,
    guard: ActiveGuard,
) {
    // Two steps, so that the future keeps the first's state and the loop's in one place.
    if let Some(client) = open(&ctx, stream, peer, accepted, listener).await {
        keep_alive(ctx, client, guard, Some(accepted)).await;
    }
}

/// A new connection up to its first wait: the PROXY protocol header, the listener's
/// allow/deny, the TLS handshake. `None`: it was closed (or refused) on the way.
async fn open(
    ctx: &ShardCtx,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    listener: Rc<ListenerSide>,
) -> Option<Client> {
    // TCP_NODELAY is inherited from the listener (`listener::bind_one`).
    // -- PROXY protocol: the balancer's header names the client ---------------------------
    // Within client_header of the accept, before the allow/deny below (which sees the
    // client it names) and the TLS handshake. Boxed: a cold step an idle connection is not in.
    let (peer, balancer_itself) = if listener.proxy_protocol {
        match Box::pin(crate::proxy_protocol::accept(ctx, &stream, peer, accepted)).await {
            Some(p) => p,
            None => return None,
        }
    } else {
        (peer, false)
    };
    // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: it is one client
    // whichever listener it used (one rate-limit bucket, one hash key, one log form).
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    // Whether this connection's X-Forwarded-For (and request id) is believed: its peer is a
    // trusted proxy, and not an L4 balancer standing in for a client it did not name.
    let forwarded_trusted =
        !balancer_itself && crate::config::holds(&ctx.shared.config.trusted_proxies, peer.ip());
    // -- the listener's allow/deny, before anything (else) is read ------------------------
    if !crate::admission::listener_admits(&listener.access, peer.ip()) {
        crate::stats::bump(&ctx.stats.denied_listener);
        // A TLS client cannot read a 403 before a handshake it is not granted: closed.
        if listener.tls.is_none() {
            let trust = (false, balancer_itself);
            let client = Client::plain(stream, peer, listener, trust, Served::new(accepted));
            Box::pin(refuse(ctx, client)).await;
        }
        return None;
    }
    // -- TLS listeners: the handshake, within handshake_timeout of the accept -------------
    let mut client_subject = None;
    let stream = match &listener.tls {
        None => Transport::Plain(stream),
        // Boxed: the handshake's state is only needed until it completes, so an idle
        // connection's task stays small.
        Some(tls) => {
            match Box::pin(crate::tls::handshake(ctx, tls, stream, peer, accepted)).await {
                None => return None,
                Some(s) => {
                    if tls.subject_header.is_some() {
                        client_subject = crate::tls::client_subject(&s).map(String::into_boxed_str);
                    }
                    Transport::Tls(Box::new(s))
                }
            }
        }
    };
    Some(Client {
        stream,
        buf: Vec::with_capacity(INITIAL_BUF),
        peer,
        deadline: Deadline::new(),
        upgraded: None,
        listener,
        client_subject,
        forwarded_trusted,
        balancer_itself,
        served: Served::new(accepted),
        nonblocking: false,
    })
}

/// Serves a connection the parking lot handed back because its socket became readable (its
/// next request, or its close, is there): a new task, a fresh [`Client`].
pub async fn resume(ctx: Rc<ShardCtx>, parked: Parked) {
    let Ok(stream) = TcpStream::from_std(std::net::TcpStream::from(parked.fd)) else {
        return;
    };
    let mut client = Client::plain(
        stream,
        parked.peer,
        parked.listener,
        parked.trust,
        parked.served,
    );
    // Parked before a reload: its next request is under the listener's settings now.
    if !relisten(&ctx, &mut client) {
        refuse(&ctx, client).await;
        return;
    }
    keep_alive(ctx, client, parked.guard, None).await;
}

/// After a reload, before a connection's next request: the connection takes its listener's
/// settings in force now (allow/deny, rate limit, header rules, redirect), as a connection
/// accepted now would, so a reload that denies a client reaches its open connections too
/// (nginx's old workers close theirs). Its transport stays as it was set up: a listener the
/// reload removed, or turned from plain to TLS or back, leaves it the old settings. `false`
/// (counted as a refusal at accept is): the listener's allow/deny now refuses the client,
/// whom [`refuse`] answers (over TLS too: the handshake is long done).
fn relisten(ctx: &ShardCtx, client: &mut Client) -> bool {
    // A reload that removes a peer from `trusted_proxies` (or adds one) reaches its open
    // connections too: its X-Forwarded-For is no longer believed from the next request.
    client.forwarded_trusted = !client.balancer_itself
        && crate::config::holds(&ctx.shared.config.trusted_proxies, client.peer.ip());
    let Some(id) = client.listener.id else {
        return true;
    };
    let Some(now) = ctx.shared.listener(id).and_then(|i| ctx.listeners.get(i)) else {
        return true;
    };
    if Rc::ptr_eq(now, &client.listener) || now.tls.is_some() != client.listener.tls.is_some() {
        return true;
    }
    client.listener = now.clone();
    let admitted = crate::admission::listener_admits(&now.access, client.peer.ip());
    if !admitted {
        crate::stats::bump(&ctx.stats.denied_listener);
    }
    admitted
}

/// The keep-alive loop: `accepted` for a new connection (its first request is bounded from
/// the accept), `None` for one resumed from the parking lot (readable now).
async fn keep_alive(
    mut ctx: Rc<ShardCtx>,
    mut client: Client,
    mut guard: ActiveGuard,
    accepted: Option<Instant>,
) {
    let mut limits = head_limits(&ctx);
    let mut head = RequestHead::default();
    let mut first = accepted.is_some();
    let mut resumed = accepted.is_none();
    let accepted = accepted.unwrap_or_else(Instant::now);
    loop {
        // -- wait for the first byte of the next request ------------------------------------
        // The first request's head must be complete within client_header of the accept; later
        // ones within client_header of their first byte.
        let mut deadline = accepted + ctx.shared.config.timeouts.client_header;
        if client.buf.is_empty() {
            let wait = if first {
                deadline.saturating_duration_since(crate::clock::now())
            } else {
                ctx.shared.config.timeouts.client_idle
            };
            let waited = if std::mem::take(&mut resumed) {
                Box::pin(read_ready(&ctx, &mut client)).await
            } else {
                wait_for_request(&ctx, &mut client, wait).await
            };
            let waited = match waited {
                // Silent through the hot window: park the connection outside this task (it
                // ends here) or, where it cannot be parked, wait for it here.
                Wait::Cold { idle_end, since } => {
                    match park(&ctx, client, guard, idle_end, first) {
                        Parking::Done => return,
                        Parking::Back(c, g) => {
                            client = c;
                            // What a waiting connection need not hold: the head's vectors.
                            head = RequestHead::default();
                            // Boxed: only first requests, TLS and draining connections wait here.
                            let (w, g) =
                                Box::pin(cold_wait(&ctx, &mut client, g, idle_end, since)).await;
                            // Reclaimed for a new connection at a limit: closed.
                            let Some(g) = g else { return };
                            guard = g;
                            w
                        }
                    }
                }
                w => w,
            };
            match waited {
                Wait::Data => {}
                Wait::Cold { .. } | Wait::Draining | Wait::Closed => return,
                Wait::Timeout if first => {
                    // Opened but never sent a byte within client_header.
                    request_timeout(&ctx, &mut client, accepted).await;
                    return;
                }
                Wait::Timeout => return, // keep-alive idle expiry: close silently
            }
        }
        // Empty lines between requests are no request (RFC 9112 §2.2: a server SHOULD ignore
        // at least one before a request-line; old clients send a CRLF after a POST body): the
        // connection stays idle (client_idle, parked, closed silently), not a head that
        // times out with a 408 nobody asked for.
        let blank = client
            .buf
            .iter()
            .take_while(|&&b| matches!(b, b'\r' | b'\n'))
            .count();
        if !first && blank > 0 {
            client.buf.drain(..blank);
            if client.buf.is_empty() {
                continue;
            }
        }
        // A reload between requests: this request starts on the snapshot in force now (the
        // previous one finished on its own). One borrow and a pointer compare, no atomics.
        if let Some(now) = ctx.current() {
            if !Rc::ptr_eq(&now, &ctx) {
                ctx = now;
                limits = head_limits(&ctx);
                if !relisten(&ctx, &mut client) {
                    Box::pin(refuse(&ctx, client)).await;
                    return;
                }
            }
        }
        let head_started = if first { accepted } else { crate::clock::now() };
        if !first {
            deadline = head_started + ctx.shared.config.timeouts.client_header;
        }
        first = false;

        // -- read the head within client_header -------------------------------------------
        // The head is parsed when its end may have arrived (or a limit is reached), not after
        // every read: re-parsing from byte 0 per read is quadratic for a client that drips.
        let reparse_at = limits.max_header_bytes.min(limits.max_uri_bytes + 33);
        let mut scanned: usize = 0;
        loop {
            let may_be_complete = scanned == 0
                || client.buf.len() >= reparse_at
                || has_head_end(&client.buf[scanned.saturating_sub(3)..]);
            scanned = client.buf.len();
            let parsed = if may_be_complete {
                parse_request(&client.buf, &limits, &mut head)
            } else {
                Ok(Parsed::Partial)
            };
            match parsed {
                Ok(Parsed::Complete(())) => break,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    if ctx.errors.allow(&ctx.stats) {
                        tracing::info!(shard = ctx.id, peer = %client.peer, error = ?e, "bad request head");
                    }
                    let status = parse_error_status(e);
                    let head_only = names_head(&client.buf);
                    let answer =
                        respond_canned_with(&ctx, &mut client, status, true, head_only, &[], &[]);
                    let own = Box::pin(answer).await;
                    record_refused(&ctx, &client, status.status(), own.body, head_started);
                    Box::pin(linger_close(&ctx, &mut client)).await;
                    return;
                }
            }
            let left = deadline.saturating_duration_since(crate::clock::now());
            let step = if left.is_zero() {
                Err(IoFail::Timeout)
            } else {
                Box::pin(read_more(
                    &mut client.stream,
                    &mut client.buf,
                    &mut client.deadline,
                    left,
                ))
                .await
            };
            match step {
                Ok(_) => {}
                Err(IoFail::Timeout) => {
                    request_timeout(&ctx, &mut client, head_started).await;
                    return;
                }
                Err(_) => return,
            }
        }

        // -- route, balance, forward, respond ----------------------------------------------
        // Boxed: the exchange's state is large and only needed while a request is in flight,
        // so an idle connection's task stays small.
        let outcome = Box::pin(serve_request(&ctx, &mut client, &head)).await;
        // No wait before the tunnel: it counts its backend connection from its first step
        // (tunnel::run), and the exchange's count has just ended.
        if outcome == Outcome::Upgraded {
            if let Some(up) = client.upgraded.take() {
                let Client { stream, buf, .. } = client;
                Box::pin(crate::tunnel::run(&ctx, stream, buf, *up)).await;
            }
            return;
        }
        // Pipelined requests answered without a wait must not keep the shard (coop.rs).
        crate::coop::step().await;
        // Not `|| ctx.draining()`: a response whose head went out before the drain began
        // promised keep-alive, and the client may send its next request at once; the wait
        // below, draining, gives it the grace and answers it with `Connection: close`.
        if outcome == Outcome::Close {
            // The proxy chose to close (a close-delimited body for an HTTP/1.0 client, a
            // drain, ...) a connection whose client may have pipelined its next request, or
            // one that sent more after asking for the close: closed with that unread, the
            // kernel would answer it with a reset that destroys the end of the response
            // still in flight (RFC 9112 §9.6). A TLS one's close_notify too.
            let unread =
                head.wants_keep_alive() || !client.buf.is_empty() || client.stream.has_unread();
            Box::pin(crate::linger::close(&ctx, &mut client, guard, unread)).await;
            return;
        }
        if outcome == Outcome::Cut {
            return;
        }
        if client.buf.capacity() > KEEP_BUF && client.buf.len() < INITIAL_BUF {
            client.buf.shrink_to(INITIAL_BUF);
        }
    }
}

/// Answers 408 (closing) to a client whose head did not arrive within `client_header` of
/// `since`, and logs it. Boxed: a waiting connection's task need not hold this step.
async fn request_timeout(ctx: &ShardCtx, client: &mut Client, since: Instant) {
    let own = Box::pin(respond_canned(ctx, client, Canned::RequestTimeout, true)).await;
    record_refused(ctx, client, 408, own.body, since);
}

fn head_limits(ctx: &ShardCtx) -> HeadLimits {
    let l = &ctx.shared.config.limits;
    HeadLimits {
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
        max_uri_bytes: l.max_uri_bytes,
    }
}

/// Whether `bytes` contain the empty line that ends a head (CRLF CRLF, or bare LFs).
fn has_head_end(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .any(|w| w == b"\n\n" || (w[0] == b'\n' && w[1] == b'\r'))
}

/// How long a connection waits for its next request with a read buffer posted. After that it
/// frees the buffer and waits for readability alone, so that thousands of idle keep-alive
/// connections cost little memory, while a busy connection's next request is read directly.
const HOT_WAIT: Duration = Duration::from_millis(200);

enum Wait {
    Data,
    /// Nothing came in the hot window: the wait (begun at `since`) goes on cold, until
    /// `idle_end`.
    Cold {
        idle_end: Instant,
        since: Instant,
    },
    Timeout,
    Closed,
    Draining,
}

/// Waits up to `wait` for the first bytes of a request into the (empty) client buffer.
///
/// Draining does not end the wait at once: a client may be sending its next request at that
/// very moment, and closing would lose it. Once the shard drains, the wait ends at the
/// drain's grace (`server.drain_grace`) or at `wait`, whichever comes first; a request that
/// arrives before then is served (with `Connection: close`, as everything while draining).
///
/// The hot read is cancelable and, when the hot window ends, it is cancelled and then
/// awaited: on io_uring a read may complete in the kernel just before the cancel lands, and
/// its bytes must not be lost with a dropped future. The cold wait uses readiness only,
/// which consumes nothing and is safe to drop.
async fn wait_for_request(ctx: &ShardCtx, client: &mut Client, wait: Duration) -> Wait {
    let start = crate::clock::now();
    let idle_end = start + wait;
    let hot_end = start + wait.min(HOT_WAIT);
    // Boxed, like every step an idle connection is not waiting in: the task of a connection
    // waiting cold holds only the readiness wait (tests: idle_connection_future_is_small).
    let res = Box::pin(hot_read(ctx, client, hot_end, start)).await;
    match res {
        Ok(0) => return Wait::Closed,
        Ok(_) => return Wait::Data,
        Err(e) if e.raw_os_error() != Some(libc::ECANCELED) => return Wait::Closed,
        Err(_) => {}
    }
    // Cold: give the buffers back (a TLS stream's too).
    client.buf = Vec::new();
    client.stream.release_buffers();
    Wait::Cold {
        idle_end,
        since: start,
    }
}

/// Parks a cold plain connection in the shard's lot ([`crate::park`]): its task ends and the
/// lot resumes it in a new one when it becomes readable, or closes it at `idle_end`. Not the
/// first request's wait (its expiry answers 408), not TLS (its stream holds state and may
/// hold plaintext already), not while draining: those are handed back to wait in the task.
fn park(
    ctx: &ShardCtx,
    client: Client,
    guard: ActiveGuard,
    idle_end: Instant,
    first: bool,
) -> Parking {
    let plain = matches!(client.stream, Transport::Plain(_)) && client.upgraded.is_none();
    if first || !plain || ctx.draining() || client.client_subject.is_some() {
        return Parking::Back(client, guard);
    }
    let Client {
        stream,
        peer,
        listener,
        forwarded_trusted,
        balancer_itself,
        served,
        ..
    } = client;
    let trust = (forwarded_trusted, balancer_itself);
    let Transport::Plain(stream) = stream else {
        unreachable!("checked plain above")
    };
    let back = |stream, peer, listener, trust, guard| {
        Parking::Back(Client::plain(stream, peer, listener, trust, served), guard)
    };
    let parked = Parked::new(stream, peer, listener.clone(), trust, served, guard);
    let parked = match parked {
        Ok(p) => p,
        Err((stream, guard)) => return back(stream, peer, listener, trust, guard),
    };
    drop(listener);
    match ctx.lot.park(parked, idle_end) {
        Ok(()) => Parking::Done,
        // Not parked (a failed epoll_ctl, the lot stopped): back to a stream, or closed if
        // even that fails.
        Err(p) => match TcpStream::from_std(std::net::TcpStream::from(p.fd)) {
            Ok(stream) => back(stream, p.peer, p.listener, p.trust, p.guard),
            Err(_) => Parking::Done,
        },
    }
}

/// The cold wait of a connection that is not parked: readiness alone (no buffer), until
/// `idle_end` or the drain's grace, then the first read. The connection's guard waits in the
/// shard's register, where a new connection at a limit may reclaim it ([`crate::reclaim`]):
/// given back with the outcome, or `None` if it was (the caller closes).
async fn cold_wait(
    ctx: &ShardCtx,
    client: &mut Client,
    guard: ActiveGuard,
    idle_end: Instant,
    since: Instant,
) -> (Wait, Option<ActiveGuard>) {
    let waiting = ctx.waits.enter(guard, since);
    let ready = loop {
        let left = wait_end(ctx, idle_end, since).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (expired(ctx), waiting.leave());
        }
        let step = if ctx.draining() {
            monoio::select! {
                r = client.deadline.within(left, client.stream.readable()) => Cold::Done(r),
                _ = waiting.reclaimed() => Cold::Reclaimed,
            }
        } else {
            monoio::select! {
                r = client.deadline.within(left, client.stream.readable()) => Cold::Done(r),
                _ = ctx.drain.notified() => Cold::Drain,
                _ = waiting.reclaimed() => Cold::Reclaimed,
            }
        };
        match step {
            Cold::Done(r) => break r,
            Cold::Drain => continue, // the wait now ends with the grace
            Cold::Reclaimed => return (Wait::Closed, None),
        }
    };
    let Some(guard) = waiting.leave() else {
        return (Wait::Closed, None);
    };
    let waited = match ready {
        Err(_) => expired(ctx),
        Ok(Err(_)) => Wait::Closed,
        Ok(Ok(())) => Box::pin(read_ready(ctx, client)).await,
    };
    (waited, Some(guard))
}

/// One step of a cold wait: [`Step`], or a new connection at a limit reclaimed this one.
enum Cold<T> {
    Done(T),
    Drain,
    Reclaimed,
}

/// The first read of a connection whose socket is readable (data or EOF is there, so it
/// completes at once), into a fresh buffer.
async fn read_ready(ctx: &ShardCtx, client: &mut Client) -> Wait {
    client.buf = Vec::with_capacity(INITIAL_BUF);
    let timeout = ctx.shared.config.timeouts.client_header;
    match read_more(
        &mut client.stream,
        &mut client.buf,
        &mut client.deadline,
        timeout,
    )
    .await
    {
        Ok(_) => Wait::Data,
        Err(IoFail::Timeout) => Wait::Timeout,
        Err(_) => Wait::Closed,
    }
}

/// What [`park`] did with a connection. (A value returned once per cold wait: boxing the
/// large variant would cost an allocation to save a move.)
#[allow(clippy::large_enum_variant)]
enum Parking {
    /// The task is done with it: parked (or closed, if it could not be made a stream again).
    Done,
    /// Not parked: it waits in its task.
    Back(Client, ActiveGuard),
}

/// One step of a wait: the operation finished (or its timer did), or the drain began.
enum Step<T> {
    Done(T),
    Drain,
}

/// `end`, or the drain's grace end if the shard is draining and that comes first. A wait
/// that began after the drain (`since`: a response that promised keep-alive before the
/// drain ended after it) has a grace of its own from its start: its client may be sending
/// its next request just then, and closing at once would lose it.
fn wait_end(ctx: &ShardCtx, end: Instant, since: Instant) -> Instant {
    // The grace of its own is reckoned only while draining: not on every keep-alive wait.
    ctx.grace_end().map_or(end, |g| {
        g.max(since + ctx.shared.config.drain_grace).min(end)
    })
}

/// The hot window of [`wait_for_request`]: a cancelable read into the client buffer until
/// `hot_end` (or the drain's grace), cancelled and then awaited when the window ends (on
/// io_uring a read may complete in the kernel just before the cancel lands, and its bytes
/// must not be lost with a dropped future). `ECANCELED`: nothing came.
async fn hot_read(
    ctx: &ShardCtx,
    client: &mut Client,
    hot_end: Instant,
    since: Instant,
) -> std::io::Result<usize> {
    let mut canceller = ctx.cancellers.take();
    if client.buf.capacity() == 0 {
        client.buf.reserve(INITIAL_BUF);
    }
    let owned = std::mem::take(&mut client.buf);
    let (res, slice) = {
        let read = client
            .stream
            .cancelable_read(owned.slice_mut(0..), canceller.handle());
        let mut read = std::pin::pin!(read);
        let mut done = None;
        // Two rounds at most: the hot window, then (if the drain began in it) the rest of the
        // hot window within the grace. The read stays posted across both.
        for _ in 0..2 {
            // Polled even when no time is left, so that the read is posted before a cancel.
            let left = wait_end(ctx, hot_end, since).saturating_duration_since(crate::clock::now());
            let step = if ctx.draining() {
                Step::Done(client.deadline.within(left, read.as_mut()).await)
            } else {
                monoio::select! {
                    r = client.deadline.within(left, read.as_mut()) => Step::Done(r),
                    _ = ctx.drain.notified() => Step::Drain,
                }
            };
            match step {
                Step::Done(Ok(r)) => {
                    done = Some(r);
                    break;
                }
                Step::Done(Err(_)) => break,
                Step::Drain => {}
            }
        }
        match done {
            Some(r) => r,
            None => {
                // Window over: cancel, then collect what the read did before the cancel. A
                // cancelled canceller stays cancelled: `cancel` returns a fresh one (with the
                // slot set it had) for the spares.
                canceller = canceller.cancel();
                read.await
            }
        }
    };
    // The read (and its registration with the canceller) is dropped: it can serve again.
    ctx.cancellers.give_back(canceller);
    client.buf = slice.into_inner();
    res
}

/// The shard's spare [`Canceller`]s for [`hot_read`]: one per request cost two allocations
/// and their frees (callgrind, ~350 instructions per request). Holds at most
/// [`Cancellers::KEEP`]; each is an `Rc` and an empty set.
#[derive(Default)]
pub struct Cancellers(RefCell<Vec<Canceller>>);

impl Cancellers {
    const KEEP: usize = 256;

    fn take(&self) -> Canceller {
        self.0.borrow_mut().pop().unwrap_or_default()
    }

    fn give_back(&self, c: Canceller) {
        let mut spares = self.0.borrow_mut();
        if spares.len() < Self::KEEP {
            spares.push(c);
        }
    }
}

/// A wait that ran out: while draining the connection is closed silently (no 408 for a
/// client that said nothing), otherwise the caller decides between 408 and a silent close.
fn expired(ctx: &ShardCtx) -> Wait {
    if ctx.draining() {
        Wait::Draining
    } else {
        Wait::Timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::shard::ShardCtx;
    use crate::snapshot::Shared;
    use std::path::Path;
    use std::sync::Arc;

    /// The task of a connection costs its future. A plain connection waiting for its next
    /// request has none (it is parked, crate::park); a TLS one waits in its task, and a busy
    /// one runs in it, so keep the futures small: every step a waiting connection is not in
    /// (the request exchange, the hot read, head reads after the first, canned answers, the
    /// cold wait) is boxed. 2026-12-04: `keep_alive` (a resumed connection's task) 952 bytes,
    /// `serve` (a new one's: the keep-alive loop after the accept's steps) 1,336 (2026-12-06,
    /// with the connection's `Served`: 976 and 1,368; 1,144 on
    /// 2026-12-03, when it had no parking and held its timeouts; 2,288 with the hot read and
    /// those steps inline).
    #[test]
    fn idle_connection_future_is_small() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
        let shared = Arc::new(Shared::new(
            Config::parse(text, Path::new("t.toml")).unwrap(),
        ));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ctx = Rc::new(ShardCtx::new(0, shared));
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let s = TcpStream::connect_addr(l.local_addr().unwrap())
                .await
                .unwrap();
            let peer = s.peer_addr().unwrap();
            let resumed = {
                let s = TcpStream::connect_addr(l.local_addr().unwrap())
                    .await
                    .unwrap();
                let client = Client::plain(
                    s,
                    peer,
                    Rc::default(),
                    (false, false),
                    Served::new(Instant::now()),
                );
                let guard = ActiveGuard::new(&ctx, None);
                std::mem::size_of_val(&keep_alive(ctx.clone(), client, guard, None))
            };
            assert!(resumed <= 976, "keep_alive() future is {resumed} bytes");
            {
                // The two futures boxed per request: an alignment above 16 takes mimalloc's
                // over-allocating path on every request (src/alloc.rs). monoio's timers are
                // 128-byte aligned, so a timeout held inline anywhere in the exchange (a
                // connect, an auth subrequest, a collapsed cache miss) must be boxed.
                let s = TcpStream::connect_addr(l.local_addr().unwrap())
                    .await
                    .unwrap();
                let mut client = Client::plain(
                    s,
                    peer,
                    Rc::default(),
                    (false, false),
                    Served::new(Instant::now()),
                );
                let head = RequestHead::default();
                let exchange = serve_request(&ctx, &mut client, &head);
                let align = std::mem::align_of_val(&exchange);
                assert!(
                    align <= 16,
                    "serve_request() future is {align}-byte aligned"
                );
                // The rare branches (canned answers, lingering closes, compression, splicing,
                // upgrades, request bodies) are boxed where they are awaited, so the future
                // every request allocates holds only the common path (4,368 bytes before;
                // 3,784 until the `limits.buffer_memory` charge took 16 more, 2026-12-07;
                // 3,800 until a failed try's errno for the error log took 8, 2026-12-08).
                let size = std::mem::size_of_val(&exchange);
                assert!(size <= 3808, "serve_request() future is {size} bytes");
                drop(exchange);
                let hot = hot_read(&ctx, &mut client, Instant::now(), Instant::now());
                let align = std::mem::align_of_val(&hot);
                assert!(align <= 16, "hot_read() future is {align}-byte aligned");
            }
            let guard = ActiveGuard::new(&ctx, None);
            let fut = serve(ctx, s, peer, Instant::now(), Rc::default(), guard);
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 1368, "serve() future is {size} bytes");
        });
    }
}
