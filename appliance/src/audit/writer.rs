//! The single audit writer: a bounded queue in front of a dedicated OS thread
//! that commits records to SQLite in batches.
//!
//! Sessions hold cheap [`AuditHandle`] clones. The writer thread blocks on the
//! queue, takes one message, drains up to `max_batch - 1` more without
//! waiting, and commits them in one transaction. A failed batch is retried
//! with backoff (100 ms doubling to 5 s) and is never dropped; meanwhile the
//! queue fills and [`AuditHandle::record`] waits, which back-pressures sessions.
//!
//! "Acknowledged" here means accepted into the queue: a record accepted just
//! before a crash or power loss can be lost. Acknowledging only after a
//! `synchronous=FULL` commit is a later issue's strict mode.
//!
//! # Shutdown order
//!
//! 1. Stop accepting sessions and let them end (they record their `SessionEnd`).
//! 2. Record `ApplianceStopped`.
//! 3. Either drop every [`AuditHandle`] and call [`AuditWriter::join`] (the
//!    thread drains the queue, commits, and exits once the last handle is
//!    gone), or call [`AuditWriter::shutdown`] with one handle: it closes the
//!    queue (later `record` calls get [`AuditError::WriterGone`]), commits
//!    everything accepted before, and waits, even if some clones are still
//!    alive somewhere.
//!
//! If the disk stays broken the thread keeps retrying, so a caller that must
//! exit anyway wraps `join`/`shutdown` in `tokio::time::timeout`.

use super::record::AuditRecord;
use super::store;
use super::AuditError;
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Default number of queued messages before `record` waits.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;
/// Default maximum number of records committed in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 512;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where and how the writer runs.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The appliance's SQLite file (shared with other tables).
    pub db_path: PathBuf,
    /// Bounded queue size (at least 1).
    pub queue_capacity: usize,
    /// Records per transaction (at least 1).
    pub max_batch: usize,
}

impl AuditConfig {
    /// Defaults: queue of [`DEFAULT_QUEUE_CAPACITY`], batches of [`DEFAULT_MAX_BATCH`].
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            db_path: db_path.into(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

// Records travel unboxed: the queue's slots are allocated once and reused,
// while a Box would cost an allocation per record on the data path.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(AuditRecord),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
    /// Close the queue to new messages; drain what is in it, then exit.
    Close,
}

/// A cheap, cloneable sender of audit records.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

impl AuditHandle {
    /// Queue a record, waiting for space if the queue is full (back-pressure,
    /// never silent loss). Errs only if the writer is gone.
    pub async fn record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.tx
            .send(Msg::Record(rec))
            .await
            .map_err(|_| AuditError::WriterGone)
    }

    /// Queue a record without waiting, for sync contexts: `QueueFull` rather
    /// than a silent drop; the caller decides what to do with the record.
    pub fn try_record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.tx.try_send(Msg::Record(rec)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => AuditError::WriterGone,
        })
    }

    /// Resolves once every record queued before this call is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done_tx))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        done_rx.await.map_err(|_| AuditError::WriterGone)
    }

    /// Messages waiting in the queue (not counting the batch being written).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Owns the writer thread; see the module docs for the shutdown order.
/// Dropping it without joining detaches the thread, which still drains the
/// queue but may be cut short by process exit.
#[derive(Debug)]
pub struct AuditWriter {
    thread: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Wait for the writer thread to exit: after every [`AuditHandle`] is
    /// dropped and the queue is drained and committed.
    pub async fn join(self) -> Result<(), AuditError> {
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => Ok(()),
            // The thread panicked, or the runtime is shutting down.
            _ => Err(AuditError::WriterGone),
        }
    }

    /// Close the queue (through `handle`, which is consumed), commit everything
    /// accepted before, and wait for the thread to exit. Other live handles get
    /// [`AuditError::WriterGone`] from then on.
    pub async fn shutdown(self, handle: AuditHandle) -> Result<(), AuditError> {
        // If the send fails the writer is already gone; join reports how.
        let _ = handle.tx.send(Msg::Close).await;
        drop(handle);
        self.join().await
    }
}

/// Open (or create) the database and the schema now, so errors surface at
/// startup, then run the writer on its own OS thread.
pub fn spawn_writer(cfg: AuditConfig) -> Result<(AuditHandle, AuditWriter), AuditError> {
    let conn = store::open_writer(&cfg.db_path)?;
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let max_batch = cfg.max_batch.max(1);
    let path = cfg.db_path.display().to_string();
    let thread = std::thread::Builder::new()
        .name("audit-writer".to_owned())
        .spawn(move || run(conn, rx, max_batch, &path))?;
    Ok((AuditHandle { tx }, AuditWriter { thread }))
}

/// The writer loop: exits when the queue is closed (all handles dropped, or a
/// `Close` message) and empty.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, max_batch: usize, path: &str) {
    tracing::info!(db = %path, max_batch, "audit writer started");
    let mut records: Vec<AuditRecord> = Vec::with_capacity(max_batch);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut total: u64 = 0;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => records.push(r),
                Msg::Flush(w) => waiters.push(w),
                Msg::Close => rx.close(),
            }
            if records.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !records.is_empty() {
            commit_with_retry(&mut conn, &records);
            total += records.len() as u64;
            records.clear();
        }
        for w in waiters.drain(..) {
            // The flusher may have given up waiting; nothing to do then.
            let _ = w.send(());
        }
    }
    tracing::info!(db = %path, records = total, "audit writer stopped");
}

/// Commit `records`, retrying with backoff until it succeeds: an accepted
/// record is never dropped. While this loops, the queue fills up.
fn commit_with_retry(conn: &mut Connection, records: &[AuditRecord]) {
    let mut delay = RETRY_FIRST;
    let mut failures: u32 = 0;
    loop {
        match store::insert_batch(conn, records) {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(
                        records = records.len(),
                        failures,
                        "audit batch committed after retries"
                    );
                } else {
                    tracing::trace!(records = records.len(), "audit batch committed");
                }
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(
                    error = %e,
                    records = records.len(),
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "audit batch write failed; records kept, retrying"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
