//! `kill -9` of the appliance under load, in strict and fast mode.

use std::time::Duration;

use appliance::audit::{self, AuditFilter, AuditKind};
use e2e::appliance::{policy_with, tcp_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::ApplianceClient;

use super::process::Proc;

/// Opens sessions through the tunnel as fast as it can from `workers` tasks
/// until `stop`; returns how many got their echo back (forwarded upstream).
async fn tunnel_load(
    client: ApplianceClient,
    token: String,
    target: String,
    workers: usize,
    stop: tokio_util_stop::Stop,
) -> u64 {
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, token, target, stop) =
            (client.clone(), token.clone(), target.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while !stop.is_set() {
                let Ok(mut s) = client.open_tunnel(&token, &target, 7).await else {
                    break;
                };
                if s.write_all(b"ping").await.is_err() {
                    break;
                }
                let mut b = [0u8; 4];
                match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await {
                    Ok(Ok(_)) if &b == b"ping" => acked += 1,
                    _ => break,
                }
            }
            acked
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

mod tokio_util_stop {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);
    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

async fn kill9_run(mode: &str) -> (u64, u64) {
    let upstream = e2e::echo_upstream().await;
    let mut app = Proc::new("audit_queue = 1024\n", &[]);
    let policy = policy_with(
        1,
        &tcp_connection(
            "echo",
            &upstream.to_string(),
            &[7],
            &["load@example.com"],
            &[],
        ),
    ) + &format!("\n[audit]\nmode = \"{mode}\"\n");
    app.install_policy(&policy);
    app.start().await;
    let token = app.token("load@example.com");
    let client = app.client();
    // Wait for the policy to be in force (readyz).
    let mut ready = false;
    for _ in 0..100 {
        if app.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "{}", app.log());
    let stop = tokio_util_stop::Stop::default();
    let load = tokio::spawn(tunnel_load(client, token, "echo".into(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.kill9().await;
    stop.set();
    let acked = load.await.unwrap_or(0);
    let stored = audit::query(
        &app.db(),
        &AuditFilter {
            kind: Some(AuditKind::SessionStart),
            ..Default::default()
        },
    )
    .expect("query")
    .len() as u64;
    let lost = acked.saturating_sub(stored);
    eprintln!("kill -9 in {mode} mode: {acked} sessions forwarded, {stored} session_start records on disk, {lost} lost");
    // The chain survives a kill -9 intact.
    let out = app.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    (acked, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_9_under_load_loses_nothing_forwarded_in_strict_mode() {
    let (acked, lost) = kill9_run("strict").await;
    assert!(acked > 20, "load too small: {acked}");
    assert_eq!(lost, 0, "strict mode lost records of forwarded sessions");
    let (acked, lost) = kill9_run("fast").await;
    assert!(acked > 20, "load too small: {acked}");
    assert!(
        lost <= 1024,
        "fast mode loses at most the queue (1024): {lost}"
    );
}
