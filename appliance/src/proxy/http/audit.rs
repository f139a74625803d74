//! Per-request and per-WebSocket audit records. A [`RequestLog`] travels
//! with the response body and writes its record when the body ends or is
//! dropped (client gone, revocation), so bytes and duration are final.
//! Records go through a bounded per-session channel to one forwarder task,
//! which waits on the audit queue (back-pressure, no loss) and keeps them in
//! order ahead of the session's end record. A request reserves its slot in
//! that channel before it is served, so a slow audit writer slows the next
//! request down instead of letting records pile up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use tokio::sync::mpsc;

use crate::audit::{now_ms, AuditHandle, AuditKind, AuditRecord};

/// Where a session's records go.
#[derive(Clone)]
pub struct AuditSink {
    /// Pre-filled with user, groups, connection, session, client, port.
    template: Arc<AuditRecord>,
    tx: mpsc::Sender<AuditRecord>,
    /// The audit queue itself, for strict mode's durable records.
    pub handle: AuditHandle,
}

/// Records a session may have waiting for the audit queue.
const SESSION_AUDIT_BACKLOG: usize = 64;

impl AuditSink {
    /// A sink and the forwarder future that drains it into `audit`; the
    /// future ends once every sink clone (and every log) is gone.
    pub fn new(
        template: AuditRecord,
        audit: AuditHandle,
    ) -> (AuditSink, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(SESSION_AUDIT_BACKLOG);
        let handle = audit.clone();
        let forward = async move {
            while let Some(rec) = rx.recv().await {
                if let Err(e) = audit.record(rec).await {
                    tracing::error!(error = %e, "an HTTP audit record was lost");
                }
            }
        };
        (
            AuditSink {
                template: Arc::new(template),
                tx,
                handle,
            },
            forward,
        )
    }

    /// A record of `kind` stamped now, with the session's fields.
    pub fn record(&self, kind: AuditKind) -> AuditRecord {
        let mut r = AuditRecord::clone(&self.template);
        r.kind = kind;
        r.time_ms = now_ms();
        r
    }

    /// Queues `rec`, waiting while the session's backlog is full.
    pub async fn send(&self, rec: AuditRecord) {
        if self.tx.send(rec).await.is_err() {
            tracing::error!("HTTP audit forwarder is gone; a record was lost");
        }
    }

    /// Strict audit mode: a durable `forwarded` record of the request before
    /// it goes upstream. `Ok` at once in fast mode.
    pub async fn gate(&self, method: &Method, path: &str) -> Result<(), ()> {
        if self.handle.mode().0 != crate::audit::AuditMode::Strict {
            return Ok(());
        }
        let rec = self
            .record(AuditKind::HttpRequest)
            .outcome("forwarded")
            .detail(serde_json::json!({ "method": method.as_str(), "path": path }));
        self.handle
            .record_durable(rec)
            .await
            .map(|_| ())
            .map_err(|_| ())
    }

    /// A slot for one record, to be filled later from a synchronous context.
    pub async fn reserve(&self) -> Option<mpsc::OwnedPermit<AuditRecord>> {
        self.tx.clone().reserve_owned().await.ok()
    }
}

/// One request's audit record, written when dropped.
pub struct RequestLog {
    sink: AuditSink,
    /// The record's reserved place in the session's audit channel.
    slot: Option<mpsc::OwnedPermit<AuditRecord>>,
    started: Instant,
    method: Method,
    path: String,
    /// Request body bytes forwarded upstream (shared with the request body).
    pub up: Arc<AtomicU64>,
    /// Response body bytes sent to the client.
    pub down: u64,
    status: Option<u16>,
    outcome: &'static str,
    reason: Option<String>,
    rule: Option<String>,
    upgrade: Option<String>,
    upstream_version: Option<&'static str>,
    approval: Option<String>,
    complete: bool,
}

impl RequestLog {
    pub fn new(
        sink: AuditSink,
        slot: Option<mpsc::OwnedPermit<AuditRecord>>,
        method: Method,
        path: String,
    ) -> RequestLog {
        RequestLog {
            sink,
            slot,
            started: Instant::now(),
            method,
            path,
            up: Arc::new(AtomicU64::new(0)),
            down: 0,
            status: None,
            outcome: "ok",
            reason: None,
            rule: None,
            upgrade: None,
            upstream_version: None,
            approval: None,
            complete: false,
        }
    }

    pub fn status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The gateway answered itself: `code` becomes the outcome.
    pub fn refused(&mut self, status: u16, code: &'static str, reason: String, rule: Option<&str>) {
        self.status = Some(status);
        self.outcome = code;
        self.reason = Some(reason);
        self.rule = rule.map(str::to_string);
    }

    pub fn upgrade(&mut self, protocol: String) {
        self.upgrade = Some(protocol);
    }

    pub fn upstream_version(&mut self, v: http::Version) {
        self.upstream_version = Some(match v {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        });
    }

    /// The approval request filed for it, or the approval it reused.
    pub fn approval(&mut self, id: &str) {
        self.approval = Some(id.to_string());
    }

    /// The response body was sent to its end.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    /// The response body failed midway (upstream reset).
    pub fn failed(&mut self, reason: String) {
        self.outcome = "upstream_error";
        self.reason = Some(reason);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let mut detail = serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "complete": self.complete,
        });
        if let Some(s) = self.status {
            detail["status"] = s.into();
        }
        if let Some(r) = &self.rule {
            detail["rule"] = r.as_str().into();
        }
        if let Some(u) = &self.upgrade {
            detail["upgrade"] = u.as_str().into();
        }
        if let Some(a) = &self.approval {
            detail["approval"] = a.as_str().into();
        }
        if let Some(v) = self.upstream_version {
            detail["upstream_version"] = v.into();
        }
        let outcome = if self.outcome == "ok" && !self.complete && self.upgrade.is_none() {
            "incomplete"
        } else {
            self.outcome
        };
        let mut rec = self
            .sink
            .record(AuditKind::HttpRequest)
            .bytes(self.up.load(Ordering::Relaxed), self.down)
            .duration(self.started.elapsed())
            .outcome(outcome)
            .detail(detail);
        if let Some(r) = self.reason.take() {
            rec = rec.reason(r);
        } else if outcome == "incomplete" {
            rec = rec.reason("the response ended before its body was sent in full");
        }
        match self.slot.take() {
            Some(slot) => {
                slot.send(rec);
            }
            None => tracing::error!("HTTP audit forwarder is gone; a request record was lost"),
        }
    }
}
