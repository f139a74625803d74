//! The per-sink shipping loop: read after the cursor, send, advance the
//! cursor on acknowledgement, rewind to it on failure, back off with jitter.
//! SQLite work runs on the blocking pool; the loop itself only awaits the
//! network, the tip watch and timers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{http, syslog, ShipError, SinkConfig, SinkKind, SinkStatus};
use crate::audit::{self, AuditHandle, AuditKind, AuditRecord, RawRow};
use crate::secrets::Secret;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// While idle (nothing new), how often the loop wakes to settle and poll.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// A connected (or connectable) receiver.
enum Transport {
    Syslog(syslog::SyslogTransport),
    Http(http::HttpTransport),
}

impl Transport {
    /// Sends `rows` (in seq order); returns the highest seq now acknowledged.
    async fn send(
        &mut self,
        rows: &[RawRow],
        status: &SinkStatus,
    ) -> Result<Option<i64>, ShipError> {
        match self {
            Transport::Syslog(t) => t.send(rows, status).await,
            Transport::Http(t) => t.send(rows, status).await,
        }
    }

    /// While idle: what has been acknowledged since, or an error if the
    /// connection died (everything unacknowledged is then resent).
    fn poll_ack(&mut self) -> Result<Option<i64>, ShipError> {
        match self {
            Transport::Syslog(t) => t.poll_ack(),
            Transport::Http(_) => Ok(None),
        }
    }

    fn reset(&mut self) {
        if let Transport::Syslog(t) = self {
            t.reset();
        }
    }
}

/// Full jitter: a random delay in `[d/2, d)`.
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    let frac = f64::from(u16::from_be_bytes(b)) / 65536.0;
    d.mul_f64(0.5 + frac / 2.0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, audit::AuditError> + Send + 'static,
) -> Result<T, audit::AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| audit::AuditError::WriterGone)?
}

/// Runs one sink until `shutdown`.
pub async fn run(
    cfg: SinkConfig,
    token: Option<Secret>,
    audit: AuditHandle,
    status: Arc<SinkStatus>,
    shutdown: CancellationToken,
) {
    let db = audit.db_path().to_path_buf();
    let mut transport = match &cfg.kind {
        SinkKind::Syslog { .. } => match syslog::SyslogTransport::new(&cfg) {
            Ok(t) => Transport::Syslog(t),
            Err(e) => {
                tracing::error!(sink = %cfg.name, error = %e, "audit sink disabled");
                return;
            }
        },
        SinkKind::Http { url, .. } => match http::HttpTransport::new(&cfg, url, token) {
            Ok(t) => Transport::Http(t),
            Err(e) => {
                tracing::error!(sink = %cfg.name, error = %e, "audit sink disabled");
                return;
            }
        },
    };
    let name = cfg.name.clone();
    let mut acked = {
        let (db2, name2) = (db.clone(), name.clone());
        match blocking(move || {
            let conn = audit::store::open_reader(&db2)?;
            audit::store::cursor(&conn, &name2)
        })
        .await
        {
            Ok(c) => c.unwrap_or(0),
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "cannot read the sink cursor; starting from the beginning");
                0
            }
        }
    };
    status.acked_seq.store(acked, Ordering::Relaxed);
    let mut sent = acked;
    let mut tip = audit.subscribe_tip();
    let mut backoff = BACKOFF_FIRST;
    let mut failing_since: Option<Instant> = None;
    let mut reported_failing = false;
    tracing::info!(sink = %name, from_seq = acked, "audit sink started");
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let rows = {
            let (db, after, n) = (db.clone(), sent, cfg.batch_size);
            blocking(move || audit::rows_after(&db, after, n)).await
        };
        let result = match rows {
            Err(e) => Err(ShipError::Config(format!("reading the trail: {e}"))),
            Ok(rows) if rows.is_empty() => {
                // Idle: settle in-flight records, wait for new ones.
                let r = transport.poll_ack();
                if r.is_ok() {
                    tokio::select! {
                        _ = tip.changed() => {}
                        _ = tokio::time::sleep(IDLE_TICK) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                r
            }
            Ok(rows) => {
                let last = rows.last().map_or(sent, |r| r.seq);
                let r = tokio::select! {
                    r = tokio::time::timeout(cfg.timeout, transport.send(&rows, &status)) => {
                        r.unwrap_or(Err(ShipError::Timeout))
                    }
                    _ = shutdown.cancelled() => return,
                };
                if r.is_ok() {
                    sent = last;
                }
                r
            }
        };
        match result {
            Ok(Some(seq)) if seq > acked => {
                acked = seq;
                status.acked_seq.store(seq, Ordering::Relaxed);
                status.last_ack_ms.store(audit::now_ms(), Ordering::Relaxed);
                let (db, name) = (db.clone(), name.clone());
                if let Err(e) = blocking(move || audit::set_cursor(&db, &name, seq)).await {
                    tracing::error!(sink = %cfg.name, error = %e, "cannot store the sink cursor");
                }
                backoff = BACKOFF_FIRST;
                failing_since = None;
                if reported_failing {
                    reported_failing = false;
                    status.failing.store(0, Ordering::Relaxed);
                    tracing::info!(sink = %cfg.name, "audit sink recovered");
                    let rec = AuditRecord::new(AuditKind::AuditSinkFailing)
                        .outcome("recovered")
                        .detail(serde_json::json!({ "sink": cfg.name, "acked_seq": seq }));
                    let _ = audit.record(rec).await;
                }
            }
            Ok(_) => {
                backoff = BACKOFF_FIRST;
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                transport.reset();
                // Everything not acknowledged goes again (receivers de-duplicate by id).
                sent = acked;
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::warn!(sink = %cfg.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "audit sink delivery failed");
                if !reported_failing && since.elapsed() >= cfg.fail_after {
                    reported_failing = true;
                    status.failing.store(1, Ordering::Relaxed);
                    let rec = AuditRecord::new(AuditKind::AuditSinkFailing)
                        .outcome("failing")
                        .reason(e.to_string())
                        .detail(serde_json::json!({
                            "sink": cfg.name,
                            "acked_seq": acked,
                            "failing_for_ms": since.elapsed().as_millis() as u64,
                        }));
                    let _ = audit.record(rec).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}
