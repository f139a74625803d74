//! The single audit writer: a bounded queue in front of a dedicated OS thread
//! that commits records to SQLite in batches, each chained to the previous
//! record (see `chain`).
//!
//! Sessions hold cheap [`AuditHandle`] clones. The writer thread blocks on the
//! queue, takes one message, drains up to `max_batch - 1` more without
//! waiting, and commits them in one transaction. A failed batch is retried
//! with backoff (100 ms doubling to 5 s) and is never dropped; meanwhile the
//! queue fills and [`AuditHandle::record`] waits, which back-pressures sessions.
//!
//! After a batch that nobody waits on, the thread lingers [`LINGER`] before
//! it looks at the queue again: records arriving meanwhile wake nobody and
//! share the next transaction, so a busy gateway pays one wake-up and one
//! commit per batch instead of per statement. A batch with a durable record,
//! a flush or a checkpoint waiting does not linger.
//!
//! # Durability
//!
//! - [`AuditHandle::record`] ("fast"): acknowledged once accepted into the
//!   queue. The batch commits with `synchronous=NORMAL` (WAL): a `kill -9` of
//!   the process loses at most what the queue held; a power loss may also lose
//!   the last commits.
//! - [`AuditHandle::record_durable`] ("strict"): resolves only after the
//!   record's batch committed with `synchronous=FULL` (the WAL is fsynced).
//!   Group commit: every durable record waiting in the queue shares that one
//!   fsync, so the cost per record falls as concurrency rises.
//! - [`AuditHandle::record_gated`] picks one of these from the mode in force
//!   (policy `[audit] mode`, `queue_full`); gateways call it for records that
//!   gate an operation (forward only on `Ok`).
//!
//! # Shutdown order
//!
//! 1. Stop accepting sessions and let them end (they record their `SessionEnd`).
//! 2. Record `ApplianceStopped`.
//! 3. Either drop every [`AuditHandle`] and call [`AuditWriter::join`] (the
//!    thread drains the queue, commits, writes a final checkpoint when it has
//!    a key, and exits once the last handle is gone), or call
//!    [`AuditWriter::shutdown`] with one handle.
//!
//! If the disk stays broken the thread keeps retrying, so a caller that must
//! exit anyway wraps `join`/`shutdown` in `tokio::time::timeout`.

use super::checkpoint::Checkpoint;
use super::keys::AuditKey;
use super::record::{now_ms, AuditKind, AuditRecord};
use super::store;
use super::AuditError;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long the writer lets records accumulate after a batch nobody waited
/// on (see the module doc).
pub const LINGER: Duration = Duration::from_millis(2);

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
    /// Signs checkpoints; `None` writes none (one-shot CLI writers).
    pub checkpoint_key: Option<Arc<AuditKey>>,
}

impl AuditConfig {
    /// Defaults: queue of [`DEFAULT_QUEUE_CAPACITY`], batches of
    /// [`DEFAULT_MAX_BATCH`], no checkpoints.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            db_path: db_path.into(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch: DEFAULT_MAX_BATCH,
            checkpoint_key: None,
        }
    }
}

/// Policy `[audit] mode`: when an audited operation may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditMode {
    /// Asynchronously through the bounded queue (the default).
    #[default]
    Fast,
    /// Only after the record is durable (fsynced).
    Strict,
}

/// Policy `[audit] queue_full`: what fast mode does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFullPolicy {
    /// Sessions wait for queue space (the default).
    #[default]
    Backpressure,
    /// New operations are refused while the queue is full.
    Refuse,
}

// Records travel unboxed: the queue's slots are allocated once and reused,
// while a Box would cost an allocation per record on the data path.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(AuditRecord),
    /// Answered with the record's seq once its batch is fsynced.
    Durable(AuditRecord, oneshot::Sender<i64>),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
    /// Write a checkpoint if the trail grew since the last one.
    Checkpoint(oneshot::Sender<()>),
    /// Close the queue to new messages; drain what is in it, then exit.
    Close,
}

/// Counters the writer keeps, read by `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records committed by this process.
    pub records: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Transactions committed with `synchronous=FULL` (fsyncs).
    pub durable_batches: AtomicU64,
    /// Durable records acknowledged.
    pub durable_records: AtomicU64,
    /// Failed commit attempts (each retried).
    pub commit_failures: AtomicU64,
    /// Operations refused because the queue was full (`queue_full = "refuse"`).
    pub refused: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Highest committed seq seen by this process.
    pub last_seq: AtomicI64,
    by_kind: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl AuditStats {
    /// Committed records by `(kind, outcome)` ("" when there is no outcome).
    pub fn by_kind(&self) -> BTreeMap<(&'static str, String), u64> {
        self.by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, records: &[AuditRecord]) {
        let mut map = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            let key = (r.kind.as_str(), r.outcome.clone().unwrap_or_default());
            *map.entry(key).or_insert(0) += 1;
        }
    }
}

struct HandleShared {
    /// bit 0: strict; bit 1: refuse when full.
    mode: AtomicU8,
    stats: Arc<AuditStats>,
    tip: watch::Receiver<i64>,
    db_path: PathBuf,
}

/// A cheap, cloneable sender of audit records.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<HandleShared>,
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

    /// Resolves once `rec` is committed and fsynced (`synchronous=FULL`),
    /// returning its sequence number. Waits for queue space first.
    pub async fn record_durable(&self, rec: AuditRecord) -> Result<i64, AuditError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Msg::Durable(rec, done_tx))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        done_rx.await.map_err(|_| AuditError::WriterGone)
    }

    /// Records `rec` for an operation that may proceed only on `Ok`, as the
    /// mode in force says: strict waits for durability; fast waits for queue
    /// space (`backpressure`) or returns [`AuditError::QueueFull`] at once
    /// (`refuse`), and the caller refuses the operation.
    pub async fn record_gated(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let (mode, full) = self.mode();
        match (mode, full) {
            (AuditMode::Strict, _) => self.record_durable(rec).await.map(|_| ()),
            (AuditMode::Fast, QueueFullPolicy::Backpressure) => self.record(rec).await,
            (AuditMode::Fast, QueueFullPolicy::Refuse) => {
                let r = self.try_record(rec);
                if matches!(r, Err(AuditError::QueueFull)) {
                    self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
        }
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

    /// Writes a signed checkpoint now if the trail grew since the last one
    /// (a no-op for writers without a key).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(done_tx))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        done_rx.await.map_err(|_| AuditError::WriterGone)
    }

    /// Messages waiting in the queue (not counting the batch being written).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the writer still accepts records.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The queue's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Sets the mode (from the policy in force).
    pub fn set_mode(&self, mode: AuditMode, full: QueueFullPolicy) {
        let bits =
            u8::from(mode == AuditMode::Strict) | (u8::from(full == QueueFullPolicy::Refuse) << 1);
        self.shared.mode.store(bits, Ordering::Relaxed);
    }

    /// The mode in force.
    pub fn mode(&self) -> (AuditMode, QueueFullPolicy) {
        let bits = self.shared.mode.load(Ordering::Relaxed);
        let mode = if bits & 1 != 0 {
            AuditMode::Strict
        } else {
            AuditMode::Fast
        };
        let full = if bits & 2 != 0 {
            QueueFullPolicy::Refuse
        } else {
            QueueFullPolicy::Backpressure
        };
        (mode, full)
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<AuditStats> {
        self.shared.stats.clone()
    }

    /// The highest committed sequence number, updated after every commit
    /// (shippers and the event router wait on it).
    pub fn subscribe_tip(&self) -> watch::Receiver<i64> {
        self.shared.tip.clone()
    }

    /// The database this writer commits to.
    pub fn db_path(&self) -> &std::path::Path {
        &self.shared.db_path
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

/// Open (or create, or migrate) the database and the schema now, so errors
/// surface at startup, then run the writer on its own OS thread.
pub fn spawn_writer(cfg: AuditConfig) -> Result<(AuditHandle, AuditWriter), AuditError> {
    let (conn, apid) = store::open_writer(&cfg.db_path)?;
    let (tip_seq, _) = store::tip(&conn)?;
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let (tip_tx, tip_rx) = watch::channel(tip_seq);
    let stats = Arc::new(AuditStats::default());
    stats.last_seq.store(tip_seq, Ordering::Relaxed);
    let mut w = Writer {
        conn,
        apid,
        max_batch: cfg.max_batch.max(1),
        path: cfg.db_path.display().to_string(),
        key: cfg.checkpoint_key,
        // Until we know better, the current tip counts as checkpointed only
        // when it is a checkpoint record itself.
        checkpointed: 0,
        full_sync: false,
        stats: stats.clone(),
        tip: tip_tx,
    };
    w.checkpointed = w.last_checkpoint_marker();
    let thread = std::thread::Builder::new()
        .name("audit-writer".to_owned())
        .spawn(move || w.run(rx))?;
    let shared = Arc::new(HandleShared {
        mode: AtomicU8::new(0),
        stats,
        tip: tip_rx,
        db_path: cfg.db_path,
    });
    Ok((AuditHandle { tx, shared }, AuditWriter { thread }))
}

struct Writer {
    conn: Connection,
    apid: String,
    max_batch: usize,
    path: String,
    key: Option<Arc<AuditKey>>,
    /// Seq of the last checkpoint record this writer knows of.
    checkpointed: i64,
    full_sync: bool,
    stats: Arc<AuditStats>,
    tip: watch::Sender<i64>,
}

impl Writer {
    /// The current tip's seq if the last row is a checkpoint, else 0.
    fn last_checkpoint_marker(&self) -> i64 {
        self.conn
            .query_row(
                "SELECT seq, kind FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .ok()
            .filter(|(_, k)| k == AuditKind::AuditCheckpoint.as_str())
            .map(|(s, _)| s)
            .unwrap_or(0)
    }

    /// The writer loop: exits when the queue is closed (all handles dropped,
    /// or a `Close` message) and empty.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        tracing::info!(db = %self.path, max_batch = self.max_batch, "audit writer started");
        let mut records: Vec<AuditRecord> = Vec::with_capacity(self.max_batch);
        let mut durable: Vec<(usize, oneshot::Sender<i64>)> = Vec::new();
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut checkpoint_waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut total: u64 = 0;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut waited_on = false;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => records.push(r),
                    Msg::Durable(r, done) => {
                        durable.push((records.len(), done));
                        records.push(r);
                        waited_on = true;
                    }
                    Msg::Flush(w) => {
                        waiters.push(w);
                        waited_on = true;
                    }
                    Msg::Checkpoint(w) => {
                        checkpoint_waiters.push(w);
                        waited_on = true;
                    }
                    Msg::Close => {
                        rx.close();
                        waited_on = true;
                    }
                }
                if records.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !records.is_empty() {
                let full = !durable.is_empty();
                let committed = self.commit_with_retry(&records, full);
                total += records.len() as u64;
                if full {
                    self.stats.durable_batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .durable_records
                        .fetch_add(durable.len() as u64, Ordering::Relaxed);
                }
                for (i, done) in durable.drain(..) {
                    let seq = committed.first_seq + i64::try_from(i).unwrap_or(0);
                    // The session may have gone; nothing to do then.
                    let _ = done.send(seq);
                }
                records.clear();
            }
            if !checkpoint_waiters.is_empty() {
                self.checkpoint();
                for w in checkpoint_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            for w in waiters.drain(..) {
                // The flusher may have given up waiting; nothing to do then.
                let _ = w.send(());
            }
            if !waited_on {
                std::thread::sleep(LINGER);
            }
        }
        self.checkpoint();
        tracing::info!(db = %self.path, records = total, "audit writer stopped");
    }

    fn set_sync(&mut self, full: bool) {
        if self.full_sync == full {
            return;
        }
        let level = if full { "FULL" } else { "NORMAL" };
        match self.conn.pragma_update(None, "synchronous", level) {
            Ok(()) => self.full_sync = full,
            Err(e) => tracing::error!(error = %e, level, "cannot set audit synchronous level"),
        }
    }

    /// Commit `records`, retrying with backoff until it succeeds: an accepted
    /// record is never dropped. While this loops, the queue fills up.
    fn commit_with_retry(&mut self, records: &[AuditRecord], full: bool) -> store::Committed {
        self.set_sync(full);
        let mut delay = RETRY_FIRST;
        let mut failures: u32 = 0;
        loop {
            match store::insert_batch(&mut self.conn, &self.apid, records) {
                Ok(c) => {
                    if failures > 0 {
                        tracing::warn!(
                            records = records.len(),
                            failures,
                            "audit batch committed after retries"
                        );
                    } else {
                        tracing::trace!(records = records.len(), "audit batch committed");
                    }
                    self.after_commit(records, &c);
                    return c;
                }
                Err(e) => {
                    failures += 1;
                    self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
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

    fn after_commit(&self, records: &[AuditRecord], c: &store::Committed) {
        self.stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.last_seq.store(c.last_seq, Ordering::Relaxed);
        self.stats.count(records);
        self.tip.send_replace(c.last_seq);
    }

    /// Appends a signed checkpoint of the tip if the trail grew since the
    /// last one. Failures are logged; the next tick tries again.
    fn checkpoint(&mut self) {
        let Some(key) = self.key.clone() else {
            return;
        };
        let (seq, hash) = match store::tip(&self.conn) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit tip for a checkpoint");
                return;
            }
        };
        if seq == 0 || seq <= self.checkpointed {
            return;
        }
        let cp = match Checkpoint::sign(&key, &self.apid, seq, &super::chain::hex(&hash), now_ms())
        {
            Ok(cp) => cp,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an audit checkpoint");
                return;
            }
        };
        let rec = [cp.record()];
        let full = self.full_sync;
        let c = self.commit_with_retry(&rec, full);
        self.checkpointed = c.last_seq;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(seq, "audit checkpoint written");
    }
}
