//! Stage 3b of the pipeline, *authenticate*: after *route* (the route is chosen and its
//! `allow`/`deny` passed) and before the request is encoded for its upstream
//! ([`crate::proxy`]). A route's `auth` ([`crate::config::RouteAuth`]) either lets the
//! request through, with header fields to set on or strip from the forwarded request
//! ([`Granted`]), or refuses it with the answer the client gets ([`Denial`]):
//!
//! - `basic` ([`basic`]): HTTP Basic against an htpasswd file of bcrypt hashes. bcrypt costs
//!   tens of milliseconds by design, so it never runs on a shard's event loop: a small pool
//!   of verifier threads does it while the shard serves other connections, and each shard
//!   remembers recent successes (by a keyed hash, never the password), so the steady state
//!   costs no bcrypt at all.
//! - `forward` ([`forward`]): ask an auth service (a backend of a configured upstream) with
//!   the request's headers; a 2xx lets the request through, anything else is the answer.

pub mod basic;
pub mod forward;

use std::net::IpAddr;

use crate::client::Client;
use crate::config::RouteAuth;
use crate::config::RouteConfig;
use crate::forward::RequestFacts;
use crate::http::canned::Canned;
use crate::http::encode::{client_response_head, OutFraming};
use crate::http::parse::Method;
use crate::http::parse::RequestHead;
use crate::respond::{
    cfg_rid_header, proxy_fields, respond_canned_with, response_rewrite, response_vars, write_own,
    Field, Own,
};
use crate::shard::ShardCtx;
use crate::stats::{bump, Stats};
use crate::trace::RequestId;

/// The two ways a route authenticates, a label of `edgeshard_auth_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Basic = 0,
    Forward = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Basic, Mode::Forward];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Basic => "basic",
            Mode::Forward => "forward",
        }
    }
}

/// How one check ended, a label of `edgeshard_auth_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let through.
    Ok = 0,
    /// Refused: no or wrong credentials (401), or the auth service said no.
    Denied = 1,
    /// The check could not be made (the auth service unreachable, timed out or answering
    /// nonsense; the verifier threads gone): 500.
    Error = 2,
    /// Too many bcrypt checks already waiting on this shard: 503 at once.
    Overloaded = 3,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Ok,
        Verdict::Denied,
        Verdict::Error,
        Verdict::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Denied => "denied",
            Verdict::Error => "error",
            Verdict::Overloaded => "overloaded",
        }
    }
}

/// The index of (mode, verdict) in [`crate::stats::Totals::auth`].
pub fn slot(m: Mode, v: Verdict) -> usize {
    m as usize * Verdict::ALL.len() + v as usize
}

fn count(stats: &Stats, m: Mode, v: Verdict) {
    bump(&stats.auth[slot(m, v)]);
}

/// A header field (name, value) set on the forwarded request; an empty value only removes.
pub type SetField = (Box<[u8]>, Box<[u8]>);

/// What the request carries on when it is let through.
#[derive(Default)]
pub struct Granted {
    /// Remove the client's `Authorization` (basic, unless `forward_authorization`).
    pub strip_authorization: bool,
    /// Fields copied from the auth service's answer (forward): each replaces every client
    /// field of its name; an empty value only removes them.
    pub copied: Vec<SetField>,
}

/// The answer to a refused request.
pub enum Denial {
    /// One of the proxy's own answers, with one more field (`WWW-Authenticate`,
    /// `Retry-After`).
    Canned(Canned, Option<(&'static [u8], Box<[u8]>)>),
    /// The auth service's answer: its head as it sent it, written through the rules of a
    /// relayed response ([`answer`]), and its body.
    Relayed {
        status: u16,
        head: Box<crate::cache::store::StoredHead>,
        body: Vec<u8>,
    },
}

impl Denial {
    pub fn status(&self) -> u16 {
        match self {
            Denial::Canned(c, _) => c.status(),
            Denial::Relayed { status, .. } => *status,
        }
    }

    /// Its `$error_reason`: the proxy's own answer's, or the auth service's refusal.
    pub fn reason(&self) -> crate::error::Reason {
        match self {
            Denial::Canned(c, _) => crate::error::Reason::Own(c.status()),
            Denial::Relayed { .. } => crate::error::Reason::AuthDenied,
        }
    }
}

/// The request as the checks see it: its head in the client buffer and what routing read.
pub struct Request<'b> {
    pub buf: &'b [u8],
    pub head: &'b RequestHead,
    /// The Host (or absolute-form authority) the request was routed by.
    pub host: &'b [u8],
    /// The target as the client sent it (path and query).
    pub target: &'b [u8],
    /// Who the client is ([`crate::admission::client_address`]).
    pub client_ip: IpAddr,
    /// The client spoke TLS to us.
    pub https: bool,
    /// The mTLS subject: the check gets the verified one, never a client's copy.
    pub subjects: crate::tls::Subjects<'b>,
}

/// Runs the route's check.
pub async fn check(ctx: &ShardCtx, auth: &RouteAuth, req: &Request<'_>) -> Result<Granted, Denial> {
    match auth {
        RouteAuth::Basic(b) => basic::check(ctx, b, req).await,
        RouteAuth::Forward(f) => forward::check(ctx, f, req).await,
    }
}

/// Writes `denial` to the client; `close` adds `Connection: close`, a HEAD request gets the
/// head only. The auth service's own answer goes through the rules of a relayed response:
/// hop-by-hop and `Connection`-named fields, the backend's `Server` and `X-Powered-By` and
/// `server.hide_response_headers` out; the proxy's `Server`, `Date`, request id, the
/// listener's HSTS and the listener's and route's response header rules in.
pub async fn answer(
    ctx: &ShardCtx,
    client: &mut Client,
    denial: &Denial,
    close: bool,
    facts: &RequestFacts,
    rid: &RequestId,
    route: Option<&RouteConfig>,
) -> Own {
    let head_only = facts.method == Method::Head;
    match denial {
        Denial::Canned(c, extra) => {
            let mut fields: [Field<'_>; 2] = [(b"", b""); 2];
            let mut n = 0;
            for f in extra
                .as_ref()
                .map(|(name, value)| (*name, &value[..]))
                .into_iter()
                .chain(cfg_rid_header(ctx, rid))
            {
                fields[n] = f;
                n += 1;
            }
            let pages = route.map_or(&[][..], |r| &r.error_pages);
            respond_canned_with(ctx, client, *c, close, head_only, &fields[..n], pages).await
        }
        Denial::Relayed { head, body, .. } => {
            let cfg = &ctx.shared.config;
            let mut set: [Field<'_>; 3] = [(b"", b""); 3];
            let listener = client.listener.clone();
            let n_set = proxy_fields(cfg, &listener, rid, &mut set, 0);
            let vars = response_vars(facts, rid, crate::tls::client_facts(client).0, route);
            let rw = response_rewrite(cfg, &ctx.date, &listener, route, &set[..n_set], &vars);
            let framing = OutFraming::Length(body.len() as u64);
            let mut out = ctx.buffer();
            let (bytes, parsed) = (&head.bytes[..], &head.parsed);
            client_response_head(bytes, parsed, framing, close, facts.minor, rw, &mut out);
            let sent = if head_only { 0 } else { body.len() as u64 };
            if !head_only {
                out.extend_from_slice(body);
            }
            let (stream, deadline) = (&mut client.stream, &mut client.deadline);
            write_own(ctx, stream, deadline, &mut out, close, sent).await
        }
    }
}
