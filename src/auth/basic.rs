//! Stage 3b, *authenticate*, for a route's `auth.basic`: the `Authorization: Basic` field
//! checked against the route's htpasswd file ([`crate::config::Users`]).
//!
//! bcrypt is slow on purpose (tens of milliseconds at the usual cost): it runs on
//! [`VERIFIER_THREADS`] verifier threads, never on a shard, which awaits the answer on a
//! oneshot channel and serves its other connections meanwhile. At most
//! `limits.auth_pending` checks of the whole process wait for them; beyond that the request
//! is answered 503 at once (a flood of wrong passwords cannot queue without bound, nor
//! grow the wait with the number of shards). A
//! verified (user, password, stored hash) is remembered per shard ([`Remembered`]) for
//! `cache_ttl` under a keyed 128-bit hash (random keys per process: neither the password
//! nor anything an attacker could precompute is kept), so repeat requests cost no bcrypt.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Instant;

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{count, Denial, Granted, Mode, Request, Verdict};
use crate::config::BasicAuth;
use crate::http::canned::Canned;
use crate::http::parse::RequestHead;
use crate::shard::ShardCtx;
use crate::stats::bump;

/// Threads that run bcrypt for all shards. Two keep a burst of new logins from waiting on
/// one another without taking cores from the shards; the queue bound
/// (`limits.auth_pending`, [`PENDING`]) keeps the work they are given bounded.
pub const VERIFIER_THREADS: usize = 2;

/// The longest `Authorization` value looked at (a user name and password of a few hundred
/// bytes each fit easily).
const MAX_CREDENTIALS: usize = 4096;

/// Checks the request's credentials against `auth`.
pub async fn check(ctx: &ShardCtx, auth: &BasicAuth, req: &Request<'_>) -> Result<Granted, Denial> {
    let verdict = verify(ctx, auth, req).await;
    count(&ctx.stats, Mode::Basic, verdict);
    match verdict {
        Verdict::Ok => Ok(Granted {
            strip_authorization: !auth.forward_authorization,
            copied: Vec::new(),
        }),
        Verdict::Denied => Err(Denial::Canned(
            Canned::Unauthorized,
            Some((b"WWW-Authenticate", auth.challenge.clone())),
        )),
        Verdict::Overloaded => Err(Denial::Canned(
            Canned::ServiceUnavailable,
            Some((b"Retry-After", Box::from(&b"1"[..]))),
        )),
        Verdict::Error => Err(Denial::Canned(Canned::InternalServerError, None)),
    }
}

async fn verify(ctx: &ShardCtx, auth: &BasicAuth, req: &Request<'_>) -> Verdict {
    let Some((user, password)) = credentials(req.buf, req.head) else {
        // No credentials: a browser's first request, answered with the challenge.
        return Verdict::Denied;
    };
    // An unknown user is refused without bcrypt: cheaper under a flood, at the cost of
    // telling by timing which user names exist.
    let Some(hash) = auth.users.hash(&user) else {
        refused(ctx, req, &user, "unknown user");
        return Verdict::Denied;
    };
    let remembered = &ctx.auth;
    let key = remembered.key(&user, &password, hash);
    if remembered.fresh(key, Instant::now()) {
        bump(&ctx.stats.auth_cache_hits);
        return Verdict::Ok;
    }
    let limits = &ctx.shared.config.limits;
    let Some(_pending) = Pending::take(&PENDING, limits.auth_pending) else {
        return Verdict::Overloaded;
    };
    bump(&ctx.stats.auth_bcrypt);
    match verify_off_loop(password, hash.clone()).await {
        Some(true) => {
            let until = Instant::now() + auth.cache_ttl;
            remembered.remember(key, until, limits.auth_cache_entries);
            Verdict::Ok
        }
        Some(false) => {
            refused(ctx, req, &user, "wrong password");
            Verdict::Denied
        }
        None => Verdict::Error,
    }
}

/// Logs refused credentials within `log.error_rate` (a budget of their own), with the
/// client's address and the user name (escaped), as nginx's `user "x": password mismatch`
/// line that fail2ban reads.
fn refused(ctx: &ShardCtx, req: &Request<'_>, user: &[u8], why: &str) {
    if ctx.logins.allow(&ctx.stats) {
        let user = String::from_utf8_lossy(user);
        tracing::warn!(client = %req.client_ip, user = ?user, "basic auth refused: {why}");
    }
}

/// The user name of the request's one `Authorization: Basic` field, as the client sent it
/// (verified or not, as nginx's `$remote_user`), for the access log.
pub fn user_name(buf: &[u8], head: &RequestHead) -> Option<Vec<u8>> {
    credentials(buf, head).map(|(user, _)| user)
}

/// The user and password of the request's `Authorization: Basic` field (a head with two
/// is refused when parsed); `None` when there is none or it does not decode.
fn credentials(buf: &[u8], head: &RequestHead) -> Option<(Vec<u8>, Zeroizing<Vec<u8>>)> {
    let field = head
        .headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(b"authorization"));
    let value = field?.value.get(buf);
    if value.len() > MAX_CREDENTIALS {
        return None;
    }
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
            .ok()?,
    );
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((
        decoded[..colon].to_vec(),
        Zeroizing::new(decoded[colon + 1..].to_vec()),
    ))
}

/// One shard's recently verified credentials.
/// Lives for the shard's life (across reloads: an entry names the stored hash, so a
/// changed password in a reloaded file is not matched).
pub struct Remembered {
    keys: (RandomState, RandomState),
    /// Keyed hash of (user, password, stored hash) → until when it is trusted.
    seen: RefCell<HashMap<u128, Instant>>,
}

impl Default for Remembered {
    fn default() -> Self {
        Remembered {
            // Two independently keyed SipHashes: 128 bits, keys random per process.
            keys: (RandomState::new(), RandomState::new()),
            seen: RefCell::default(),
        }
    }
}

impl Remembered {
    fn key(&self, user: &[u8], password: &[u8], hash: &str) -> u128 {
        // Slices hash with their lengths: (a, bc) and (ab, c) differ.
        let parts = (user, password, hash.as_bytes());
        (u128::from(self.keys.0.hash_one(parts)) << 64) | u128::from(self.keys.1.hash_one(parts))
    }

    fn fresh(&self, key: u128, now: Instant) -> bool {
        let mut seen = self.seen.borrow_mut();
        match seen.get(&key) {
            Some(&until) if until > now => true,
            Some(_) => {
                seen.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers `key` until `until`, keeping at most `max` entries: expired ones go first,
    /// then an arbitrary one.
    fn remember(&self, key: u128, until: Instant, max: usize) {
        if max == 0 {
            return;
        }
        let mut seen = self.seen.borrow_mut();
        if seen.len() >= max && !seen.contains_key(&key) {
            let now = Instant::now();
            seen.retain(|_, u| *u > now);
            while seen.len() >= max {
                let Some(&k) = seen.keys().next() else { break };
                seen.remove(&k);
            }
        }
        seen.insert(key, until);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.borrow().len()
    }
}

/// Checks of the whole process sent to the verifier threads and not yet answered: the
/// threads serve every shard, so the bound on their queue is the process's (an atomic, but
/// touched only by requests that need bcrypt, never by a remembered login).
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// A place among the process's in-flight checks, given back on drop.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn take(c: &'a AtomicUsize, max: usize) -> Option<Pending<'a>> {
        c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        Some(Pending(c))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One bcrypt check for the verifier threads.
struct Job {
    password: Zeroizing<Vec<u8>>,
    hash: Arc<str>,
    reply: futures_channel::oneshot::Sender<bool>,
}

/// The verifier threads' queue, started on first use (after privileges are dropped).
/// `None`: no thread could be started.
static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static mpsc::Sender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for i in 0..VERIFIER_THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("edgeshard-auth-{i}"))
                    .spawn(move || {
                        unpin();
                        verifier(&rx)
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => tracing::error!(error = %e, "cannot start a bcrypt verifier thread"),
                }
            }
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// Gives the calling thread the process's CPUs (the main thread's set). The verifier threads
/// start from the first shard that needs one and would inherit that shard's pinning: bcrypt
/// would then run on that shard's CPU only, taking it from its event loop. Best effort: on
/// failure the thread keeps the mask it has.
fn unpin() {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is a valid value; both calls get
    // its exact size and only read or write within it; pid 0 is the calling thread and
    // `getpid()` the main thread, whose mask shard pinning never changes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) == 0 {
            libc::sched_setaffinity(0, size, &set);
        }
    }
}

fn verifier(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // The shard gave up (its client left): no one waits for the answer.
        if job.reply.is_canceled() {
            continue;
        }
        // Hashes were checked when the file was loaded: an error here is a refusal.
        let ok = bcrypt::verify(&job.password[..], &job.hash).unwrap_or(false);
        drop(job.password);
        // The shard may have given up (its client left): nobody to tell.
        let _ = job.reply.send(ok);
    }
}

/// bcrypt on a verifier thread; `None` when none runs.
async fn verify_off_loop(password: Zeroizing<Vec<u8>>, hash: Arc<str>) -> Option<bool> {
    let (reply, answer) = futures_channel::oneshot::channel();
    queue()?
        .send(Job {
            password,
            hash,
            reply,
        })
        .ok()?;
    answer.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, HeadLimits, Parsed};
    use std::time::Duration;

    fn creds(raw: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let buf = raw.as_bytes();
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 32,
            max_uri_bytes: 1024,
        };
        assert!(matches!(
            parse_request(buf, &limits, &mut head),
            Ok(Parsed::Complete(()))
        ));
        credentials(buf, &head).map(|(u, p)| (u, p.to_vec()))
    }

    #[test]
    fn basic_credentials_are_read_strictly() {
        // "alice:open:sesame": the password may hold colons.
        let got = creds(
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: basic YWxpY2U6b3BlbjpzZXNhbWU=\r\n\r\n",
        );
        assert_eq!(got, Some((b"alice".to_vec(), b"open:sesame".to_vec())));
        assert_eq!(creds("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(
            creds("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer YWxpY2U6eA==\r\n\r\n"),
            None
        );
        assert_eq!(
            creds("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic !!!\r\n\r\n"),
            None
        );
        // No colon in the decoded text ("alice").
        assert_eq!(
            creds("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWxpY2U=\r\n\r\n"),
            None
        );
    }

    #[test]
    fn remembered_entries_expire_and_stay_bounded() {
        let r = Remembered::default();
        let now = Instant::now();
        let k = r.key(b"alice", b"pw", "$2b$04$x");
        assert_ne!(
            k,
            r.key(b"alice", b"pw", "$2b$04$y"),
            "the stored hash is keyed in"
        );
        assert_ne!(r.key(b"a", b"bc", "h"), r.key(b"ab", b"c", "h"));
        assert!(!r.fresh(k, now));
        r.remember(k, now + Duration::from_secs(60), 3);
        assert!(r.fresh(k, now));
        assert!(!r.fresh(k, now + Duration::from_secs(61)), "expired");
        assert_eq!(r.len(), 0, "an expired entry is dropped when seen");
        for i in 0..10u8 {
            r.remember(r.key(&[i], b"pw", "h"), now + Duration::from_secs(60), 3);
            assert!(r.len() <= 3);
        }
        r.remember(k, now, 0);
        assert!(r.len() <= 3, "max 0 remembers nothing");
    }

    #[test]
    fn pending_places_are_bounded_and_given_back() {
        let c = AtomicUsize::new(0);
        let a = Pending::take(&c, 2).unwrap();
        let b = Pending::take(&c, 2).unwrap();
        assert!(Pending::take(&c, 2).is_none());
        drop(a);
        assert!(Pending::take(&c, 2).is_some());
        drop(b);
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn bcrypt_runs_on_the_verifier_threads() {
        let hash: Arc<str> = bcrypt::hash("right", 4).unwrap().into();
        let me = std::thread::current().id();
        // Driven on this thread, on each engine: the answer comes from another one, which
        // must wake this thread's runtime (each driver has its own way in).
        for engine in crate::test_engines::engines() {
            let pw = Zeroizing::new(b"right".to_vec());
            let ok = crate::test_engines::block_on(engine, verify_off_loop(pw, hash.clone()));
            assert_eq!(ok, Some(true), "{engine:?}");
            let pw = Zeroizing::new(b"wrong".to_vec());
            let bad = crate::test_engines::block_on(engine, verify_off_loop(pw, hash.clone()));
            assert_eq!(bad, Some(false), "{engine:?}");
        }
        assert_eq!(std::thread::current().id(), me);
    }

    #[test]
    fn a_verifier_started_from_a_pinned_shard_is_not_pinned() {
        fn cpus() -> usize {
            // SAFETY: as in `unpin`: a zeroed plain-data set of the exact size, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
                libc::CPU_COUNT(&set) as usize
            }
        }
        let all = std::thread::spawn(cpus).join().unwrap();
        let (pinned, unpinned) = std::thread::spawn(|| {
            assert!(core_affinity::set_for_current(core_affinity::CoreId {
                id: 0
            }));
            let pinned = cpus();
            let unpinned = std::thread::spawn(|| {
                unpin();
                cpus()
            })
            .join()
            .unwrap();
            (pinned, unpinned)
        })
        .join()
        .unwrap();
        assert_eq!(pinned, 1);
        assert_eq!(
            unpinned, all,
            "the verifier thread gets the process's CPUs back"
        );
    }
}
