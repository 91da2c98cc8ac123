//! The `edgeshard` command: parse the command line, validate the configuration, bind the
//! listeners, start one pinned shard per CPU, print readiness, and drain on SIGTERM/SIGQUIT/SIGINT.
//! Everything here runs once at start-up or shutdown; the request path lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use edgeshard::config::{Config, IoEngine};
use edgeshard::observe::access::LogWriter;
use edgeshard::observe::admin::{self, AdminState, ShardMeta};
use edgeshard::snapshot::{Published, Shared};
use edgeshard::tls::TlsListeners;
use edgeshard::worker::{run_shard, ShardStart};

// mimalloc: the proxy allocates per-connection buffers and per-request vectors from many
// threads with no cross-thread frees on the hot path; mimalloc's per-thread heaps serve that
// pattern with less contention and fragmentation than glibc malloc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// io_uring, epoll, or auto (io_uring when the kernel allows it, else epoll). Overrides
    /// `server.io_engine`.
    #[arg(long, value_enum, value_name = "ENGINE")]
    io_engine: Option<EngineArg>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        placement: Placement,
    },
    /// Validate a configuration file, print a summary, exit 0 (valid) or 1.
    Check {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
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
        .with_writer(std::io::stderr)
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

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => {
            init_tracing("info");
            check(&config)
        }
        Command::Run { config, placement } => match Config::load(&config) {
            Ok(c) => {
                init_tracing(&c.log.level);
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
            if let Err(e) = TlsListeners::build(&c) {
                eprintln!("{}: {e}", path.display());
                return 1;
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

fn demo(
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    mut placement: Placement,
) -> Result<()> {
    let a = edgeshard::demo::start_origin("A").context("starting demo origin A")?;
    let b = edgeshard::demo::start_origin("B").context("starting demo origin B")?;
    eprintln!("edgeshard demo: origins A on {a} and B on {b}; try: curl -i http://{listen}/");
    let config =
        edgeshard::demo::demo_config(listen, &[a, b], admin).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One shard by default, so that successive requests visibly alternate between origins.
    if placement.shards.is_none() {
        placement.shards = Some(1);
    }
    let meta = ConfigMeta {
        path: None,
        version: "demo".into(),
    };
    run(config, &placement, meta)
}

/// Parses "0-3,6" into CPU ids.
fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .with_context(|| format!("--cpus: {part:?} is not a CPU number or range like 0-3"))?;
        let hi: usize = hi
            .parse()
            .with_context(|| format!("--cpus: {part:?} is not a CPU number or range like 0-3"))?;
        if hi < lo || hi - lo > 4096 {
            bail!("--cpus: range {part:?} is reversed or too large");
        }
        for c in lo..=hi {
            if !cpus.contains(&c) {
                cpus.push(c);
            }
        }
    }
    if cpus.is_empty() {
        bail!("--cpus: the list is empty");
    }
    Ok(cpus)
}

fn choose_cpus(p: &Placement) -> Result<Vec<usize>> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .context("cannot read this process's CPU affinity mask")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut cpus = match &p.cpus {
        Some(list) => {
            let cpus = parse_cpu_list(list)?;
            for c in &cpus {
                if !allowed.contains(c) {
                    bail!(
                        "--cpus: CPU {c} does not exist or is not allowed for this process (allowed: {}); check the list, taskset or the cgroup cpuset",
                        format_cpus(&allowed)
                    );
                }
            }
            cpus
        }
        None => allowed.clone(),
    };
    if let Some(n) = p.shards {
        if n == 0 {
            bail!("--shards must be at least 1");
        }
        if n > cpus.len() {
            bail!("--shards {n} is more than the {} CPUs available ({}); lower --shards or widen --cpus", cpus.len(), format_cpus(&cpus));
        }
        cpus.truncate(n);
    }
    Ok(cpus)
}

fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves `auto` and proves that the chosen engine starts, before any shard does.
fn resolve_engine(requested: IoEngine) -> Result<IoEngine> {
    if requested == IoEngine::Epoll {
        return Ok(IoEngine::Epoll);
    }
    let probe = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(64)
        .build()
        .map(drop);
    match (probe, requested) {
        (Ok(()), _) => Ok(IoEngine::Uring),
        (Err(e), IoEngine::Auto) => {
            tracing::warn!(error = %e, "io_uring is not available; falling back to the epoll engine");
            Ok(IoEngine::Epoll)
        }
        (Err(e), _) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "absent".into());
            bail!(
                "--io-engine uring: io_uring cannot start: {e}. Check: the kernel is 5.11 or newer (uname -r); \
sysctl kernel.io_uring_disabled is 0 (now: {disabled}); no seccomp profile blocks io_uring_setup (containers often do); \
RLIMIT_MEMLOCK is large enough on kernels before 5.12 (ulimit -l). Or run with --io-engine epoll"
            )
        }
    }
}

/// Raises the soft open-file limit to the hard limit: every client and upstream connection
/// is a descriptor, and the default soft limit (often 1024) would cap connections far below
/// `max_connections_per_shard`.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the `rlimit` struct we own; failure is
    // reported through the return value and leaves the limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = old, to = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}

/// Waits for SIGTERM, SIGQUIT or SIGINT; every SIGUSR1 on the way reopens the access log,
/// every SIGHUP re-reads the TLS certificates.
fn wait_for_stop(
    signals: &mut signal_hook::iterator::Signals,
    log: Option<&edgeshard::observe::access::LogSink>,
    tls: &TlsListeners,
) -> Option<i32> {
    for s in signals.forever() {
        match s {
            signal_hook::consts::SIGUSR1 => {
                if let Some(log) = log {
                    log.reopen();
                }
            }
            signal_hook::consts::SIGHUP => {
                tracing::info!("SIGHUP: re-reading TLS certificates");
                tls.reload(true);
            }
            _ => return Some(s),
        }
    }
    None
}

fn run(config: Config, placement: &Placement, meta: ConfigMeta) -> Result<()> {
    let loaded_unix = admin::unix_now();
    raise_nofile_limit();
    let requested = match placement.io_engine {
        Some(EngineArg::Auto) => IoEngine::Auto,
        Some(EngineArg::Uring) => IoEngine::Uring,
        Some(EngineArg::Epoll) => IoEngine::Epoll,
        None => config.io_engine,
    };
    let engine = resolve_engine(requested)?;
    let cpus = choose_cpus(placement)?;
    // Certificates are read before anything binds: a bad file stops start-up, naming it.
    let tls = Arc::new(TlsListeners::build(&config)?);
    if tls.any() {
        tracing::info!(
            ktls = edgeshard::tls::ktls_available(),
            "TLS listeners ready (records are encrypted in user space; kTLS is detected, not used yet)"
        );
    }
    let addresses: Vec<std::net::SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let (sockets, bound) = edgeshard::listener::bind_all(
        &addresses,
        cpus.len(),
        config.congestion.client.as_deref(),
        edgeshard::listener::Ownership::Exclusive,
    )?;
    let admin_listener = match &config.admin {
        None => None,
        Some(a) => Some(std::net::TcpListener::bind(a.address).with_context(|| {
            format!(
                "admin.address {}: cannot listen; choose a free address or stop the process using it",
                a.address
            )
        })?),
    };
    // The access log file is opened now, so a bad path stops start-up instead of every line.
    let (log_sink, log_writer) = match &config.log.access {
        None => (None, None),
        Some(a) => {
            let (sink, writer) = LogWriter::start(a).context("cannot open log.access")?;
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
    ])
    .context("cannot install signal handlers")?;

    let shared = Arc::new(Shared::with_shards(config, cpus.len()).with_tls(tls.clone()));
    // Shards and the admin thread load the snapshot in force from here (hot reload will
    // publish its replacements here).
    let published = Arc::new(Published::new(shared.clone()));
    // One prober thread for the whole process, publishing to the board every shard reads.
    let targets: Vec<edgeshard::health::prober::ProbeTarget> = shared
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let up = &shared.config.upstreams[b.upstream];
            up.resilience
                .health_check
                .as_ref()
                .map(|spec| edgeshard::health::prober::ProbeTarget {
                    backend: i,
                    upstream: up.name.clone(),
                    address: b.address,
                    spec: spec.clone(),
                })
        })
        .collect();
    let prober = edgeshard::health::prober::spawn(shared.board.clone(), targets, None)
        .context("cannot start the health-check prober")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    let mut queries = Vec::new();
    for (i, (cpu, listeners)) in cpus.iter().copied().zip(sockets).enumerate() {
        let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
        stops.push(stop_tx);
        let (query_tx, query_rx) = futures_channel::mpsc::unbounded();
        queries.push(query_tx);
        let start = ShardStart {
            id: i,
            engine,
            snapshot: published.clone(),
            listeners,
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
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin = match admin_listener {
        None => None,
        Some(l) => Some(
            admin::start(
                l,
                AdminState {
                    snapshot: published.clone(),
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
                    config_version: meta.version,
                    loaded_unix,
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
    // systemd (Type=notify): ready now that every shard accepts.
    if let Err(e) = edgeshard::sdnotify::notify("READY=1") {
        tracing::warn!(error = %e, "cannot send READY=1 to $NOTIFY_SOCKET");
    }

    // Wait for SIGTERM/SIGQUIT/SIGINT, then drain. SIGUSR1 reopens the access log (rotation),
    // SIGHUP re-reads certificates.
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tls.clone().spawn_watcher(watch_stop.clone());
    let sig = wait_for_stop(&mut signals, log_sink.as_ref(), &tls);
    tracing::info!(signal = ?sig, "draining: no new connections; finishing in-flight requests");
    let _ = edgeshard::sdnotify::notify("STOPPING=1");
    for s in stops {
        let _ = s.send(());
    }
    // A second SIGTERM/SIGQUIT/SIGINT while draining means: stop now.
    let reopen = log_sink.clone();
    let tls_again = tls.clone();
    std::thread::spawn(move || {
        if wait_for_stop(&mut signals, reopen.as_ref(), &tls_again).is_some() {
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
    prober.stop();
    watch_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(w) = watcher {
        w.thread().unpark();
        let _ = w.join();
    }
    // Every shard handed over its last lines: the writer writes them, then stops.
    if let Some(w) = log_writer {
        w.finish(std::time::Duration::from_secs(5));
    }
    if let Some(a) = admin {
        a.stop();
    }
    Ok(())
}
