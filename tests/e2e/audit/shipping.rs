//! Shipping to a real rsyslog (TLS) and an HTTP NDJSON receiver, across
//! outages and an appliance restart; shipping throughput.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use appliance::audit::{self, AuditFilter, AuditKind};
use e2e::receivers::{HttpReceiver, Rsyslog};

use super::process::Proc;
use super::prometheus::parse_prometheus;
use super::{check_delivery, tip, write_records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_every_record_once_across_outages_and_a_restart() {
    let mut rsyslog = Rsyslog::start().await.expect("rsyslog");
    let mut http = HttpReceiver::start().await;
    let extra = format!(
        "[[audit_sink]]\nname = \"rsyslog\"\ntype = \"syslog\"\naddress = \"{}\"\nca_file = {:?}\nserver_name = \"localhost\"\n\
         settle = \"1s\"\nbackoff_max = \"1s\"\nbatch_size = 50\nfail_after = \"2s\"\n\n\
         [[audit_sink]]\nname = \"collector\"\ntype = \"http\"\nurl = \"{}\"\ntoken_secret = \"sink_token\"\nbackoff_max = \"1s\"\nbatch_size = 50\n",
        rsyslog.addr(),
        rsyslog.ca().display().to_string(),
        http.url("/ingest")
    );
    let mut app = Proc::new(&extra, &[("sink_token", "s3cret-token")]);
    app.start().await;
    write_records(&app.db(), "before", 120).await;
    let t = tip(&app.db());
    assert!(
        e2e::eventually(Duration::from_secs(15), || rsyslog.records().len() as i64
            >= t
            && http.ndjson().len() as i64 >= t)
        .await
    );

    // Outage of both receivers (~8 s) with an appliance restart in the middle.
    let outage = Instant::now();
    rsyslog.pause();
    http.pause();
    write_records(&app.db(), "outage-1", 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.stop().await;
    write_records(&app.db(), "while-down", 50).await;
    app.start().await;
    write_records(&app.db(), "outage-2", 100).await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(outage.elapsed())).await;
    let (_, metrics) = app.get("/metrics").await;
    let lag = parse_prometheus(&metrics).expect("metrics parse");
    let lag = &lag["appliance_audit_sink_lag_records"];
    assert!(lag.iter().all(|(_, v)| *v > 0.0), "lag while down: {lag:?}");
    rsyslog.resume().await.expect("rsyslog again");
    http.resume().await;
    let t = tip(&app.db());
    let done = e2e::eventually(Duration::from_secs(30), || {
        let r = rsyslog.records();
        let h = http.ndjson();
        [r, h].iter().all(|v| {
            v.iter()
                .filter_map(|x| x["seq"].as_i64())
                .collect::<HashSet<_>>()
                .len() as i64
                >= t
        })
    })
    .await;
    assert!(done, "not everything arrived; log:\n{}", app.log());
    check_delivery("rsyslog", &rsyslog.records(), t);
    check_delivery("http", &http.ndjson(), t);
    {
        let got = http.received.lock().expect("lock");
        assert!(got.iter().all(|r| r
            .headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer s3cret-token")));
        assert!(got.iter().all(|r| r
            .headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip")));
    }
    // The outage was reported, and the recovery too (once the first batch
    // after it settled).
    let sink_records = || {
        audit::query(
            &app.db(),
            &AuditFilter {
                kind: Some(AuditKind::AuditSinkFailing),
                ..Default::default()
            },
        )
        .expect("query")
    };
    e2e::eventually(Duration::from_secs(10), || {
        sink_records()
            .iter()
            .any(|r| r.record.outcome.as_deref() == Some("recovered"))
    })
    .await;
    let failing = sink_records();
    let outcomes: Vec<(String, String)> = failing
        .iter()
        .map(|r| {
            (
                r.record
                    .detail
                    .as_ref()
                    .map(|d| d["sink"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default(),
                r.record.outcome.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("rsyslog".into(), "failing".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("rsyslog".into(), "recovered".into())),
        "{outcomes:?}"
    );
    // What rsyslog holds is a trusted copy: the local trail verifies against it.
    let copy = app.dir.path().join("rsyslog-copy.ndjson");
    let lines: Vec<String> = rsyslog.records().iter().map(|v| v.to_string()).collect();
    std::fs::write(&copy, lines.join("\n")).expect("copy");
    let out = app.cli(&[
        "audit",
        "verify",
        "--checkpoint",
        &copy.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

/// Shipping throughput to a real rsyslog over TLS (for bench/RESULTS.md).
/// `cargo test -p e2e --test e2e measure_shipping -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn measure_shipping_throughput() {
    let rsyslog = Rsyslog::start().await.expect("rsyslog");
    let extra = format!(
        "[[audit_sink]]\nname = \"rsyslog\"\ntype = \"syslog\"\naddress = \"{}\"\nca_file = {:?}\nserver_name = \"localhost\"\nsettle = \"1s\"\n",
        rsyslog.addr(),
        rsyslog.ca().display().to_string()
    );
    let mut app = Proc::new(&extra, &[]);
    std::fs::create_dir_all(app.dir.path().join("data")).expect("data");
    write_records(&app.db(), "bulk", 50_000).await;
    let started = Instant::now();
    app.start().await;
    let t = tip(&app.db());
    assert!(
        e2e::eventually(Duration::from_secs(120), || rsyslog.records().len() as i64
            >= t - 5)
        .await
    );
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(rsyslog.dir.path().join("out.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!("shipping to rsyslog (TLS): {t} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s of message bodies", t as f64 / secs, bytes as f64 / secs / 1e6);
    app.stop().await;
}
