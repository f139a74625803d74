//! The metrics registry (atomics, bumped from anywhere, no locks on the data
//! path) and its rendering in the Prometheus text exposition format (0.0.4).
//!
//! Gateways bump session and byte counters ([`Metrics::session_started`],
//! [`Metrics::session_ended`]); statement, denial and hold counts are derived
//! from the records the audit writer committed, so a gateway that audits is
//! counted without further calls. Shipping, retention and event-routing
//! tasks register their live status here at startup.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::audit::retention::DiskStatus;
use crate::audit::ship::SinkStatus;
use crate::audit::AuditHandle;
use crate::policy::ConnectionKind;

const KINDS: [ConnectionKind; 4] = [
    ConnectionKind::Postgres,
    ConnectionKind::Ssh,
    ConnectionKind::Http,
    ConnectionKind::Tcp,
];

fn idx(kind: ConnectionKind) -> usize {
    match kind {
        ConnectionKind::Postgres => 0,
        ConnectionKind::Ssh => 1,
        ConnectionKind::Http => 2,
        ConnectionKind::Tcp => 3,
    }
}

/// Action types event routes run, as labels.
pub const ACTIONS: [&str; 4] = ["webhook", "command", "close_session", "revoke_identity"];

/// Counters and gauges of the whole appliance.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_started: [AtomicU64; 4],
    sessions_ended: [AtomicU64; 4],
    sessions_active: [AtomicI64; 4],
    bytes_up: [AtomicU64; 4],
    bytes_down: [AtomicU64; 4],
    actions: [AtomicU64; 4],
    action_failures: [AtomicU64; 4],
    /// Events the router could not queue (its queue was full).
    pub events_dropped: AtomicU64,
    /// Events that matched at least one route.
    pub events_matched: AtomicU64,
    sinks: Mutex<Vec<Arc<SinkStatus>>>,
    disk: Mutex<Option<Arc<DiskStatus>>>,
}

impl Metrics {
    /// A session of `kind` began.
    pub fn session_started(&self, kind: ConnectionKind) {
        self.sessions_started[idx(kind)].fetch_add(1, Ordering::Relaxed);
        self.sessions_active[idx(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A session of `kind` ended after moving `up` bytes laptop -> upstream
    /// and `down` back.
    pub fn session_ended(&self, kind: ConnectionKind, up: u64, down: u64) {
        self.sessions_ended[idx(kind)].fetch_add(1, Ordering::Relaxed);
        self.sessions_active[idx(kind)].fetch_sub(1, Ordering::Relaxed);
        self.bytes_up[idx(kind)].fetch_add(up, Ordering::Relaxed);
        self.bytes_down[idx(kind)].fetch_add(down, Ordering::Relaxed);
    }

    /// An event action ran (`action` is one of [`ACTIONS`]).
    pub fn action(&self, action: &str, ok: bool) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.actions[i].fetch_add(1, Ordering::Relaxed);
            if !ok {
                self.action_failures[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Registers a shipping sink's live status.
    pub fn register_sink(&self, s: Arc<SinkStatus>) {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Registers the retention task's disk status.
    pub fn register_disk(&self, d: Arc<DiskStatus>) {
        *self.disk.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
    }

    /// Live sessions of `kind`.
    pub fn active(&self, kind: ConnectionKind) -> i64 {
        self.sessions_active[idx(kind)].load(Ordering::Relaxed)
    }
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }

    fn per_kind<T: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        f: impl Fn(usize) -> T,
    ) {
        self.family(name, kind, help);
        for k in KINDS {
            self.sample(name, &[("kind", k.as_str())], f(idx(k)));
        }
    }
}

/// Everything `/metrics` shows besides the registry.
pub struct Snapshot<'a> {
    pub audit: &'a AuditHandle,
    pub live_sessions: usize,
    pub policy_version: Option<u64>,
}

/// The Prometheus text exposition of `m` and `s`.
pub fn render(m: &Metrics, s: &Snapshot<'_>) -> String {
    let mut o = Out(String::with_capacity(8192));
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    o.per_kind(
        "appliance_sessions_started_total",
        "counter",
        "Sessions started, by connection kind.",
        |i| ld(&m.sessions_started[i]),
    );
    o.per_kind(
        "appliance_sessions_ended_total",
        "counter",
        "Sessions ended, by connection kind.",
        |i| ld(&m.sessions_ended[i]),
    );
    o.per_kind(
        "appliance_sessions_active",
        "gauge",
        "Live sessions, by connection kind.",
        |i| m.sessions_active[i].load(Ordering::Relaxed),
    );
    o.per_kind(
        "appliance_bytes_up_total",
        "counter",
        "Bytes laptop -> upstream of ended sessions, by kind.",
        |i| ld(&m.bytes_up[i]),
    );
    o.per_kind(
        "appliance_bytes_down_total",
        "counter",
        "Bytes upstream -> laptop of ended sessions, by kind.",
        |i| ld(&m.bytes_down[i]),
    );
    o.family(
        "appliance_sessions_live",
        "gauge",
        "Live sessions registered for revocation.",
    );
    o.sample("appliance_sessions_live", &[], s.live_sessions);

    let stats = s.audit.stats();
    let by_kind = stats.by_kind();
    let sum = |pred: &dyn Fn(&str, &str) -> bool| -> u64 {
        by_kind
            .iter()
            .filter(|((k, out), _)| pred(k, out))
            .map(|(_, n)| *n)
            .sum()
    };
    o.family(
        "appliance_statements_total",
        "counter",
        "SQL statements audited.",
    );
    o.sample(
        "appliance_statements_total",
        &[],
        sum(&|k, _| k == "statement"),
    );
    o.family(
        "appliance_commands_total",
        "counter",
        "SSH exec commands audited.",
    );
    o.sample(
        "appliance_commands_total",
        &[],
        sum(&|k, _| k == "ssh_exec"),
    );
    o.family(
        "appliance_http_requests_total",
        "counter",
        "HTTP gateway requests audited.",
    );
    o.sample(
        "appliance_http_requests_total",
        &[],
        sum(&|k, _| k == "http_request"),
    );
    o.family(
        "appliance_denials_total",
        "counter",
        "Operations denied by policy controls, by audit kind.",
    );
    let mut denied: std::collections::BTreeMap<&str, u64> = [
        "statement",
        "ssh_exec",
        "ssh_command_denied",
        "http_request",
        "tunnel_refused",
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    for ((k, out), n) in &by_kind {
        if out == "denied" || *k == "ssh_command_denied" || *k == "tunnel_refused" {
            *denied.entry(k).or_insert(0) += n;
        }
    }
    for (k, n) in &denied {
        o.sample("appliance_denials_total", &[("kind", k)], n);
    }
    o.family(
        "appliance_holds_total",
        "counter",
        "Operations held for approval.",
    );
    o.sample(
        "appliance_holds_total",
        &[],
        sum(&|k, out| k == "approval_requested" || out == "held"),
    );
    o.family(
        "appliance_audit_records_total",
        "counter",
        "Audit records committed by this process, by kind and outcome.",
    );
    for ((k, out), n) in &by_kind {
        o.sample(
            "appliance_audit_records_total",
            &[("kind", k), ("outcome", out)],
            n,
        );
    }

    o.family(
        "appliance_audit_queue_depth",
        "gauge",
        "Audit records waiting in the writer's queue.",
    );
    o.sample("appliance_audit_queue_depth", &[], s.audit.queue_depth());
    o.family(
        "appliance_audit_queue_capacity",
        "gauge",
        "Capacity of the audit queue.",
    );
    o.sample(
        "appliance_audit_queue_capacity",
        &[],
        s.audit.queue_capacity(),
    );
    o.family(
        "appliance_audit_last_seq",
        "gauge",
        "Highest committed audit sequence number.",
    );
    let tip = stats.last_seq.load(Ordering::Relaxed);
    o.sample("appliance_audit_last_seq", &[], tip);
    o.family(
        "appliance_audit_strict_mode",
        "gauge",
        "1 when audit mode is strict.",
    );
    o.sample(
        "appliance_audit_strict_mode",
        &[],
        u8::from(s.audit.mode().0 == crate::audit::AuditMode::Strict),
    );
    for (name, help, v) in [
        (
            "appliance_audit_batches_total",
            "Audit transactions committed.",
            ld(&stats.batches),
        ),
        (
            "appliance_audit_fsyncs_total",
            "Audit transactions committed with synchronous=FULL (strict mode).",
            ld(&stats.durable_batches),
        ),
        (
            "appliance_audit_durable_records_total",
            "Records acknowledged only after fsync.",
            ld(&stats.durable_records),
        ),
        (
            "appliance_audit_commit_failures_total",
            "Failed audit commits (each retried).",
            ld(&stats.commit_failures),
        ),
        (
            "appliance_audit_refused_total",
            "Operations refused because the audit queue was full.",
            ld(&stats.refused),
        ),
        (
            "appliance_audit_checkpoints_total",
            "Signed audit checkpoints written.",
            ld(&stats.checkpoints),
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v);
    }

    let sinks = m.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    o.family(
        "appliance_audit_sink_lag_records",
        "gauge",
        "Records not yet acknowledged by a sink.",
    );
    for sk in &sinks {
        o.sample(
            "appliance_audit_sink_lag_records",
            &[("sink", &sk.name)],
            sk.lag(tip),
        );
    }
    o.family(
        "appliance_audit_sink_lag_seconds",
        "gauge",
        "Seconds since a sink last acknowledged (0 when caught up).",
    );
    let now = crate::audit::now_ms();
    for sk in &sinks {
        let last = sk.last_ack_ms.load(Ordering::Relaxed);
        let secs = if sk.lag(tip) == 0 || last == 0 {
            0.0
        } else {
            (now - last).max(0) as f64 / 1000.0
        };
        o.sample(
            "appliance_audit_sink_lag_seconds",
            &[("sink", &sk.name)],
            secs,
        );
    }
    for (name, kind, help, f) in [
        (
            "appliance_audit_sink_acked_seq",
            "gauge",
            "Highest sequence number a sink acknowledged.",
            (|sk: &SinkStatus| sk.acked_seq.load(Ordering::Relaxed) as u64)
                as fn(&SinkStatus) -> u64,
        ),
        (
            "appliance_audit_sink_sent_records_total",
            "counter",
            "Records sent to a sink (resends included).",
            |sk| sk.sent_records.load(Ordering::Relaxed),
        ),
        (
            "appliance_audit_sink_sent_bytes_total",
            "counter",
            "Bytes sent to a sink.",
            |sk| sk.sent_bytes.load(Ordering::Relaxed),
        ),
        (
            "appliance_audit_sink_failures_total",
            "counter",
            "Failed delivery attempts.",
            |sk| sk.failures.load(Ordering::Relaxed),
        ),
        (
            "appliance_audit_sink_failing",
            "gauge",
            "1 while a sink has been failing longer than fail_after.",
            |sk| sk.failing.load(Ordering::Relaxed),
        ),
    ] {
        o.family(name, kind, help);
        for sk in &sinks {
            o.sample(name, &[("sink", &sk.name)], f(sk));
        }
    }

    if let Some(d) = m.disk.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        o.family(
            "appliance_audit_disk_bytes",
            "gauge",
            "Audit database plus WAL size.",
        );
        o.sample("appliance_audit_disk_bytes", &[], ld(&d.bytes));
        o.family(
            "appliance_audit_disk_threshold_exceeded",
            "gauge",
            "1 while the audit database is over its disk threshold.",
        );
        o.sample(
            "appliance_audit_disk_threshold_exceeded",
            &[],
            ld(&d.over_threshold),
        );
        o.family(
            "appliance_audit_retention_deleted_total",
            "counter",
            "Records deleted by retention.",
        );
        o.sample(
            "appliance_audit_retention_deleted_total",
            &[],
            ld(&d.deleted),
        );
    }

    o.family(
        "appliance_event_actions_total",
        "counter",
        "Event route actions run, by type.",
    );
    for (i, a) in ACTIONS.iter().enumerate() {
        o.sample(
            "appliance_event_actions_total",
            &[("action", a)],
            ld(&m.actions[i]),
        );
    }
    o.family(
        "appliance_event_action_failures_total",
        "counter",
        "Event route actions that failed, by type.",
    );
    for (i, a) in ACTIONS.iter().enumerate() {
        o.sample(
            "appliance_event_action_failures_total",
            &[("action", a)],
            ld(&m.action_failures[i]),
        );
    }
    o.family(
        "appliance_events_matched_total",
        "counter",
        "Events that matched at least one route.",
    );
    o.sample("appliance_events_matched_total", &[], ld(&m.events_matched));
    o.family(
        "appliance_events_dropped_total",
        "counter",
        "Matched events dropped because the action queue was full.",
    );
    o.sample("appliance_events_dropped_total", &[], ld(&m.events_dropped));
    o.family(
        "appliance_policy_version",
        "gauge",
        "Version of the policy in force (0: none).",
    );
    o.sample(
        "appliance_policy_version",
        &[],
        s.policy_version.unwrap_or(0),
    );
    o.0
}
