//! Keep-alive (1,000 requests on one connection), HTTP/1.0, malformed
//! requests, the header-size limit and the idle timeout, against nginx.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use appliance::audit::AuditKind;
use e2e::unique_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use e2e::http_upstream::Nginx;

use super::{closed, curl, http_connection, http_records, read_response, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_http10_malformed_and_limits() {
    let nginx = Nginx::start(None).await;
    let name = unique_name("ngx");
    let conns = http_connection(
        &name,
        &nginx.addr.to_string(),
        &["cy"],
        "[connection.http]\nmax_header_bytes = 8192\nidle_timeout = \"1s\"",
    );
    let (app, tl, at) = start(&conns, "cy", &[&name]).await;
    let at = at[&name];

    // 1,000 requests on one keep-alive connection.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("curl.cfg");
    let one = format!("url = \"http://{name}.hoop/small\"\noutput = \"/dev/null\"\n");
    std::fs::write(&cfg, one.repeat(1000)).expect("curl config");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-w",
            "%{num_connects} %{http_code}\n",
        ])
        .arg("--resolve")
        .arg(format!("{name}.hoop:80:{}", at.ip()))
        .arg("-K")
        .arg(&cfg)
        .output()
        .expect("curl");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        1000,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines.iter().all(|l| l.ends_with(" 200")), "{lines:?}");
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split(' ').next()?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "curl opened {connects} connections");

    // HTTP/1.0, from curl and by hand (no keep-alive: closed after the body).
    let r = curl(at, &name, "/small", &["--http1.0"]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello\n"));
    let mut s = TcpStream::connect(at).await.expect("connect");
    s.write_all(b"GET /small HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("closed after an HTTP/1.0 response")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with("hello\n"),
        "{text}"
    );

    // Malformed requests get a 400 and the connection closes; the gateway keeps serving.
    for bad in [
        &b"GET / HTTP/1.1\r\nHost x\r\n\r\n"[..],
        b"\x16\x03\x01\x00garbage\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(at).await.expect("connect");
        s.write_all(bad).await.expect("write");
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = curl(at, &name, "/small", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello\n"));

    // Headers over max_header_bytes: 431 with a body naming the limit.
    let big = format!("X-Big: {}", "a".repeat(10_000));
    let r = curl(at, &name, "/small", &["-H", &big]);
    assert_eq!(r.status, 431);
    assert!(
        r.body.contains("max_header_bytes") && r.body.contains("8192"),
        "{}",
        r.body
    );

    // An idle keep-alive connection is closed after idle_timeout.
    let mut s = TcpStream::connect(at).await.expect("connect");
    s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = read_response(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == b"hello\n",
        "{head}"
    );
    let t = Instant::now();
    closed(&mut s)
        .await
        .expect("idle connection still open after 3 s");
    assert!(
        t.elapsed() > Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // The 1,000 requests are audited in one session; the malformed ones too.
    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let recs = http_records(&app, &name).await;
    let mut per_session: HashMap<String, usize> = HashMap::new();
    for r in &recs {
        *per_session
            .entry(r.record.session_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert!(per_session.values().any(|&n| n == 1000), "{per_session:?}");
    assert!(
        recs.iter()
            .filter(|r| r.record.outcome.as_deref() == Some("malformed"))
            .count()
            >= 3,
        "malformed requests not audited"
    );
    let ends = app.audit(Some(AuditKind::SessionEnd)).await;
    assert!(
        ends.iter()
            .any(|r| r.record.reason.as_deref() == Some("idle for 1s (idle_timeout)")),
        "{ends:#?}"
    );
    tl.stop().await;
    app.stop().await;
    nginx.stop().await;
}
