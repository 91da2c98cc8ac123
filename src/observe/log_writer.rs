//! Observability, access log, the writer's side: one thread that takes the shards' buffers
//! of whole lines ([`crate::observe::access`]) from a bounded queue and writes them to stdout,
//! a file or syslog ([`super::syslog`]). SIGUSR1 makes it reopen the file (log rotation):
//! lines already handed over go to the old file, later ones to the new, so none is lost.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::config::{AccessLogConfig, AccessTarget};

use super::syslog::Syslog;

/// What shards and the signal handler send the writer.
pub enum LogMsg {
    /// Whole lines (the sender counts them, and counts them dropped if the queue is full).
    Lines(Vec<u8>),
    /// Reopen the file (after rotation).
    Reopen,
    /// Write what came before, then stop.
    Stop,
}

/// The sending side of the writer's queue, one clone per shard.
#[derive(Clone)]
pub struct LogSink {
    pub(super) tx: SyncSender<LogMsg>,
    /// Set by SIGUSR1; the writer reopens before its next write.
    reopen: Arc<AtomicBool>,
}

impl LogSink {
    /// Asks the writer to reopen its file. Never blocks, even when the writer is stuck (the
    /// signal thread must stay free for SIGTERM): the flag is enough, the message only wakes
    /// an idle writer.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(LogMsg::Reopen);
    }
}

/// The writer thread; [`LogWriter::finish`] waits until every queued line is written.
pub struct LogWriter {
    thread: std::thread::JoinHandle<()>,
    tx: SyncSender<LogMsg>,
    /// Closed by the writer thread when it ends.
    done: Receiver<()>,
}

impl LogWriter {
    /// Opens the target without starting the writer thread ([`OpenLog::start`]): main opens
    /// the file before it gives up root (`server.user`) and starts the thread after, so that
    /// no thread exists across the switch. Fails (with the path) if the file cannot be
    /// opened, so a bad path stops start-up rather than losing every line.
    pub fn open(cfg: &AccessLogConfig) -> std::io::Result<OpenLog> {
        Ok(OpenLog {
            out: Output::open(&cfg.target)?,
            queue: cfg.queue,
        })
    }
}

/// An access log opened by [`LogWriter::open`], its writer not started yet.
pub struct OpenLog {
    out: Output,
    queue: usize,
}

impl OpenLog {
    /// Starts the writer thread.
    pub fn start(self) -> std::io::Result<(LogSink, LogWriter)> {
        let OpenLog { out, queue } = self;
        let (tx, rx) = sync_channel(queue);
        let (done_tx, done) = sync_channel::<()>(0);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                writer_loop(out, rx, &flag);
                drop(done_tx);
            })?;
        let sink = LogSink {
            tx: tx.clone(),
            reopen,
        };
        Ok((sink, LogWriter { thread, tx, done }))
    }
}

impl LogWriter {
    /// Writes everything queued so far, then ends the writer; call once shards have stopped.
    /// Waits at most `limit` (a writer blocked on a pipe nobody reads is left behind).
    pub fn finish(self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        let mut msg = LogMsg::Stop;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = self.done.recv_timeout(left) {
            let _ = self.thread.join();
        } else {
            tracing::warn!("the access log writer did not finish in time; exiting without it");
        }
    }
}

enum Output {
    Stdout,
    File(PathBuf, File),
    Syslog(Box<Syslog>),
}

impl Output {
    fn open(target: &AccessTarget) -> std::io::Result<Output> {
        match target {
            AccessTarget::Stdout => Ok(Output::Stdout),
            AccessTarget::File(p) => Ok(Output::File(p.clone(), open_append(p)?)),
            AccessTarget::Syslog(s) => Ok(Output::Syslog(Box::new(Syslog::open(s)?))),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes)?;
                o.flush()
            }
            Output::File(_, f) => f.write_all(bytes),
            Output::Syslog(s) => s.send(bytes),
        }
    }
}

fn open_append(p: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| {
            let msg = format!(
                "cannot open the access log {}: {e} (its directory must exist and be writable)",
                p.display()
            );
            std::io::Error::new(e.kind(), msg)
        })
}

fn writer_loop(mut out: Output, rx: Receiver<LogMsg>, reopen: &AtomicBool) {
    let mut failed = false;
    for msg in rx {
        if reopen.swap(false, Ordering::AcqRel) {
            reopen_output(&mut out);
        }
        match msg {
            LogMsg::Lines(bytes) => {
                if let Err(e) = out.write(&bytes) {
                    if !failed {
                        tracing::error!(error = %e, "cannot write the access log");
                    }
                    failed = true;
                } else {
                    failed = false;
                }
            }
            LogMsg::Stop => return,
            // The flag above did the work; this message only woke the writer.
            LogMsg::Reopen => {}
        }
    }
}

fn reopen_output(out: &mut Output) {
    if let Output::Syslog(s) = out {
        match s.reopen() {
            Ok(()) => tracing::info!("access log: syslog socket reconnected"),
            Err(e) => {
                tracing::error!(error = %e, "cannot reconnect to syslog; still using the old socket")
            }
        }
    }
    if let Output::File(p, f) = out {
        match open_append(p) {
            Ok(new) => {
                *f = new;
                tracing::info!(path = %p.display(), "access log reopened");
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot reopen the access log; still writing to the old file"
            ),
        }
    }
}
