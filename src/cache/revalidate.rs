//! The response cache's revalidation with the backend (RFC 9111 §4.3), between *route*
//! and *forward* and in *respond*: a stale entry found by the lookup is revalidated by the
//! request that found it. Its upstream head is made conditional on the entry
//! ([`Fill::condition`]: `If-None-Match` / `If-Modified-Since` from the stored `ETag` /
//! `Last-Modified`, replacing the client's own); then [`settle`] takes the backend's answer
//! when the client does not get it as it is: a `304` refreshes the entry (§4.3.4, fields
//! updated as §3.2 says, freshness from the `304`) and the refreshed entry is the answer
//! (`X-Cache: REVALIDATED`, or a `304` when the client's own condition holds); a 5xx within
//! the entry's `stale-if-error` window serves the stale entry (`X-Cache: STALE`), as does a
//! backend that cannot be reached or does not answer ([`Fill::stale_on_error`]). Any other
//! response replaces the entry ([`Fill::admit`]). The background revalidation of
//! `stale-while-revalidate` ([`super::refresh`]) uses the same steps.

use std::rc::Rc;
use std::time::Instant;

use super::{policy, unix_now, Fill, Hit, ShardCache, REVALIDATED, STALE};
use crate::clock::micros;
use crate::error::{Answer, ProxyError, Side};
use crate::forward::Answered;
use crate::http::parse::{HeaderKind, ResponseHead};
use crate::respond::Respond;
use crate::trace::Trace;
use crate::upstream::pool::end_exchange;

use super::store::{Entry, StoredHead};

/// Fields of a `304` that do not update the stored response (RFC 9111 §3.2) besides the
/// framing and hop-by-hop ones ([`HeaderKind::is_response_hop`]): those that
/// describe the stored body as it is, and the proxy authentication fields. `Age` is never
/// kept (the age is computed), and `Date` always comes from the `304` (dropped when it has
/// none: a stale `Date` would make the refreshed entry look old).
const NOT_UPDATED: [&str; 5] = [
    "content-encoding",
    "content-range",
    "proxy-authenticate",
    "proxy-authentication-info",
    "age",
];

/// A stored field that describes only the hop it came on ([`HeaderKind::is_response_hop`],
/// as a relayed response drops them). The stored `Content-Length` stays: a cached `304`
/// carries it.
fn hop_only(name: &[u8]) -> bool {
    HeaderKind::classify(name).is_response_hop()
}

/// Whether a `304`'s field `name` replaces the stored ones of that name: not its hop-only
/// fields, nor its `Content-Length` (it describes no body of the 304's own).
fn refreshes(name: &[u8]) -> bool {
    let kind = HeaderKind::classify(name);
    !kind.is_response_hop() && kind != HeaderKind::ContentLength && !is(name, &NOT_UPDATED)
}

fn is(name: &[u8], list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The stored head refreshed by a `304` (§4.3.4): the stored status line, the stored fields
/// the `304` does not replace, then the `304`'s fields that update (`NOT_UPDATED`).
pub fn merge_304<'h, S, U>(status_line: &[u8], stored: S, update: U, out: &mut Vec<u8>)
where
    S: Iterator<Item = (&'h [u8], &'h [u8])>,
    U: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    let updates = update.filter(|(n, _)| refreshes(n));
    out.extend_from_slice(status_line);
    for (n, v) in stored {
        if is(n, &["age", "date"]) || updates.clone().any(|(u, _)| u.eq_ignore_ascii_case(n)) {
            continue;
        }
        field(n, v, out);
    }
    for (n, v) in updates {
        field(n, v, out);
    }
    out.extend_from_slice(b"\r\n");
}

fn field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The most fields and bytes a head merged from a stored one and a `304` may have to be
/// stored: a bound on the memory and the work (every hit copies each field) a refresh can
/// add.
const MERGED_MAX_FIELDS: usize = 100;
const MERGED_MAX_BYTES: usize = 64 * 1024;

impl Fill<'_> {
    /// The forwarded request revalidates a stale entry (a GET, the entry has a validator).
    pub fn revalidating(&self) -> bool {
        self.store && self.stale.as_ref().is_some_and(|s| s.entry.has_validator())
    }

    /// Makes the upstream request head `out` (as `upstream_request_head` wrote it: one
    /// `name: value` line per field, each ending CRLF, then an empty line) what the cache
    /// needs: when [`Fill::revalidating`], conditional on the stale entry (the client's
    /// `If-None-Match` and `If-Modified-Since` go, the entry's `ETag` and `Last-Modified` are
    /// sent instead); and without the client's `Range` and `If-Range` when the response may
    /// be stored and replaces a stale entry, is fetched in the background, or the range is
    /// all of it (`bytes=0-`, what media players ask first), as nginx's cache asks for the
    /// whole object: a `206` is never stored, and would remove the entry it answers. The
    /// hits then serve the parts ([`super::range`]); another range on a miss is forwarded,
    /// its `206` relayed, and the whole object fetched in the background
    /// ([`super::Lookup::RangeMiss`]).
    pub fn condition(&self, out: &mut Vec<u8>) {
        let revalidating = self.stale.as_ref().filter(|_| self.revalidating());
        // Only a request that has a Range: the head is rebuilt for nothing otherwise.
        let range = self.req.iter().find(|(n, _)| &n[..] == b"range");
        let drop_range = self.store
            && range.is_some_and(|(_, v)| {
                self.stale.is_some()
                    || self.background
                    || v.trim_ascii().eq_ignore_ascii_case(b"bytes=0-")
            });
        if revalidating.is_none() && !drop_range {
            return;
        }
        let dropped: &[&str] = if revalidating.is_some() {
            &["if-none-match", "if-modified-since", "range", "if-range"]
        } else {
            &["range", "if-range"]
        };
        let mut head = Vec::with_capacity(out.len() + 96);
        let mut lines = out.split(|&b| b == b'\n');
        // The request line.
        if let Some(first) = lines.next() {
            head.extend_from_slice(first);
            head.push(b'\n');
        }
        for line in lines {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            if line == b"\r" || line.is_empty() {
                break;
            }
            if is(name.trim_ascii(), dropped) {
                continue;
            }
            head.extend_from_slice(line);
            head.push(b'\n');
        }
        if let Some(stale) = revalidating {
            let e = &stale.entry;
            if let Some(etag) = &e.etag {
                field(b"If-None-Match", etag, &mut head);
            }
            if let Some(lm) = e.last_modified {
                field(
                    b"If-Modified-Since",
                    &crate::http::date::http_date(lm),
                    &mut head,
                );
            }
        }
        head.extend_from_slice(b"\r\n");
        out.clear();
        out.extend_from_slice(&head);
    }

    /// The backend answered the revalidation `304` (`head`, parsed from `buf`): the stale
    /// entry is refreshed (stored again when the merged response may be) and is the answer.
    pub fn not_modified(&mut self, buf: &[u8], head: &ResponseHead) -> NotModified {
        if head.status != 304 || !self.revalidating() || buf.len() < head.head_len {
            return NotModified::NotOurs;
        }
        let Some(stale) = self.stale.take() else {
            return NotModified::NotOurs;
        };
        let old = &stale.entry;
        // Fields a `Connection` names are for that hop only (RFC 9110 §7.6.1), the 304's and
        // the stored response's alike: neither merged nor read for freshness (the stored ones
        // were not read when it was stored), as a relayed response drops them. The stored
        // `Connection` itself, and its other hop-by-hop fields, go too.
        let (stored, sbytes) = (&old.head.parsed, &old.head.bytes[..]);
        let old_fields: Vec<_> = fields_of(stored, sbytes)
            .into_iter()
            .filter(|(n, _)| !stored.named_in_connection(sbytes, n) && !hop_only(n))
            .collect();
        let new_fields: Vec<_> = fields_of(head, buf)
            .into_iter()
            .filter(|(n, _)| !head.named_in_connection(buf, n))
            .collect();
        let sent = policy::response_facts(new_fields.iter().copied());
        if let (Some(new), Some(_)) = (&sent.etag, &old.etag) {
            // §4.3.4: a 304 naming another representation updates nothing; the entry,
            // no longer known to be current, goes. The 304 answers the proxy's validators,
            // not the client's request: it is never relayed (a 502 instead).
            if !policy::none_match(new, old.etag.as_deref()) {
                self.remove(&stale.key);
                ShardCache::bump(&self.cache.revalidations_failed);
                return NotModified::Unusable;
            }
        }
        let stored = &old.head.bytes;
        let line_end = stored.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut merged = Vec::with_capacity(stored.len() + head.head_len);
        merge_304(
            &stored[..line_end],
            old_fields.iter().copied(),
            new_fields.iter().copied(),
            &mut merged,
        );
        let now = unix_now();
        let merged = (merged.len() <= MERGED_MAX_BYTES)
            .then(|| StoredHead::new(merged.into()))
            .flatten()
            .filter(|h| h.parsed.headers.len() <= MERGED_MAX_FIELDS);
        let Some(merged) = merged else {
            // Too large to keep (each part was within the head limits, together they need
            // not be): the stored response, which the 304 says is current, answers this once
            // with its own head, aged from the 304, and the entry goes.
            self.remove(&stale.key);
            let once = Entry {
                head: old.head.clone(),
                body: old.body.clone(),
                stored: Instant::now(),
                initial_age: policy::initial_age(&sent, self.request_sent.elapsed(), now),
                etag: old.etag.clone(),
                ..**old
            };
            return self.refreshed(Rc::new(once));
        };
        let merged = Rc::new(merged);
        let merged_list = fields_of(&merged.parsed, &merged.bytes);
        let facts = policy::response_facts(merged_list.iter().copied());
        let initial_age = policy::initial_age(&sent, self.request_sent.elapsed(), now);
        let lifetime = match policy::storable(
            old.status,
            &facts,
            self.rules,
            &self.own,
            (now, self.cfg.valid_for(old.status)),
        ) {
            policy::Storable::Yes { lifetime } => lifetime,
            policy::Storable::No(_) => 0,
        };
        let entry = || Entry {
            status: old.status,
            head: merged.clone(),
            body: old.body.clone(),
            stored: Instant::now(),
            initial_age,
            lifetime,
            windows: policy::stale_windows(&facts.directives),
            etag: facts.etag.clone().or_else(|| old.etag.clone()),
            last_modified: facts.last_modified.or(old.last_modified),
        };
        // A purge (or an eviction) while the backend was asked leaves it gone, and a newer
        // response stored meanwhile (a waiter that gave up and fetched) is not overwritten.
        let present = self
            .cache
            .stores
            .borrow()
            .get(&self.route)
            .is_some_and(|s| s.holds(&stale.key, &stale.entry));
        let vary = self
            .cache
            .stores
            .borrow()
            .get(&self.route)
            .and_then(|s| s.vary_names(&self.key))
            .unwrap_or_else(|| Rc::from(Vec::new()));
        // A 304 that changes `Vary` changes which requests the entry answers (RFC 9111 §4.1),
        // and its key was made from the old names: it is not stored again under that key.
        let same_vary =
            vary.len() == facts.vary.len() && facts.vary.iter().all(|n| vary.contains(n));
        if present
            && initial_age < lifetime
            && same_vary
            && (facts.vary.is_empty() || !self.no_vary)
        {
            self.insert(&stale.key, vary, entry());
        } else {
            // Refreshed, but no longer storable: answered once, then gone.
            self.remove(&stale.key);
        }
        self.refreshed(Rc::new(entry()))
    }

    /// The answer to a revalidation that the backend's `304` confirmed: `entry`, counted.
    fn refreshed(&mut self, entry: Rc<Entry>) -> NotModified {
        let c = self.cache;
        ShardCache::bump(&c.revalidations_not_modified);
        self.verdict = Some(REVALIDATED);
        if !self.background {
            ShardCache::bump(&c.revalidated);
        }
        // Waiting requests find the refreshed entry now, not after this client's write.
        self.release();
        let fields = self.req.iter().map(|(n, v)| (&n[..], &v[..]));
        NotModified::Hit(Hit::new(entry, fields, REVALIDATED))
    }

    /// The revalidation (or refetch) of a stale entry failed: the backend could not be
    /// reached, did not answer in time, answered a 5xx (`error` is `None`), or broke the
    /// exchange. Within the entry's `stale-if-error` window the stale entry is the answer.
    pub fn stale_on_error(&mut self, error: Option<&ProxyError>) -> Option<Hit> {
        if let Some(e) = error {
            // The client went away, or already has bytes of a response: nothing to serve.
            let upstream = e.side == Side::Upstream || e.side == Side::Proxy;
            if !upstream || e.answer() == Answer::Close {
                return None;
            }
        }
        // Failed either way (a 5xx relayed leaves the entry: [`Fill::admit`] does not see it).
        let stale = self.stale.take()?;
        let c = self.cache;
        ShardCache::bump(&c.revalidations_failed);
        // Within the window when the request looked (`if_error`) and still now: the backend
        // may have taken up to its timeout to fail.
        if !stale.if_error || !super::within_if_error(&stale.entry, &self.cfg) {
            return None;
        }
        self.verdict = Some(STALE);
        if !self.background {
            ShardCache::bump(&c.stale);
        }
        let fields = self.req.iter().map(|(n, v)| (&n[..], &v[..]));
        Some(Hit::new(stale.entry, fields, STALE))
    }
}

/// The (name, value) fields of `head`, parsed from `buf`.
fn fields_of<'b>(head: &ResponseHead, buf: &'b [u8]) -> Vec<(&'b [u8], &'b [u8])> {
    head.headers
        .iter()
        .map(|f| (f.name.get(buf), f.value.get(buf)))
        .collect()
}

/// Takes the backend's answer to a revalidation when the client does not get it as it is:
/// a `304` (the refreshed entry is the answer; the connection is pooled again when it can
/// be) or a 5xx within the entry's `stale-if-error` (the stale entry; the connection, its
/// body unread, is dropped). Otherwise the answer is handed back to be relayed.
// `Err` is the answer handed back to be relayed, not a failure: it moves once, as it
// would into `relay_response`; boxing it would allocate on every cached-route miss.
#[allow(clippy::result_large_err)]
pub fn settle<'x>(
    ctx: &crate::shard::ShardCtx,
    fill: Option<&mut Fill<'_>>,
    r: &Respond<'_>,
    answered: Answered<'x>,
    trace: &mut Trace,
) -> Settled<'x> {
    let Some(fill) = fill else {
        return Settled::Relay(answered);
    };
    // A ranged miss: the whole object fetched in the background, when its `206` says it may
    // be stored.
    super::refresh::start_whole(ctx, fill, &answered.ubuf, &answered.head);
    let status = answered.head.status;
    let hit = match status {
        304 => match fill.not_modified(&answered.ubuf, &answered.head) {
            NotModified::Hit(hit) => Some(hit),
            NotModified::NotOurs => None,
            NotModified::Unusable => {
                r.stats.upstream_status(answered.backend, status);
                return Settled::Unusable;
            }
        },
        // RFC 5861 §4: the errors stale-if-error covers.
        500 | 502 | 503 | 504 => fill.stale_on_error(None),
        _ => None,
    };
    let Some(hit) = hit else {
        return Settled::Relay(answered);
    };
    r.stats.upstream_status(answered.backend, status);
    trace.upstream_us = Some(micros(answered.sending));
    let head = &answered.head;
    let reusable = status == 304
        && head.upstream_keep_alive()
        && answered.ubuf.len() == head.head_len
        && !answered.early;
    end_exchange(
        r.pool,
        r.backends,
        answered.backend,
        answered.upstream,
        reusable,
    );
    Settled::Hit(hit)
}

/// What a `304` from the backend means for a fill ([`Fill::not_modified`]).
pub enum NotModified {
    /// Not an answer to this fill's revalidation (the client's own conditional on a miss).
    NotOurs,
    /// The refreshed entry answers the client.
    Hit(Hit),
    /// An answer to the proxy's validators that refreshes nothing (another ETag, or the
    /// stored head no longer parses): the entry is gone, and the 304 is not the client's.
    Unusable,
}

/// What [`settle`] made of the backend's answer. Returned once per response on a cached
/// route and matched at once: boxing the relayed answer would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub enum Settled<'x> {
    /// Answered from the (refreshed or stale) entry.
    Hit(Hit),
    /// Relayed as it is.
    Relay(Answered<'x>),
    /// A revalidation `304` that answers nothing the client asked: a 502.
    Unusable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_updates_the_stored_fields_but_not_the_framing() {
        let stored = [
            (&b"Content-Length"[..], &b"5"[..]),
            (b"ETag", b"\"v1\""),
            (b"Cache-Control", b"max-age=1"),
            (b"Date", b"old"),
            (b"Age", b"3"),
            (b"X-Kept", b"k"),
        ];
        let update = [
            (&b"Cache-Control"[..], &b"max-age=60"[..]),
            (b"Content-Length", b"0"),
            (b"Connection", b"close"),
            (b"Age", b"1"),
            (b"X-New", b"n"),
        ];
        let mut out = Vec::new();
        merge_304(
            b"HTTP/1.1 200 OK\r\n",
            stored.into_iter(),
            update.into_iter(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\nX-Kept: k\r\n\
             Cache-Control: max-age=60\r\nX-New: n\r\n\r\n"
        );
    }
}
