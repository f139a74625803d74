//! Upstream failures with their reasons (down, slow), and HTTPS upstreams
//! verified with the policy's CA file and SNI, HTTP/2 by ALPN or not.

use std::time::{Duration, Instant};

use e2e::unique_name;

use e2e::http_upstream::{Nginx, UpstreamApp, NGINX_TLS_NAME};

use super::{curl, http_connection, http_records, json, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_timeouts_and_https_h2() {
    let upstream = UpstreamApp::start().await;
    let nginx = Nginx::start(None).await;
    let closed = format!("127.0.0.1:{}", e2e::free_port());
    let [down, slow, h2, h1, untrusted] =
        ["down", "slow", "tls-h2", "tls-h1", "tls-bad"].map(unique_name);
    let tls = |extra: &str| {
        format!(
            "[connection.http]\nscheme = \"https\"\nca_file = {:?}\nsni = {NGINX_TLS_NAME:?}\n{extra}",
            nginx.ca_pem.display().to_string()
        )
    };
    let tls_at = nginx.tls_addr.to_string();
    let conns = http_connection(&down, &closed, &["dee"], "")
        + &http_connection(
            &slow,
            &upstream.addr.to_string(),
            &["dee"],
            "[connection.http]\nresponse_header_timeout = \"1s\"",
        )
        + &http_connection(&h2, &tls_at, &["dee"], &tls(""))
        + &http_connection(&h1, &tls_at, &["dee"], &tls("http2 = false"))
        + &http_connection(
            &untrusted,
            &tls_at,
            &["dee"],
            &format!("[connection.http]\nscheme = \"https\"\nsni = {NGINX_TLS_NAME:?}"),
        );
    let (app, tl, at) = start(&conns, "dee", &[&down, &slow, &h2, &h1, &untrusted]).await;

    // Upstream down: 502 with the reason, text or JSON.
    let r = curl(at[&down], &down, "/", &[]);
    assert_eq!(r.status, 502);
    assert!(
        r.body
            .contains(&format!("the upstream of \"{down}\" is unreachable"))
            && r.body.contains("refused"),
        "{}",
        r.body
    );
    let r = curl(at[&down], &down, "/", &["-H", "Accept: application/json"]);
    assert_eq!(json(&r)["error"], "upstream_unreachable");

    // Slow upstream: 504 naming the limit after about 1 s; faster ones pass.
    let t = Instant::now();
    let r = curl(at[&slow], &slow, "/slow?ms=5000", &[]);
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("response_header_timeout"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let r = curl(at[&slow], &slow, "/slow?ms=100", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "slow but here\n"));

    // HTTPS upstream verified with the policy's CA file and SNI; HTTP/2 by ALPN.
    let r = curl(at[&h2], &h2, "/protocol", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "HTTP/2.0\n"),
        "{}",
        r.stderr
    );
    let r = curl(at[&h2], &h2, "/files/small.txt", &[]);
    assert_eq!(r.body, "hello from nginx\n");
    let r = curl(at[&h1], &h1, "/protocol", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "HTTP/1.1\n"));
    let r = curl(at[&untrusted], &untrusted, "/protocol", &[]);
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("TLS with the upstream") && r.body.contains("UnknownIssuer"),
        "{}",
        r.body
    );

    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let recs = http_records(&app, &h2).await;
    assert!(recs.iter().any(|r| r
        .record
        .detail
        .as_ref()
        .is_some_and(|d| d["upstream_version"] == "HTTP/2")));
    let recs = http_records(&app, &slow).await;
    assert!(recs
        .iter()
        .any(|r| r.record.outcome.as_deref() == Some("upstream_timeout")));
    tl.stop().await;
    app.stop().await;
    nginx.stop().await;
}
