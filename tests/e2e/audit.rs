//! The audit trail end to end, with the appliance as a real process
//! (`appliance serve`): shipping to a real rsyslog over TLS and to an HTTP
//! NDJSON receiver across outages and a restart, `kill -9` under load in
//! strict and fast mode, tamper detection by `audit verify`, signed exports
//! checked by `minisign` and `verify-export`, event routes (signed webhooks,
//! runbooks, a hanging webhook), and `/metrics` in Prometheus text format.
mod kill9;
mod process;
mod prometheus;
mod routes;
mod shipping;
mod tamper;

use std::collections::HashSet;
use std::path::Path;

use appliance::audit::{self, AuditConfig, AuditFilter, AuditKind, AuditRecord};

/// Writes `n` records into `db` from this process (a second writer: the
/// chain stays one, as with the CLI).
pub(crate) async fn write_records(db: &Path, tag: &str, n: usize) {
    let (h, w) = audit::spawn_writer(AuditConfig::new(db)).expect("writer");
    for i in 0..n {
        let rec = AuditRecord::new(AuditKind::Statement)
            .user("alice@example.com")
            .connection("pg-prod")
            .session(tag)
            .outcome("ok")
            .detail(serde_json::json!({ "statement": format!("SELECT {i} /* {tag} */") }));
        h.record(rec).await.expect("record");
    }
    drop(h);
    w.join().await.expect("join");
}

pub(crate) fn tip(db: &Path) -> i64 {
    audit::query(
        db,
        &AuditFilter {
            limit: Some(1),
            ..Default::default()
        },
    )
    .expect("query")
    .last()
    .map_or(0, |r| r.seq)
}

/// Every seq once after de-duplication by id, first occurrences in order.
pub(crate) fn check_delivery(name: &str, got: &[serde_json::Value], through: i64) {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for v in got {
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if seen.insert(id) {
            order.push(v["seq"].as_i64().unwrap_or(-1));
        }
    }
    let expected: Vec<i64> = (1..=through).collect();
    assert_eq!(
        order
            .iter()
            .filter(|s| **s <= through)
            .copied()
            .collect::<Vec<_>>(),
        expected,
        "{name}: every record once, in order"
    );
    eprintln!(
        "{name}: {} messages, {} unique, through seq {through}",
        got.len(),
        seen.len()
    );
}
