//! Beside `main` (start-up and shutdown): the signals the running process waits on. SIGTERM,
//! SIGQUIT and SIGINT stop it (a drain), SIGHUP reloads the configuration, SIGUSR1 reopens the
//! access log, and SIGUSR2 starts a binary upgrade (`upgrade.rs`), which a stop signal during
//! the successor's start abandons.

use std::sync::Mutex;

use edgeshard::reload::Reloader;
use edgeshard::upgrade::Handoff;

/// Waits for SIGTERM, SIGQUIT or SIGINT; every SIGUSR1 on the way reopens the access log,
/// every SIGHUP reloads the configuration (certificates included).
pub fn wait_for_stop(
    signals: &mut signal_hook::iterator::Signals,
    log: Option<&edgeshard::observe::log_writer::LogSink>,
    reloader: &Mutex<Reloader>,
    handoff: Option<&Handoff>,
) -> Option<StopReason> {
    // Signals that came while a successor was starting, to act on if it fails.
    let mut held = Vec::new();
    loop {
        let s = match held.pop() {
            Some(s) => s,
            None => signals.forever().next()?,
        };
        match s {
            signal_hook::consts::SIGUSR2 => {
                let Some(h) = handoff else {
                    tracing::warn!(
                        "SIGUSR2 ignored: this process is draining (it stopped, or handed its listeners over)"
                    );
                    continue;
                };
                // The reloader's lock is held throughout: no reload changes the listening
                // sockets while they are handed over, and once the successor serves them,
                // none may (retire). Taken before the line below is logged, so a reload asked
                // for once it shows waits for the upgrade's outcome.
                let mut r = reloader.lock().unwrap_or_else(|p| p.into_inner());
                tracing::info!("SIGUSR2: starting the new binary and handing it the listeners");
                // A stop signal while the successor starts abandons the upgrade (the
                // successor is killed) and drains: it is not left waiting up to a minute.
                let mut stop = None;
                let mut abandon = || {
                    for s in signals.pending() {
                        match s {
                            s if is_stop(s) => stop = Some(s),
                            other => held.push(other),
                        }
                    }
                    stop.is_some()
                };
                let started = h.start_successor(&r.listening(), UPGRADE_READY_WITHIN, &mut abandon);
                match started {
                    Ok(s) => {
                        r.retire(true);
                        return Some(StopReason::HandedOver(s.pid));
                    }
                    Err(e) => tracing::error!("binary upgrade failed, still serving: {e}"),
                }
                if let Some(s) = stop {
                    return Some(StopReason::Signal(s));
                }
                held.reverse();
            }
            signal_hook::consts::SIGUSR1 => {
                if let Some(log) = log {
                    log.reopen();
                }
            }
            signal_hook::consts::SIGHUP => {
                tracing::info!("SIGHUP: reloading the configuration");
                reloader.lock().unwrap_or_else(|p| p.into_inner()).reload();
            }
            _ => return Some(StopReason::Signal(s)),
        }
    }
}

/// The signals that stop the process (drain): SIGTERM, SIGQUIT, SIGINT.
fn is_stop(signal: i32) -> bool {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    matches!(signal, SIGTERM | SIGQUIT | SIGINT)
}

/// Why the process stops serving.
#[derive(Debug)]
pub enum StopReason {
    Signal(i32),
    /// A successor (binary upgrade) holds the listeners and is ready.
    HandedOver(u32),
}

/// How long a successor may take to say it is ready before the upgrade is abandoned.
const UPGRADE_READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
