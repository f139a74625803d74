//! The spare tunnel connection (tunnel_lite::spare): handshaken ahead of the
//! next tunnel, closed quietly when unused, replaced when the network broke it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance::audit::AuditKind;
use e2e::appliance::{policy_with, tcp_connection, ApplianceFixture};
use e2e::eventually;
use e2e::tunnel::TunnelLite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_lite::client::ApplianceClient;
use tunnel_lite::spare::SPARE_MAX_AGE;
use tunnel_lite::tls::{parse_fingerprint, Trust};

const HOUR: Duration = Duration::from_secs(3600);

/// Established TCP connections whose remote end is `port` on this machine,
/// from /proc/net/tcp (no `ss` needed).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && cols.get(3) == Some(&"01")
        })
        .count()
}

async fn echo(addr: SocketAddr, msg: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

/// An appliance with one tcp connection `echo` (port 7, an echo upstream) for `user`.
async fn echo_appliance(user: &str) -> ApplianceFixture {
    let upstream = e2e::echo_upstream().await;
    ApplianceFixture::start(&policy_with(
        1,
        &tcp_connection("echo", &upstream.to_string(), &[7], &[user], &[]),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_is_ready_for_the_next_connection_and_closes_quietly_when_unused() {
    let app = echo_appliance("sam").await;
    let tl = TunnelLite::start(&app, &app.token("sam", &[], HOUR)).await;
    let at = tl.wait_listening("echo", 7).await;
    // Let the spare made after wait_listening's probe expire first.
    assert!(eventually(SPARE_MAX_AGE * 3, || established_to(app.addr.port()) == 0).await);

    echo(at, b"first").await;
    // No tunnel is open now, yet tunnel-lite holds one handshaken connection.
    assert!(
        eventually(Duration::from_millis(900), || app.live_sessions() == 0
            && established_to(app.addr.port()) == 1)
        .await,
        "no spare connection after a tunnel opened"
    );
    // The next connection carries its header on it, and a new spare follows.
    echo(at, b"second").await;
    assert!(
        eventually(Duration::from_millis(900), || app.live_sessions() == 0
            && established_to(app.addr.port()) == 1)
        .await
    );
    // Unused, it is closed at its age, long before the appliance's header deadline.
    assert!(
        eventually(SPARE_MAX_AGE * 2, || established_to(app.addr.port()) == 0).await,
        "the spare outlived {SPARE_MAX_AGE:?}"
    );
    // The appliance saw quiet closes: two sessions, no refusals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.audit(Some(AuditKind::TunnelRefused)).await.is_empty());
    assert_eq!(
        app.audit(Some(AuditKind::SessionStart))
            .await
            .iter()
            .filter(|r| r.record.user.as_deref() == Some("sam"))
            .count(),
        3, // wait_listening's probe and the two echoes
    );
    tl.stop().await;
    app.stop().await;
}

/// A loopback TCP relay the test can cut, like a NAT dropping idle flows.
struct Cuttable {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    flows: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn start(to: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let flows: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (a, f) = (accepted.clone(), flows.clone());
        let accept_task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let flow = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                f.lock().unwrap().push(flow.abort_handle());
            }
        });
        Cuttable {
            addr,
            accepted,
            flows,
            accept_task,
        }
    }

    /// Closes every relayed connection.
    fn cut(&self) {
        for flow in self.flows.lock().unwrap().drain(..) {
            flow.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_the_network_broke_is_replaced_by_a_fresh_connection() {
    let app = echo_appliance("tess").await;
    let relay = Cuttable::start(app.addr).await;
    let trust = Trust::Pinned(parse_fingerprint(&app.fingerprint).unwrap());
    let client = ApplianceClient::new(&relay.addr.to_string(), &trust)
        .unwrap()
        .with_spare();
    let token = app.token("tess", &[], HOUR);

    let mut first = client.open_tunnel(&token, "echo", 7).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    first.read_exact(&mut buf).await.unwrap();
    drop(first);
    assert!(
        eventually(Duration::from_millis(900), || client.has_spare()).await,
        "no spare connection was made"
    );
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 2);
    // The network drops every flow; the spare's socket sees the close.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut second = client
        .open_tunnel(&token, "echo", 7)
        .await
        .expect("a broken spare must not fail the connection");
    second.write_all(b"two").await.unwrap();
    second.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    // The stored spare was found closed and a fresh connection made (the
    // next spare, if already under way, is the fourth).
    assert!(relay.accepted.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        app.audit(Some(AuditKind::SessionStart)).await.len(),
        2,
        "the broken spare admitted nothing"
    );
    drop(second);
    relay.accept_task.abort();
    relay.cut();
    app.stop().await;
}
