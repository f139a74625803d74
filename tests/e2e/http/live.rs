//! Live sessions: a WebSocket echo round trip with a real client library,
//! then revocation closing a keep-alive connection, a WebSocket and a
//! streaming response within a second.

use std::time::{Duration, Instant};

use appliance::audit::AuditKind;
use e2e::unique_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use e2e::http_upstream::{self, UpstreamApp};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{closed, http_connection, read_response, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_revocation() {
    let upstream = UpstreamApp::start().await;
    let name = unique_name("ws");
    let conns = http_connection(&name, &upstream.addr.to_string(), &["erin"], "");
    let (app, tl, at) = start(&conns, "erin", &[&name]).await;
    let at = at[&name];

    // A WebSocket echo round trip with a real client library.
    let url = format!("ws://{name}.hoop/ws");
    let (mut ws, resp) = tokio_tungstenite::client_async(
        url.as_str(),
        TcpStream::connect(at).await.expect("connect"),
    )
    .await
    .expect("websocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello over the tunnel"))
        .await
        .expect("send");
    let got = ws.next().await.expect("a message").expect("ok");
    assert_eq!(
        got.into_text().expect("text").as_str(),
        "hello over the tunnel"
    );
    let blob = http_upstream::pattern_chunk(0, 100_000);
    ws.send(Message::binary(blob.clone())).await.expect("send");
    let got = ws.next().await.expect("a message").expect("ok");
    assert_eq!(got.into_data().as_ref(), blob.as_slice());
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    drop(ws);
    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let ends = app.audit(Some(AuditKind::WebsocketEnd)).await;
    assert_eq!(ends.len(), 1, "{ends:#?}");
    assert!(ends[0].record.bytes_up.unwrap_or(0) > 100_000);
    assert!(ends[0].record.bytes_down.unwrap_or(0) > 100_000);
    assert_eq!(app.audit(Some(AuditKind::WebsocketStart)).await.len(), 1);

    // Live sessions: an idle keep-alive connection, a WebSocket, a streaming response.
    let mut idle = TcpStream::connect(at).await.expect("connect");
    idle.write_all(b"GET /echo/ka HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut ws, _) = tokio_tungstenite::client_async(
        url.as_str(),
        TcpStream::connect(at).await.expect("connect"),
    )
    .await
    .expect("websocket");
    ws.send(Message::text("still here")).await.expect("send");
    assert!(ws.next().await.expect("echo").is_ok());
    let mut drip = TcpStream::connect(at).await.expect("connect");
    drip.write_all(b"GET /drip?chunks=600&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 64];
    let n = drip.read(&mut first).await.expect("first bytes");
    assert!(n > 0);

    let started = Instant::now();
    let out = app.cli(&["revoke", "--user", "erin", "--reason", "left the company"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    closed(&mut idle)
        .await
        .expect("keep-alive connection still open 3 s after the revocation");
    closed(&mut drip)
        .await
        .expect("streaming response still open 3 s after the revocation");
    let ws_end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    ws_end
        .await
        .expect("WebSocket still open 3 s after the revocation");
    let elapsed = started.elapsed();
    // The CLI process itself takes part of this; the bound is the requirement's.
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed after {elapsed:?}"
    );

    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let revoked = app
        .audit(Some(AuditKind::SessionEnd))
        .await
        .into_iter()
        .filter(|r| r.record.reason.as_deref() == Some("identity revoked"))
        .count();
    assert_eq!(revoked, 3);
    let ends = app.audit(Some(AuditKind::WebsocketEnd)).await;
    assert!(
        ends.iter()
            .any(|r| r.record.reason.as_deref() == Some("closed by the appliance")),
        "{ends:#?}"
    );
    tl.stop().await;
    app.stop().await;
}
