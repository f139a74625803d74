//! The audit trail end to end, with the appliance as a real process
//! (`appliance serve`): shipping to a real rsyslog over TLS and to an HTTP
//! NDJSON receiver across outages and a restart, `kill -9` under load in
//! strict and fast mode, tamper detection by `audit verify`, signed exports
//! checked by `minisign` and `verify-export`, event routes (signed webhooks,
//! runbooks, a hanging webhook), and `/metrics` in Prometheus text format.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use appliance::audit::{self, AuditConfig, AuditFilter, AuditKind, AuditRecord};
use e2e::appliance::{policy_with, tcp_connection};
use e2e::receivers::{HttpReceiver, Rsyslog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::ApplianceClient;
use tunnel_lite::tls::{parse_fingerprint, Trust};

/// The appliance as a child process with its own dir, config and policy key.
struct Proc {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    admin: u16,
    policy_key: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Proc {
    fn new(extra_config: &str, secrets: &[(&str, &str)]) -> Proc {
        let dir = tempfile::Builder::new().prefix("e2e-audit-").tempdir().expect("tempdir");
        let (policy_key, pubkey) = appliance::policy::keygen(&dir.path().join("keys")).expect("keygen");
        let (port, admin) = (e2e::free_port(), e2e::free_port());
        let secrets_body: String = secrets.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect();
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.path().join("secrets.toml"))
                .expect("secrets");
            f.write_all(secrets_body.as_bytes()).expect("write secrets");
        }
        let config = dir.path().join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nsecrets_file = \"secrets.toml\"\n\
                 trusted_policy_keys = [{:?}]\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 policy_poll_interval = \"100ms\"\naudit_checkpoint_interval = \"500ms\"\n{extra_config}",
                pubkey.display().to_string()
            ),
        )
        .expect("config");
        std::fs::create_dir_all(dir.path().join("data/policy")).expect("policy dir");
        Proc {
            dir,
            config,
            port,
            admin,
            policy_key,
            child: None,
        }
    }

    fn install_policy(&self, text: &str) {
        let sig = appliance::policy::sign_bytes(&self.policy_key, text.as_bytes(), "policy.toml").expect("sign");
        let d = self.dir.path().join("data/policy");
        std::fs::write(d.join("policy.toml.minisig"), sig).expect("sig");
        std::fs::write(d.join("policy.toml"), text).expect("policy");
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("data/appliance.db")
    }

    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("log");
        let child = tokio::process::Command::new(e2e::bin("appliance"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("APPLIANCE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn appliance");
        self.child = Some(child);
        e2e::wait_for_port(([127, 0, 0, 1], self.admin).into(), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(15), c.wait()).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(e2e::bin("appliance"));
        cmd.args(args).arg("--config").arg(&self.config);
        e2e::run(&mut cmd, false)
    }

    fn client(&self) -> ApplianceClient {
        let out = self.cli(&["fingerprint"]);
        let fp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let trust = Trust::Pinned(parse_fingerprint(&fp).expect("fingerprint"));
        ApplianceClient::new(&format!("127.0.0.1:{}", self.port), &trust).expect("client")
    }

    fn token(&self, user: &str) -> String {
        let out = self.cli(&["token", "issue", "--user", user, "--ttl", "1h"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin)).await.expect("admin");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }
}

/// Writes `n` records into `db` from this process (a second writer: the
/// chain stays one, as with the CLI).
async fn write_records(db: &Path, tag: &str, n: usize) {
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

fn tip(db: &Path) -> i64 {
    audit::query(db, &AuditFilter { limit: Some(1), ..Default::default() })
        .expect("query")
        .last()
        .map_or(0, |r| r.seq)
}

/// Every seq once after de-duplication by id, first occurrences in order.
fn check_delivery(name: &str, got: &[serde_json::Value], through: i64) {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for v in got {
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if seen.insert(id) {
            order.push(v["seq"].as_i64().unwrap_or(-1));
        }
    }
    let expected: Vec<i64> = (1..=through).collect();
    assert_eq!(order.iter().filter(|s| **s <= through).copied().collect::<Vec<_>>(), expected, "{name}: every record once, in order");
    eprintln!("{name}: {} messages, {} unique, through seq {through}", got.len(), seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_every_record_once_across_outages_and_a_restart() {
    let mut rsyslog = Rsyslog::start().await.expect("rsyslog");
    let mut http = HttpReceiver::start().await;
    let extra = format!(
        "[[audit_sink]]\nname = \"rsyslog\"\ntype = \"syslog\"\naddress = \"{}\"\nca_file = {:?}\nserver_name = \"localhost\"\n\
         settle = \"1s\"\nbackoff_max = \"1s\"\nbatch_size = 50\n\n\
         [[audit_sink]]\nname = \"collector\"\ntype = \"http\"\nurl = \"{}\"\ntoken_secret = \"sink_token\"\nbackoff_max = \"1s\"\nbatch_size = 50\n",
        rsyslog.addr(),
        rsyslog.ca().display().to_string(),
        http.url("/ingest")
    );
    let mut app = Proc::new(&extra, &[("sink_token", "s3cret-token")]);
    app.start().await;
    write_records(&app.db(), "before", 120).await;
    let t = tip(&app.db());
    assert!(e2e::eventually(Duration::from_secs(15), || rsyslog.records().len() as i64 >= t && http.ndjson().len() as i64 >= t).await);

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
        [r, h].iter().all(|v| v.iter().filter_map(|x| x["seq"].as_i64()).collect::<HashSet<_>>().len() as i64 >= t)
    })
    .await;
    assert!(done, "not everything arrived; log:\n{}", app.log());
    check_delivery("rsyslog", &rsyslog.records(), t);
    check_delivery("http", &http.ndjson(), t);
    {
        let got = http.received.lock().expect("lock");
        assert!(got.iter().all(|r| r.headers.get("authorization").is_some_and(|v| v == "Bearer s3cret-token")));
        assert!(got.iter().all(|r| r.headers.get("content-encoding").is_some_and(|v| v == "gzip")));
    }
    // What rsyslog holds is a trusted copy: the local trail verifies against it.
    let copy = app.dir.path().join("rsyslog-copy.ndjson");
    let lines: Vec<String> = rsyslog.records().iter().map(|v| v.to_string()).collect();
    std::fs::write(&copy, lines.join("\n")).expect("copy");
    let out = app.cli(&["audit", "verify", "--checkpoint", &copy.display().to_string()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    app.stop().await;
}

/// Opens sessions through the tunnel as fast as it can from `workers` tasks
/// until `stop`; returns how many got their echo back (forwarded upstream).
async fn tunnel_load(client: ApplianceClient, token: String, target: String, workers: usize, stop: tokio_util_stop::Stop) -> u64 {
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, token, target, stop) = (client.clone(), token.clone(), target.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while !stop.is_set() {
                let Ok(mut s) = client.open_tunnel(&token, &target, 7).await else { break };
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
    let policy = policy_with(1, &tcp_connection("echo", &upstream.to_string(), &[7], &["load@example.com"], &[]))
        + &format!("\n[audit]\nmode = \"{mode}\"\n");
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
    let stored = audit::query(&app.db(), &AuditFilter { kind: Some(AuditKind::SessionStart), ..Default::default() })
        .expect("query")
        .len() as u64;
    let lost = acked.saturating_sub(stored);
    eprintln!("kill -9 in {mode} mode: {acked} sessions forwarded, {stored} session_start records on disk, {lost} lost");
    // The chain survives a kill -9 intact.
    let out = app.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    (acked, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_9_under_load_loses_nothing_forwarded_in_strict_mode() {
    let (acked, lost) = kill9_run("strict").await;
    assert!(acked > 20, "load too small: {acked}");
    assert_eq!(lost, 0, "strict mode lost records of forwarded sessions");
    let (acked, lost) = kill9_run("fast").await;
    assert!(acked > 20, "load too small: {acked}");
    assert!(lost <= 1024, "fast mode loses at most the queue (1024): {lost}");
}

fn verify_out(app: &Proc, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = app.cli(&args);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn sqlite(db: &Path, sql: &str) {
    let out = std::process::Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_deleting_and_truncating_are_detected_and_exports_verify() {
    let mut app = Proc::new("", &[]);
    app.start().await;
    write_records(&app.db(), "a", 30).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.stop().await;
    let (ok, out) = verify_out(&app, &[]);
    assert!(ok, "{out}");

    // Signed export, checked by minisign and by verify-export, in both formats.
    let pk = String::from_utf8_lossy(&app.cli(&["audit", "pubkey"]).stdout).trim().to_string();
    for fmt in ["ndjson", "csv"] {
        let file = app.dir.path().join(format!("export.{fmt}"));
        let f = file.display().to_string();
        let out = app.cli(&["audit", "export", "--since", "1h", "--format", fmt, "--out", &f]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&pk), "export prints the public key");
        let m = e2e::run(std::process::Command::new("minisign").args(["-Vm", &f, "-P", &pk]), false);
        assert!(m.status.success(), "minisign: {}", String::from_utf8_lossy(&m.stderr));
        let v = e2e::run(std::process::Command::new(e2e::bin("appliance")).args(["audit", "verify-export", &f, "--pubkey", &pk]), false);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let mut bytes = std::fs::read(&file).expect("read");
        let i = bytes.len() / 3;
        bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
        let bad = app.dir.path().join(format!("bad.{fmt}"));
        std::fs::write(&bad, &bytes).expect("write");
        std::fs::copy(audit::signature_path(&file), audit::signature_path(&bad)).expect("sig");
        let b = bad.display().to_string();
        let m = e2e::run(std::process::Command::new("minisign").args(["-Vm", &b, "-P", &pk]), false);
        assert!(!m.status.success(), "minisign accepted a changed byte");
        let v = e2e::run(std::process::Command::new(e2e::bin("appliance")).args(["audit", "verify-export", &b, "--pubkey", &pk]), false);
        assert!(!v.status.success(), "verify-export accepted a changed byte");
    }

    let db = app.db();
    let backup = app.dir.path().join("backup.db");
    std::fs::copy(&db, &backup).expect("backup");
    sqlite(&db, "UPDATE audit SET user = 'mallory@example.com' WHERE seq = 12");
    let (ok, out) = verify_out(&app, &[]);
    assert!(!ok && out.contains("record seq 12") && out.contains("modified"), "{out}");

    std::fs::copy(&backup, &db).expect("restore");
    sqlite(&db, "DELETE FROM audit WHERE seq = 17");
    let (ok, out) = verify_out(&app, &[]);
    assert!(!ok && out.contains("record seq 17 was deleted"), "{out}");

    std::fs::copy(&backup, &db).expect("restore");
    let last = tip(&db);
    sqlite(&db, &format!("DELETE FROM audit WHERE seq > {}; DELETE FROM audit_cursor;", last - 5));
    let export = app.dir.path().join("export.ndjson").display().to_string();
    let (ok, out) = verify_out(&app, &["--checkpoint", &export]);
    assert!(!ok && out.contains("truncated tail"), "{out}");
    assert!(out.contains(&format!("records seq {}..", last - 4)), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_fire_signed_webhooks_and_runbooks_and_a_hanging_webhook_delays_no_session() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = e2e::echo_upstream().await;
    let hook = HttpReceiver::start().await;
    let hang = HttpReceiver::start().await;
    hang.hang(true);
    let mut app = Proc::new("runbook_dir = \"runbooks\"\n", &[("hook_key", "whsec-123")]);
    let runbooks = app.dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).expect("runbooks");
    let seen = app.dir.path().join("runbook-seen.json");
    std::fs::write(runbooks.join("record.sh"), format!("#!/bin/sh\ncat > {}\necho recorded \"$HOOP_EVENT\"\n", seen.display())).expect("script");
    std::fs::set_permissions(runbooks.join("record.sh"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let routes = format!(
        "\n[[route]]\nname = \"hang-first\"\non = [\"session_start\"]\nactions = [{{ type = \"webhook\", url = \"{}\", timeout = \"1s\", retries = 0 }}]\n\n\
         [[route]]\nname = \"notify\"\non = [\"session_start\"]\nusers = [\"bob@example.com\"]\n\
         actions = [{{ type = \"webhook\", url = \"{}\", secret = \"hook_key\" }}, {{ type = \"command\", runbook = \"record.sh\", timeout = \"5s\" }}]\n",
        hang.url("/slow"),
        hook.url("/hook")
    );
    app.install_policy(&(policy_with(1, &tcp_connection("echo", &upstream.to_string(), &[7], &["bob@example.com"], &[])) + &routes));
    app.start().await;
    let token = app.token("bob@example.com");
    let client = app.client();
    let mut ready = false;
    for _ in 0..100 {
        ready = app.get("/readyz").await.0 == 200;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "{}", app.log());
    // Two sessions while the first route's webhook hangs: each is as fast as usual.
    for _ in 0..2 {
        let t = Instant::now();
        let mut s = client.open_tunnel(&token, "echo", 7).await.expect("tunnel");
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("echo");
        assert!(t.elapsed() < Duration::from_millis(800), "session took {:?}", t.elapsed());
    }
    assert!(e2e::eventually(Duration::from_secs(10), || hook.received.lock().expect("lock").len() >= 2).await);
    let r = hook.received.lock().expect("lock")[0].clone();
    let ts = r.headers["x-hoop-timestamp"].to_str().expect("ts").to_string();
    let sig = r.headers["x-hoop-signature"].to_str().expect("sig").to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec-123");
    let mut msg = ts.into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(&r.body);
    let mac = ring::hmac::sign(&key, &msg);
    let hex: String = mac.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sig, format!("sha256={hex}"), "the receiver verifies the HMAC");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(body["event"], "session_start");
    assert_eq!(body["route"], "notify");
    assert_eq!(body["record"]["user"], "bob@example.com");
    assert_eq!(body["record"]["connection"], "echo");
    // The runbook got the same event on stdin; its output is in the audit.
    assert!(e2e::eventually(Duration::from_secs(10), || std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("session_start"))).await);
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&seen).expect("seen")).expect("json");
    assert_eq!(got["record"]["user"], "bob@example.com");
    let actions = || audit::query(&app.db(), &AuditFilter { kind: Some(AuditKind::EventAction), ..Default::default() }).unwrap_or_default();
    assert!(e2e::eventually(Duration::from_secs(10), || actions().len() >= 6).await, "{:?}", actions());
    let all = actions();
    assert!(all.iter().any(|a| a.record.detail.as_ref().is_some_and(|d| d["action"] == "command" && d["stdout"] == "recorded session_start\n")));
    assert!(all.iter().any(|a| a.record.outcome.as_deref() == Some("error") && a.record.reason.as_deref().is_some_and(|r| r.contains("timed out"))));
    // The dry run shows the same plan.
    let sample = app.dir.path().join("event.json");
    std::fs::write(&sample, body["record"].to_string()).expect("sample");
    let out = app.cli(&["events", "test", "--event", &sample.display().to_string()]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dry run json");
    assert_eq!(plan["routes_matched"], 2, "{plan}");

    // /metrics parses and has what operators need; health endpoints answer.
    let (code, text) = app.get("/metrics").await;
    assert_eq!(code, 200);
    let m = parse_prometheus(&text).expect("prometheus text");
    for family in [
        "appliance_sessions_started_total",
        "appliance_statements_total",
        "appliance_denials_total",
        "appliance_holds_total",
        "appliance_audit_queue_depth",
        "appliance_audit_sink_lag_records",
        "appliance_event_action_failures_total",
        "appliance_bytes_up_total",
    ] {
        assert!(m.contains_key(family), "{family} missing");
    }
    let started = &m["appliance_sessions_started_total"];
    assert!(started.iter().any(|(l, v)| l.get("kind").is_some_and(|k| k == "tcp") && *v == 2.0), "{started:?}");
    let failures = &m["appliance_event_action_failures_total"];
    assert!(failures.iter().any(|(l, v)| l.get("action").is_some_and(|a| a == "webhook") && *v >= 1.0));
    assert_eq!(app.get("/healthz").await.0, 200);
    app.stop().await;
}

type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// A strict parser of the Prometheus text format (0.0.4): every sample
/// belongs to a family declared by one `# TYPE` before it, names and label
/// names are valid, label values are properly quoted and escaped, values
/// parse as floats.
fn parse_prometheus(text: &str) -> Result<Samples, String> {
    let valid_name = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Samples::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    if !valid_name(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return bad("bad TYPE");
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return bad("TYPE declared twice");
                    }
                    // A family may have no samples yet.
                    out.entry(name.to_string()).or_default();
                }
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                _ => return bad("bad comment"),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return bad("no value"),
        };
        if !valid_name(name) {
            return bad("bad metric name");
        }
        if !types.contains_key(name) {
            return bad("sample before its TYPE");
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let start = match chars.peek() {
                    Some((_, '}')) => {
                        end = chars.next().map(|(i, _)| i);
                        break;
                    }
                    Some((i, _)) => *i,
                    None => return bad("unterminated labels"),
                };
                let eq = r[start..].find('=').map(|i| i + start).ok_or("label without =")?;
                let lname = &r[start..eq];
                if !valid_name(lname) || lname.contains(':') {
                    return bad("bad label name");
                }
                if r.as_bytes().get(eq + 1) != Some(&b'"') {
                    return bad("label value not quoted");
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => return bad("bad escape"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return bad("unterminated label value"),
                    }
                }
                labels.insert(lname.to_string(), value);
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return bad("expected , or }"),
                }
            }
            rest = &r[end.ok_or("no }")? + 1..];
        }
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value: f64 = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v.parse().map_err(|_| format!("line {}: bad value {v:?}", n + 1))?,
            None => return bad("no value"),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| format!("line {}: bad timestamp", n + 1))?;
        }
        if types[name] == "counter" && !name.ends_with("_total") {
            return bad("counter not named *_total");
        }
        out.entry(name.to_string()).or_default().push((labels, value));
    }
    Ok(out)
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
    assert!(e2e::eventually(Duration::from_secs(120), || rsyslog.records().len() as i64 >= t - 5).await);
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(rsyslog.dir.path().join("out.log")).map(|m| m.len()).unwrap_or(0);
    eprintln!("shipping to rsyslog (TLS): {t} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s of message bodies", t as f64 / secs, bytes as f64 / secs / 1e6);
    app.stop().await;
}
