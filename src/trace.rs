//! Stages 3 to 7, what each request leaves behind: the [`Trace`] filled in along the
//! pipeline, the request id it carries, and the access-log fields copied out of its head.
//! Used by [`crate::proxy`] (and the refusals of [`crate::conn`]).

use std::time::Instant;

use crate::client::Client;
use crate::clock::micros_total;
use crate::http::parse::RequestHead;
use crate::observe::access::{AccessLog, HeadFacts, Outcome, RequestFields, UpstreamTry};
use crate::observe::reqid::valid_incoming;
use crate::shard::ShardCtx;

/// What one request did, filled in along the pipeline for the counters and the access log.
#[derive(Default)]
pub struct Trace {
    /// Indices as `u32`: the trace lives in every request's future (the route's through
    /// [`Trace::route`]).
    route: Option<u32>,
    pub upstream: Option<u32>,
    pub backend: Option<u32>,
    /// The status the client got (None: closed without a response).
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's first byte sent upstream to the last response byte relayed.
    pub upstream_us: Option<u64>,
    /// The last try's connect, from its pick (0 on a pooled connection; nginx's
    /// `$upstream_connect_time`), and its response head, from its first byte sent
    /// (`$upstream_header_time`), in µs (saturating at `u32::MAX`, 71 minutes).
    pub upstream_connect_us: Option<u32>,
    pub upstream_header_us: Option<u32>,
    /// The time it waited in breaker queues, all its tries together, in µs (saturating as
    /// the two above; `$upstream_queue_time`); 0 when it never waited (a wait counts at least
    /// 1). Not an `Option`: four bytes fewer in every request's future.
    pub queued_us: u32,
    /// Closed without a complete response (client gone, or a body cut short).
    pub aborted: bool,
    /// The status of the backend's response (the access log's `$upstream_status`), or the
    /// 502 or 504 nginx writes for a last try that got none.
    pub upstream_status: Option<u16>,
    /// The tries a retry followed, in order (`backend` is the one after them). Boxed: most
    /// requests have none, and the trace lives in every request's future (one word here
    /// where a `Vec` takes three).
    #[allow(clippy::box_collection)]
    earlier: Option<Box<Vec<UpstreamTry>>>,
    /// The response's `X-Cache`, on a route with `cache`.
    pub cache: Option<&'static [u8]>,
    /// Why the proxy answered itself or the exchange ended early (`$error_reason`): a
    /// refusal's or a failure's reason ([`crate::error::ProxyError::reason`]).
    pub error: Option<crate::error::Reason>,
    /// The coding the client accepts best among its route's `compress.algorithms`
    /// ([`crate::compress::negotiate`]); None for a route without `compress`.
    pub compress: Option<crate::config::Algorithm>,
}

impl Trace {
    /// The route matched (an index into the configuration's routes).
    pub fn route(&self) -> Option<usize> {
        self.route.map(|r| r as usize)
    }

    pub fn set_route(&mut self, route: usize) {
        self.route = u32::try_from(route).ok();
    }

    /// Records a try that a retry followed: its backend, the status it gave (the backend's,
    /// or [`crate::relay::HeadFail::logged_status`]'s) and its time.
    pub fn tried(&mut self, t: UpstreamTry) {
        self.earlier.get_or_insert_default().push(t);
    }

    /// The last try's times (and, when it got no head, its 502 or 504 and the time until
    /// then; an answered one's status and time are set as it is relayed).
    pub fn last_try(&mut self, t: &UpstreamTry) {
        self.upstream_connect_us = t.connect_us.map(saturating_u32);
        self.upstream_header_us = t.header_us.map(saturating_u32);
        if t.header_us.is_none() {
            self.upstream_status = Some(t.status);
            self.upstream_us = Some(t.us);
        }
    }

    /// The request ends without another try (no backend left, or its breaker refused):
    /// the last try listed becomes the last try (`backend`, `upstream_status`,
    /// `upstream_us`), so the lists end with it once.
    pub fn last_try_was_listed(&mut self) {
        if let Some(t) = self.earlier.as_mut().and_then(|e| e.pop()) {
            self.last_try(&t);
            // An answer a retry was to follow: its status and time as well.
            self.upstream_status = Some(t.status);
            self.upstream_us = Some(t.us);
        }
    }

    /// The tries a retry followed, in order.
    pub fn earlier(&self) -> &[UpstreamTry] {
        self.earlier.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Microseconds as the trace keeps them.
pub fn saturating_u32(us: u64) -> u32 {
    u32::try_from(us).unwrap_or(u32::MAX)
}

/// The request id: generated here, or kept from a trusted peer (then it travels unchanged).
pub enum RequestId {
    Generated(crate::observe::reqid::RequestId),
    Trusted(Box<[u8]>),
}

impl RequestId {
    pub fn bytes(&self) -> &[u8] {
        match self {
            RequestId::Generated(g) => g,
            RequestId::Trusted(t) => t,
        }
    }
}

/// Counts and logs a request refused before it could be parsed (bad head, or a connection
/// that sent nothing within `client_header`): the client got `status` with `body` bytes.
pub fn record_refused(ctx: &ShardCtx, client: &Client, status: u16, body: u64, started: Instant) {
    crate::stats::bump(&ctx.stats.requests);
    let total_us = micros_total(started);
    ctx.stats.finish_request(None, Some(status), total_us);
    let log = ctx.access.as_ref();
    if let Some(log) = log.filter(|l| l.writes(l.sampled(), Some(status), total_us)) {
        let fields = RequestFields::unparsed();
        log.push(
            &fields,
            &Outcome {
                client: client.peer.ip(),
                status: Some(status),
                bytes_in: 0,
                bytes_out: body,
                total_us,
                upstream_us: None,
                upstream_connect_us: None,
                upstream_header_us: None,
                upstream_queue_us: None,
                route: None,
                upstream: None,
                backend: None,
                cache: None,
                tls: crate::tls::log_facts(client),
                // The refused request counts too (it was never counted by `Served::count`).
                connection_requests: client.served.requests().saturating_add(1),
                peer_port: client.peer.port(),
                upstream_status: None,
                earlier: &[],
                error: Some(crate::error::Reason::Own(status)),
            },
            &ctx.stats,
        );
    }
}

/// The id this request carries: the incoming one from a trusted peer, else a new one.
pub fn request_id(ctx: &ShardCtx, client: &Client, head: &RequestHead) -> RequestId {
    let cfg = &ctx.shared.config.request_id;
    if client.forwarded_trusted {
        let name = cfg.header_lower.as_bytes();
        let incoming = head.header(&client.buf, name).filter(|v| valid_incoming(v));
        if let Some(v) = incoming {
            return RequestId::Trusted(v.into());
        }
    }
    RequestId::Generated(ctx.ids.generate())
}

/// The request facts `log` writes, copied out of the head (boxed: they wait in the
/// exchange's future, which every request allocates, logged or not).
pub fn log_fields(
    log: &AccessLog,
    buf: &[u8],
    head: &RequestHead,
    rid: &[u8],
) -> Box<RequestFields> {
    let header = |name: &[u8]| head.header(buf, name).unwrap_or_default();
    // The host the request was routed on (an absolute-form target's authority, else Host),
    // when it is one (nginx's `$host`; a malformed one is not logged).
    let authority = crate::http::encode::split_target(head.target.get(buf)).authority;
    let host = authority
        .or(head.host.map(|h| h.get(buf)))
        .filter(|h| crate::route::valid_authority(h));
    let user = match log.wants_user() {
        true => crate::auth::basic::user_name(buf, head),
        false => None,
    };
    Box::new(RequestFields::new(
        &HeadFacts {
            method: head.method.get(buf),
            target: head.target.get(buf),
            minor: head.minor_version,
            head_len: head.head_len,
            host: host.unwrap_or_default(),
            referer: header(b"referer"),
            user_agent: header(b"user-agent"),
            request_id: rid,
            user: user.as_deref().unwrap_or_default(),
        },
        log.headers().iter().map(|name| header(name)),
    ))
}
