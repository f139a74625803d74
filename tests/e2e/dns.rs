//! tunnel-lite's DNS responder against the real `dig` (Debian dnsutils), over UDP and
//! TCP. `dig` missing is a failure, not a skip: CI installs it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tunnel_lite::dns::{self, DnsTable};

const DIG: &str = "/usr/bin/dig";

fn table() -> DnsTable {
    DnsTable {
        suffix: "hoop".into(),
        names: [
            ("pg-prod".to_string(), Ipv4Addr::new(127, 77, 1, 10)),
            ("web-1".to_string(), Ipv4Addr::new(127, 77, 2, 20)),
        ]
        .into_iter()
        .collect(),
    }
}

/// A responder on a free port of 127.0.0.1, stopped on drop.
struct Responder {
    addr: SocketAddr,
    table: watch::Sender<DnsTable>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Responder {
    async fn udp() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("udp addr");
        let (table, rx) = watch::channel(table());
        let task = tokio::spawn(dns::serve_udp(socket, rx));
        Self { addr, table, task }
    }

    async fn tcp() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let addr = listener.local_addr().expect("tcp addr");
        let (table, rx) = watch::channel(table());
        let task = tokio::spawn(dns::serve_tcp(listener, rx));
        Self { addr, table, task }
    }

    /// Runs `dig @127.0.0.1 -p PORT +tries=1 +time=2 ARGS...` and returns its stdout.
    async fn dig(&self, args: &[&str]) -> String {
        let output = Command::new(DIG)
            .arg("@127.0.0.1")
            .args(["-p", &self.addr.port().to_string(), "+tries=1", "+time=2"])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{DIG} must be installed (Debian: dnsutils): {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "dig {args:?} failed: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!self.task.is_finished(), "responder stopped");
        stdout
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `status:` of a full dig answer, with the section counts.
fn status_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("status:"))
        .unwrap_or_else(|| panic!("no status line in:\n{out}"))
}

/// A query (RD set, class IN) with the given raw name bytes.
fn raw_query(id: u16, name_wire: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(name_wire);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

#[tokio::test]
async fn dig_a_record() {
    let r = Responder::udp().await;
    assert_eq!(
        r.dig(&["pg-prod.hoop", "A", "+short"]).await,
        "127.77.1.10\n"
    );
    assert_eq!(
        r.dig(&["web-1.hoop.", "A", "+short"]).await,
        "127.77.2.20\n"
    );
    let full = r.dig(&["pg-prod.hoop", "A"]).await;
    assert!(status_line(&full).contains("status: NOERROR"), "{full}");
    assert!(
        full.contains("flags: qr aa rd;"),
        "authoritative, no RA:\n{full}"
    );
    assert!(
        full.contains("pg-prod.hoop.\t\t5\tIN\tA\t127.77.1.10"),
        "{full}"
    );
}

#[tokio::test]
async fn dig_aaaa_is_nodata() {
    let r = Responder::udp().await;
    let out = r.dig(&["pg-prod.hoop", "AAAA"]).await;
    assert!(status_line(&out).contains("status: NOERROR"), "{out}");
    assert!(out.contains("ANSWER: 0, AUTHORITY: 1"), "{out}");
    assert!(
        out.contains("hoop.\t\t\t5\tIN\tSOA\tlocalhost. hostmaster.hoop."),
        "{out}"
    );
    assert_eq!(r.dig(&["pg-prod.hoop", "AAAA", "+short"]).await, "");
}

#[tokio::test]
async fn dig_unknown_name_is_nxdomain() {
    let r = Responder::udp().await;
    let out = r.dig(&["nothere.hoop", "A"]).await;
    assert!(status_line(&out).contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("ANSWER: 0, AUTHORITY: 1"), "{out}");
}

#[tokio::test]
async fn dig_outside_suffix_is_refused() {
    let r = Responder::udp().await;
    let out = r.dig(&["example.com", "A"]).await;
    assert!(status_line(&out).contains("status: REFUSED"), "{out}");
}

#[tokio::test]
async fn dig_uppercase_name() {
    let r = Responder::udp().await;
    assert_eq!(
        r.dig(&["PG-PROD.HOOP", "A", "+short"]).await,
        "127.77.1.10\n"
    );
    assert_eq!(r.dig(&["Web-1.Hoop", "A", "+short"]).await, "127.77.2.20\n");
}

#[tokio::test]
async fn dig_sees_table_updates() {
    let r = Responder::udp().await;
    assert!(status_line(&r.dig(&["grafana.hoop"]).await).contains("NXDOMAIN"));
    r.table.send_modify(|t| {
        t.names
            .insert("grafana".into(), Ipv4Addr::new(127, 77, 3, 30));
    });
    assert_eq!(r.dig(&["grafana.hoop", "+short"]).await, "127.77.3.30\n");
}

#[tokio::test]
async fn malformed_datagrams_do_not_stop_the_responder() {
    let r = Responder::udp().await;
    let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind raw");
    raw.connect(r.addr).await.expect("connect raw");

    let garbage: Vec<u8> = (0u8..200)
        .map(|i| i.wrapping_mul(97).wrapping_add(13))
        .collect();
    let truncated_header = [0x12, 0x34, 0x01, 0x00, 0x00];
    // Five 63-byte labels: a 321-byte name, over the 255-byte limit.
    let mut huge = Vec::new();
    for _ in 0..5 {
        huge.push(63);
        huge.extend_from_slice(&[b'a'; 63]);
    }
    huge.extend_from_slice(b"\x04hoop\x00");
    let huge_name = raw_query(0x4242, &huge, 1);
    // A label length with the reserved high bits (0xff) and a compression loop.
    let bad_label = raw_query(0x4343, b"\xff\x00", 1);
    let pointer_loop = raw_query(0x4444, b"\xc0\x0c", 1);

    let packets: [&[u8]; 6] = [
        &garbage,
        &truncated_header,
        &[],
        &huge_name,
        &bad_label,
        &pointer_loop,
    ];
    for packet in packets {
        raw.send(packet).await.expect("send malformed");
    }
    // The huge name gets FORMERR with its id, and the responder answers dig afterwards.
    let mut buf = [0u8; 512];
    let mut formerr_for_huge = false;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), raw.recv(&mut buf)).await
    {
        let reply = &buf[..n];
        if reply.len() >= 12 && reply[..2] == [0x42, 0x42] {
            formerr_for_huge = reply[3] & 0x0f == 1;
        }
    }
    assert!(formerr_for_huge, "no FORMERR for the over-long name");
    assert_eq!(
        r.dig(&["pg-prod.hoop", "A", "+short"]).await,
        "127.77.1.10\n"
    );
}

#[tokio::test]
async fn dig_over_tcp() {
    let r = Responder::tcp().await;
    assert_eq!(
        r.dig(&["+tcp", "pg-prod.hoop", "A", "+short"]).await,
        "127.77.1.10\n"
    );
    let out = r.dig(&["+tcp", "nothere.hoop", "A"]).await;
    assert!(status_line(&out).contains("status: NXDOMAIN"), "{out}");
    // Two queries on one kept-open connection.
    let both = r
        .dig(&["+tcp", "+keepopen", "+short", "pg-prod.hoop", "web-1.hoop"])
        .await;
    assert_eq!(both, "127.77.1.10\n127.77.2.20\n");
}

#[tokio::test]
async fn broken_tcp_clients_do_not_stop_the_responder() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Responder::tcp().await;
    // A frame too short to hold a header: the server closes that connection.
    let mut short = TcpStream::connect(r.addr).await.expect("connect");
    short.write_all(&[0, 3, 1, 2, 3]).await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), short.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "expected a close, got {read:?} {rest:?}"
    );
    // A client that announces 65535 bytes and sends 10, then goes quiet; and one that
    // connects and says nothing. Neither blocks others.
    let mut stalled = TcpStream::connect(r.addr).await.expect("connect");
    stalled
        .write_all(&[0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .await
        .expect("write");
    let _idle = TcpStream::connect(r.addr).await.expect("connect");
    assert_eq!(
        r.dig(&["+tcp", "web-1.hoop", "+short"]).await,
        "127.77.2.20\n"
    );
}
