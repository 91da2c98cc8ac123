//! The `edgeshard` command: parse the command line, validate the configuration, bind the
//! listeners, start one pinned shard per CPU, print readiness, and drain on SIGTERM/SIGQUIT/SIGINT.
//! Everything here runs once at start-up or shutdown; the request path lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use edgeshard::config::{Config, IoEngine};
use edgeshard::dns::{Dns, DnsStats};
use edgeshard::listening::Listening;
use edgeshard::observe::admin::{self, AdminState, ShardMeta};
use edgeshard::observe::log_writer::LogWriter;
use edgeshard::privs::{Switched, Target};
use edgeshard::reload::{ReloadStats, Reloader};
use edgeshard::snapshot::{ListenerId, Published, Shared};
use edgeshard::tls::TlsListeners;
use edgeshard::upgrade::{Handoff, Inherited};
use edgeshard::worker::{run_shard, ShardStart, Stop};

mod reload_client;
mod signals;
mod startup;
use reload_client::reload;
use signals::{wait_for_stop, StopReason};
use startup::{choose_cpus, format_cpus, raise_nofile_limit, resolve_engine};

// mimalloc: the proxy allocates per-connection buffers and per-request vectors from many
// threads with no cross-thread frees on the hot path; mimalloc's per-thread heaps serve that
// pattern with less contention and fragmentation than glibc malloc's arenas (called as
// `edgeshard::alloc` says). The `system-alloc` feature leaves it out, for heap profilers
// that hook malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: edgeshard::alloc::MiAlloc = edgeshard::alloc::MiAlloc;

/// Huge pages off (the default of `server.huge_pages`) before mimalloc's own constructor,
/// which runs at priority 101 and reserves its first arena: done in `main`, two 2 MiB pages
/// touched before it stayed huge (RSS at start 15 MB instead of 8.9). `run` then applies the
/// configuration's value.
// SAFETY: a function pointer in `.init_array.00100` is called once by the C runtime before
// `main`, before constructors of priority 101 and up; `early_huge_pages_off` only calls
// prctl(2), which needs no Rust runtime, allocates nothing and cannot unwind. Exercised by
// every start of the binary (tests/placement.rs reads the result from /proc).
#[used]
#[link_section = ".init_array.00100"]
static EARLY_HUGE_PAGES_OFF: extern "C" fn() = early_huge_pages_off;

extern "C" fn early_huge_pages_off() {
    let _ = edgeshard::alloc::set_huge_pages(false);
}

#[derive(Parser)]
#[command(
    name = "edgeshard",
    version,
    about = "Thread-per-core HTTP/1.1 edge load balancer and reverse proxy",
    after_help = "Examples:\n  edgeshard demo                                   # proxy on 127.0.0.1:8080, two built-in origins\n  edgeshard check --config examples/basic.toml     # validate, like nginx -t\n  edgeshard run --config examples/basic.toml --cpus 0-3 --io-engine uring\n  edgeshard run --config edge.toml --shards 2      # first two CPUs of the affinity mask"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Auto,
    Uring,
    Epoll,
}

#[derive(clap::Args)]
struct Placement {
    /// CPUs to pin one shard each to, e.g. "0-3,6". Default: every CPU this process may use.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Number of shards: the first N of the CPU list.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// uring (io_uring), epoll, or auto (io_uring when the kernel allows it, else epoll). Overrides
    /// `server.io_engine`.
    #[arg(long, value_enum, value_name = "ENGINE")]
    io_engine: Option<EngineArg>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// The configuration file (TOML; docs/CONFIG.md).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        placement: Placement,
    },
    /// Validate a configuration file, print a summary, exit 0 (valid) or 1.
    Check {
        /// The configuration file to check (TOML; docs/CONFIG.md).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running edgeshard to reload its configuration file (through its admin API)
    /// and print the outcome; exit 0 if it is in force, 1 if it was refused. Give --config
    /// FILE (its [admin] address and token) or --admin ADDR.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["config", "admin"])))]
    Reload {
        /// The running process's configuration file: its `[admin] address` and `token`.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin address to ask instead (e.g. 127.0.0.1:9901).
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token for the admin API (with --admin).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
    },
    /// Serve on 127.0.0.1:8080 in front of two built-in origins (no setup needed).
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Also serve the admin endpoints (/metrics, /status, ...) here, e.g. 127.0.0.1:9901.
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        #[command(flatten)]
        placement: Placement,
    },
}

/// The error log: `EDGESHARD_LOG` if set, else `log.level` from the configuration.
fn init_tracing(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGESHARD_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| edgeshard::observe::errors::Stderr)
        // Colours only for a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Where the running configuration came from, for `/status`.
struct ConfigMeta {
    path: Option<PathBuf>,
    /// CRC-32 of the file's bytes, in hex.
    version: String,
}

/// The binary's path as started, for the binary upgrade (the file there may be replaced
/// by the time of the upgrade: that is the point).
static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn main() {
    EXE.get_or_init(|| std::env::current_exe().ok());
    let cli = Cli::parse();
    if matches!(cli.command, Command::Check { .. } | Command::Reload { .. }) {
        // A command that prints and exits ends quietly when its reader goes away
        // (`edgeshard check | head -1`), as other tools do, instead of panicking on EPIPE.
        // The server keeps Rust's SIGPIPE ignored (its sockets use MSG_NOSIGNAL anyway).
        // SAFETY: resetting a signal's disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match cli.command {
        Command::Check { config } => {
            init_tracing("info");
            check(&config)
        }
        Command::Run { config, placement } => match Config::load(&config) {
            Ok(c) => {
                init_tracing(&c.log.level);
                for w in c.warning_lines(&config) {
                    tracing::warn!("{w}");
                }
                let text = std::fs::read(&config).unwrap_or_default();
                let meta = ConfigMeta {
                    path: Some(std::fs::canonicalize(&config).unwrap_or(config)),
                    version: format!("{:08x}", crc32fast::hash(&text)),
                };
                report(run(c, &placement, meta))
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Reload {
            config,
            admin,
            token,
        } => match reload(config.as_deref(), admin, token) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("edgeshard reload: {e:#}");
                1
            }
        },
        Command::Demo {
            listen,
            admin,
            placement,
        } => {
            init_tracing("info");
            report(demo(listen, admin, placement))
        }
    };
    std::process::exit(code);
}

fn report(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("edgeshard: error: {e:#}");
            1
        }
    }
}

fn check(path: &std::path::Path) -> i32 {
    match Config::load(path) {
        Ok(c) => {
            // The certificate files are part of the configuration: read them too.
            // (Certificates out of their validity are served, with the warning it logs.)
            if let Err(e) = TlsListeners::build(&c) {
                eprintln!("{}", per_line(&format!("{}: ", path.display()), &e));
                return 1;
            }
            // So are the user and group names: they must exist on this host.
            if let Err(e) = run_as(&c) {
                eprintln!("{}: {e}", path.display());
                return 1;
            }
            for w in c.warning_lines(path) {
                eprintln!("{w}");
            }
            println!("{}: configuration is valid", path.display());
            print!("{}", c.summary());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `e`'s lines, each after `prefix` (the file, as every configuration error names it).
fn per_line(prefix: &str, e: &dyn std::fmt::Display) -> String {
    let lines: Vec<String> = e
        .to_string()
        .lines()
        .map(|l| format!("{prefix}{l}"))
        .collect();
    lines.join("\n")
}

fn demo(
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    mut placement: Placement,
) -> Result<()> {
    // Checked first, so that a taken address is told in the demo's own terms (--listen), and
    // before the "try: curl" line below.
    drop(std::net::TcpListener::bind(listen).with_context(|| {
        format!("demo: cannot listen on {listen}; choose another address with --listen ADDR")
    })?);
    // The demo's admin API has no token, so it listens on loopback only.
    if let Some(a) = admin.filter(|a| !a.ip().is_loopback()) {
        bail!(
            "demo: --admin {a} is not a loopback address, and the demo's admin API has no token; \
use e.g. --admin 127.0.0.1:{}, or run a configuration file whose [admin] sets token",
            a.port()
        );
    }
    let a = edgeshard::demo::start_origin("A").context("starting demo origin A")?;
    let b = edgeshard::demo::start_origin("B").context("starting demo origin B")?;
    if listen.port() == 0 {
        eprintln!("edgeshard demo: origins A on {a} and B on {b}; curl the address on the `listening on` line");
    } else {
        eprintln!("edgeshard demo: origins A on {a} and B on {b}; try: curl -i http://{listen}/");
    }
    let config =
        edgeshard::demo::demo_config(listen, &[a, b], admin).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One shard by default, so that successive requests visibly alternate between origins;
    // `--cpus` alone means one shard on each CPU it lists, as for `run`.
    if placement.shards.is_none() && placement.cpus.is_none() {
        placement.shards = Some(1);
    }
    let meta = ConfigMeta {
        path: None,
        version: "demo".into(),
    };
    run(config, &placement, meta)
}

/// Once running as `server.user`: says at start what that user cannot do here that it will
/// try later, on a scratch socket, rather than at each connection (debug) or at the drain.
fn warn_what_the_user_cannot_do(config: &Config) {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{AsFd, AsRawFd};
    let Ok(probe) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return;
    };
    if let Some(name) = &config.congestion.upstream {
        if let Err(e) = edgeshard::listener::set_congestion(probe.as_raw_fd(), name) {
            tracing::warn!(
                "server.upstream_congestion = {name:?} cannot be set by server.user ({e}): connections to backends keep the host's default; add it to net.ipv4.tcp_allowed_congestion_control"
            );
        }
    }
    if let Err(e) = edgeshard::listener::drop_new_handshakes(probe.as_fd()) {
        tracing::warn!(
            "server.user cannot attach a socket filter here ({e}): a graceful stop cannot turn away new handshakes while it drains, so a client that connects in its last moment may be reset instead of refused"
        );
    }
}

/// `server.user`/`server.group` looked up, when set.
fn run_as(config: &Config) -> Result<Option<Target>, edgeshard::privs::PrivError> {
    config
        .user
        .as_deref()
        .map(|u| Target::resolve(u, config.group.as_deref()))
        .transpose()
}

fn run(config: Config, placement: &Placement, meta: ConfigMeta) -> Result<()> {
    let loaded_unix = admin::unix_now();
    raise_nofile_limit();
    // Off already (the constructor above): only `true` changes anything.
    if config.huge_pages {
        if let Err(e) = edgeshard::alloc::set_huge_pages(true) {
            tracing::warn!(error = %e, "server.huge_pages = true could not be applied; huge pages stay off");
        }
    }
    let requested = match placement.io_engine {
        Some(EngineArg::Auto) => IoEngine::Auto,
        Some(EngineArg::Uring) => IoEngine::Uring,
        Some(EngineArg::Epoll) => IoEngine::Epoll,
        None => config.io_engine,
    };
    // The user to run as: an unknown name, or a switch this process may not make, stops
    // start-up before anything is bound.
    let file = meta
        .path
        .as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default();
    let target = run_as(&config).map_err(|e| anyhow::anyhow!("{file}{e}"))?;
    if let Some(t) = &target {
        t.permitted().map_err(|e| anyhow::anyhow!("{file}{e}"))?;
    }
    let cpus = choose_cpus(placement.cpus.as_deref(), placement.shards)?;
    // Backends written as host names are resolved before anything binds: a name that does
    // not resolve stops start-up, naming it (docs/CONFIG.md, [dns]). The resolver's runtime
    // is dropped again so the privilege switch below still finds a single thread.
    let dns_stats = Arc::new(DnsStats::default());
    let mut dns = Dns::new(&config.dns, dns_stats.clone());
    if let Err(errors) = dns.ensure(&config) {
        bail!("{file}{}", errors.join("; "));
    }
    dns.track(&config);
    dns.release();
    let base = config.clone();
    let config = dns.apply(&config);
    let dns = Arc::new(Mutex::new(dns));
    // Certificates are read before anything binds: a bad file stops start-up, naming it.
    let tls =
        Arc::new(TlsListeners::build(&config).map_err(|e| anyhow::anyhow!(per_line(&file, &e)))?);
    // A successor (binary upgrade) takes its predecessor's listening sockets over.
    let mut inherited = Inherited::take()
        .transpose()
        .context("binary upgrade: cannot take the listening sockets over")?;
    let mut handed = inherited
        .as_mut()
        .map(|i| std::mem::take(&mut i.sockets))
        .unwrap_or_default();
    let addresses: Vec<std::net::SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let (sockets, bound) = edgeshard::listener::take_over(
        &addresses,
        cpus.len(),
        config.congestion.client.as_deref(),
        edgeshard::listener::Ownership::Exclusive,
        &mut handed,
    )
    .map_err(|e| {
        // Named as a reload names it: the file and the key.
        match addresses.iter().position(|&a| a == e.addr()) {
            Some(i) => anyhow::anyhow!("{file}listener[{i}].address: {e}"),
            None => anyhow::anyhow!("{file}{e}"),
        }
    })?;
    // Said once the listeners are bound: a bind failure after it would mislead the journal.
    if tls.any() {
        tracing::info!(
            ktls = edgeshard::tls::ktls_available(),
            "TLS listeners ready (records are encrypted in user space; kTLS is detected, not used yet)"
        );
    }
    let admin_listener = match &config.admin {
        None => None,
        // A `:0` admin address takes the predecessor's port, as `:0` listeners do.
        Some(a) => match handed.iter().position(|h| {
            h.listener == edgeshard::upgrade::ADMIN
                && (h.address == a.address
                    || (a.address.port() == 0 && h.address.ip() == a.address.ip()))
        }) {
            Some(k) => Some(handed.swap_remove(k).socket),
            None => Some(std::net::TcpListener::bind(a.address).map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::AddrInUse => format!(
                        "the address is already in use, held by {}; stop it or change [admin] address",
                        edgeshard::listener::find_holder(a.address)
                    ),
                    _ => format!("{e}; choose another [admin] address"),
                };
                anyhow::anyhow!("{file}admin.address: cannot listen on {}: {why}", a.address)
            })?),
        },
    };
    for h in handed {
        tracing::warn!(address = %h.address, "binary upgrade: the predecessor's listener is not in this configuration; closed");
    }
    // The listeners by identity: what a reload keeps, opens and closes, and a duplicate of
    // every socket, for the binary upgrade.
    let listener_ids = ListenerId::all(&config.listeners);
    let listening = Listening::new(&listener_ids, &sockets)
        .context("cannot keep the listening sockets for a binary upgrade")?;
    let handoff = Handoff::new(admin_listener.as_ref(), EXE.get().cloned().flatten())
        .context("cannot keep the admin socket for a binary upgrade")?;
    // The access log file is opened now, so a bad path stops start-up instead of every line.
    let access_log = match &config.log.access {
        None => None,
        Some(a) => Some(LogWriter::open(a).with_context(|| match &a.target {
            edgeshard::config::AccessTarget::File(_) => format!("{file}log.access"),
            edgeshard::config::AccessTarget::Stdout => format!("{file}log.access: stdout"),
            edgeshard::config::AccessTarget::Syslog(_) => format!("{file}log.access: syslog"),
        })?),
    };

    // Everything that needs root is done: switch to server.user while this is still the only
    // thread (privs.rs). Shards, the prober, the admin and log threads all start after.
    if let Some(t) = &target {
        if t.switch()? == Switched::Dropped {
            tracing::info!(user = %t.user, uid = t.uid, gid = t.gid, "listeners bound; now running as server.user");
            warn_what_the_user_cannot_do(&config);
        }
    }
    // The engine is probed as the user that will run it (io_uring may be limited to some
    // users: kernel.io_uring_disabled = 1 and kernel.io_uring_group).
    let engine = resolve_engine(requested)?;
    let (log_sink, log_writer) = match access_log {
        None => (None, None),
        Some(open) => {
            let (sink, writer) = open.start().context("cannot start the access log writer")?;
            (Some(sink), Some(writer))
        }
    };

    // Signals are blocked into a handler before any thread starts, so a SIGTERM that arrives
    // right after readiness drains instead of killing the process.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        // SIGQUIT is a graceful stop too (nginx's meaning): no core dump, no lost requests.
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR2,
    ])
    .context("cannot install signal handlers")?;

    let shared = Arc::new(Shared::with_shards(config, cpus.len()).with_tls(tls.clone()));
    // Shards and the admin thread load the snapshot in force from here (hot reload will
    // publish its replacements here).
    let published = Arc::new(Published::new(shared.clone()));
    // The rate limits' fleet store, when configured (read at start only).
    if let Some(store) = &shared.config.rate_limits.store {
        edgeshard::ratelimit_store::spawn(
            published.rates.clone(),
            store.clone(),
            shared.config.rate_limits.sync_interval,
        )
        .context("cannot start the rate-limit store thread")?;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    let mut queries = Vec::new();
    for (i, (cpu, listeners)) in cpus.iter().copied().zip(sockets).enumerate() {
        let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<Stop>();
        stops.push(stop_tx);
        let (query_tx, query_rx) = futures_channel::mpsc::unbounded();
        queries.push(query_tx);
        let start = ShardStart {
            id: i,
            engine,
            snapshot: published.clone(),
            listeners: listeners
                .into_iter()
                .filter_map(|(i, s)| Some((*listener_ids.get(i)?, s)))
                .collect(),
            ready: ready_tx.clone(),
            shutdown: stop_rx,
            queries: query_rx,
            log_sink: log_sink.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    let _ = start
                        .ready
                        .send(Err(format!("shard {i}: cannot pin to CPU {cpu}")));
                    return None;
                }
                Some(run_shard(start))
            })
            .context("cannot start a shard thread")?;
        threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(msg)) => bail!("{msg}"),
            Err(_) => bail!("a shard stopped during start-up"),
        }
    }
    let engine_name = if engine == IoEngine::Uring {
        "uring"
    } else {
        "epoll"
    };
    // One prober thread for the whole process, publishing to the board every shard reads;
    // the reloader owns it (and the certificate watcher), replacing them on a reload.
    let reload_stats = Arc::new(ReloadStats::new(meta.version.clone(), loaded_unix));
    let reloader = Arc::new(Mutex::new(
        Reloader::start(
            meta.path.clone(),
            published.clone(),
            queries.clone(),
            reload_stats.clone(),
            base,
            dns.clone(),
            listening,
        )
        .context("cannot start the health-check prober")?,
    ));
    // The DNS thread keeps the host names fresh (dns.rs).
    let dns_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dns_thread = edgeshard::dns::spawn(reloader.clone(), dns, dns_stop.clone())
        .context("cannot start the DNS thread")?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Start-up's token, kept for the life of the listener (a reload does not change it).
    let admin_token = shared.config.admin.as_ref().and_then(|a| a.token.clone());
    let mut admin = match admin_listener {
        None => None,
        Some(l) => Some(
            admin::start(
                l,
                AdminState {
                    snapshot: published.clone(),
                    token: admin_token,
                    shards: cpus
                        .iter()
                        .map(|&cpu| ShardMeta {
                            cpu,
                            engine: engine_name,
                        })
                        .collect(),
                    queries,
                    started: std::time::Instant::now(),
                    config_path: meta.path,
                    reloads: reload_stats,
                    reloader: reloader.clone(),
                    dns: dns_stats,
                },
            )
            .context("cannot start the admin thread")?,
        ),
    };
    {
        let mut out = std::io::stdout().lock();
        for addr in &bound {
            writeln!(out, "edgeshard: listening on {addr}")?;
        }
        if let Some(a) = admin_addr {
            writeln!(out, "edgeshard: admin on {a}")?;
        }
        writeln!(
            out,
            "edgeshard: ready shards={} engine={engine_name}",
            threads.len()
        )?;
        out.flush()?;
    }
    tracing::info!(shards = threads.len(), cpus = %format_cpus(&cpus), engine = engine_name, "edgeshard started");
    // A successor tells its predecessor, which stops accepting; systemd learns the new main
    // PID (the unit needs NotifyAccess=all for that).
    let ready = match inherited {
        Some(i) => {
            i.ready()
                .context("binary upgrade: cannot tell the old process we are ready")?;
            format!("MAINPID={}\nREADY=1", std::process::id())
        }
        None => "READY=1".to_string(),
    };
    // systemd (Type=notify): ready now that every shard accepts.
    if let Err(e) = edgeshard::sdnotify::notify(&ready) {
        tracing::warn!(error = %e, "cannot send READY=1 to $NOTIFY_SOCKET");
    }

    // Wait for SIGTERM/SIGQUIT/SIGINT, then drain. SIGUSR1 reopens the access log (rotation),
    // SIGHUP reloads the configuration.
    // SIGUSR2 starts a successor (binary upgrade) and stops here once it is ready.
    let why = wait_for_stop(&mut signals, log_sink.as_ref(), &reloader, Some(&handoff));
    let stop = match why {
        Some(StopReason::HandedOver(pid)) => {
            // The admin address is the new process's now: this one stops answering on it
            // (its /ready, /metrics and /reload would speak for a process on its way out),
            // before it says so.
            if let Some(a) = admin.take() {
                a.stop();
            }
            tracing::info!(
                pid,
                "binary upgrade: the new process serves the listeners; draining"
            );
            Stop::HandOver
        }
        other => {
            let signal = match other {
                Some(StopReason::Signal(s)) => s,
                _ => 0,
            };
            tracing::info!(
                signal,
                "draining: no new connections; finishing in-flight requests"
            );
            let _ = edgeshard::sdnotify::notify("STOPPING=1");
            reloader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retire(false);
            Stop::Drain
        }
    };
    drop(handoff);
    for s in stops {
        let _ = s.send(stop);
    }
    // A second SIGTERM/SIGQUIT/SIGINT while draining means: stop now. After a hand-over the
    // first one is the operator's graceful stop of the old process (nginx's USR2, then QUIT):
    // it is draining already.
    let reopen = log_sink.clone();
    let reloader_again = reloader.clone();
    let mut graceful = u8::from(stop == Stop::HandOver);
    std::thread::spawn(move || {
        while wait_for_stop(&mut signals, reopen.as_ref(), &reloader_again, None).is_some() {
            if graceful > 0 {
                graceful -= 1;
                tracing::info!("stop signal: already draining after the binary upgrade");
                continue;
            }
            eprintln!("edgeshard: second signal, exiting without waiting");
            std::process::exit(1);
        }
    });
    let mut unfinished = 0;
    for t in threads {
        if let Ok(Some(report)) = t.join() {
            tracing::info!(shard = report.id, "{}", report.summary);
            unfinished += report.unfinished;
        }
    }
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "shutdown_timeout reached with connections still open"
        );
    }
    // The prober and the certificate watcher stop with the reloader. The admin thread holds
    // it too: stop that first.
    if let Some(a) = admin {
        a.stop();
    }
    // Not joined: a resolution in progress may wait seconds on a silent server. The thread
    // stops before its next name, applies nothing to a stopping reloader, and ends with the
    // process.
    dns_stop.store(true, std::sync::atomic::Ordering::Release);
    dns_thread.thread().unpark();
    drop(dns_thread);
    reloader.lock().unwrap_or_else(|p| p.into_inner()).stop();
    // Every shard handed over its last lines: the writer writes them, then stops.
    if let Some(w) = log_writer {
        w.finish(std::time::Duration::from_secs(5));
    }
    Ok(())
}
