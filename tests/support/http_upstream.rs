//! HTTP upstreams for the HTTP gateway tests: a small hyper app (in-process,
//! 127.0.0.1:0) that echoes what it received and streams bodies both ways,
//! and a real nginx (Debian `nginx`, a child process killed on drop) serving
//! static files over HTTP/1.1 and, with a throw-away CA, HTTPS + HTTP/2.
//!
//! App routes:
//! - any method `/echo/...`: JSON {method, path, query, version, headers,
//!   body_bytes, body_sha256}; the body is hashed as it streams in, and
//!   credential headers ([`SENSITIVE`]) are reported as `sha256:<hex>`
//! - `GET /download?bytes=N`: N bytes of [`pattern`], streamed in 64 KiB chunks
//! - `GET /slow?ms=N`: waits N ms before the response head
//! - `GET /drip?chunks=N&ms=M`: N small chunks, M ms apart
//! - `GET /ws`: WebSocket echo (text and binary)

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The in-process test app.
pub struct UpstreamApp {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpstreamApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpstreamApp {
    pub async fn start() -> UpstreamApp {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let addr = l.local_addr().expect("app addr");
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(route(req).await)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        UpstreamApp {
            addr,
            connections,
            task,
        }
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(body.into()).boxed())
        .expect("response")
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn route(req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/download" => {
            let n = query_param(&req, "bytes").unwrap_or(0);
            let stream = futures_util::stream::unfold(0u64, move |sent| async move {
                if sent >= n {
                    return None;
                }
                let len = (n - sent).min(CHUNK as u64) as usize;
                let chunk = Bytes::from(pattern_chunk(sent, len));
                Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + len as u64))
            });
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response")
        }
        "/slow" => {
            let ms = query_param(&req, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "text/plain", "slow but here\n")
        }
        "/drip" => {
            let chunks = query_param(&req, "chunks").unwrap_or(10);
            let ms = query_param(&req, "ms").unwrap_or(100);
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("drop {i}\n")))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/ws" => websocket(req).await,
        p if p.starts_with("/echo") => echo(req).await,
        _ => full(StatusCode::NOT_FOUND, "text/plain", "no such route\n"),
    }
}

async fn echo(req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, mut body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        // Credentials are reported as hashes, so the test can check what
        // arrived without the app echoing a secret back to the client.
        let shown = if SENSITIVE.contains(&k.as_str()) {
            format!("sha256:{}", sha256_hex(v.as_bytes()))
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(shown);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return full(StatusCode::BAD_REQUEST, "text/plain", "body broke off\n");
        };
        if let Some(d) = frame.data_ref() {
            ctx.update(d);
            n += d.len() as u64;
        }
    }
    let v = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": n,
        "body_sha256": hex(ctx.finish().as_ref()),
    });
    full(StatusCode::OK, "application/json", v.to_string())
}

async fn websocket(mut req: Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, "text/plain", "not a websocket\n");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(http_body_util::Empty::new().boxed())
        .expect("response")
}

const CHUNK: usize = 64 * 1024;

/// `len` bytes of the deterministic test pattern starting at `offset`: 64 KiB
/// blocks of one pseudo-random block, each tagged with its index in its
/// first 8 bytes (cheap to generate, and a misplaced block changes the hash).
pub fn pattern_chunk(offset: u64, len: usize) -> Vec<u8> {
    let base = base_block();
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    while out.len() < len {
        let block = pos / CHUNK as u64;
        let within = (pos % CHUNK as u64) as usize;
        let take = (CHUNK - within).min(len - out.len());
        let start = out.len();
        out.extend_from_slice(&base[within..within + take]);
        let tag = block.to_be_bytes();
        for (i, t) in tag.iter().enumerate() {
            if i >= within && i < within + take {
                out[start + i - within] = *t;
            }
        }
        pos += take as u64;
    }
    out
}

fn base_block() -> &'static [u8] {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Writes `n` pattern bytes to `path` (streamed); returns their SHA-256 (hex).
pub fn write_pattern_file(path: &Path, n: u64) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create file"));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut off = 0;
    while off < n {
        let len = (n - off).min(CHUNK as u64) as usize;
        let c = pattern_chunk(off, len);
        ctx.update(&c);
        f.write_all(&c).expect("write file");
        off += len as u64;
    }
    f.flush().expect("flush file");
    hex(ctx.finish().as_ref())
}

/// SHA-256 (hex) of the first `n` pattern bytes.
pub fn pattern_sha256(n: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut off = 0;
    while off < n {
        let len = (n - off).min(CHUNK as u64) as usize;
        ctx.update(&pattern_chunk(off, len));
        off += len as u64;
    }
    hex(ctx.finish().as_ref())
}

/// SHA-256 (hex) of a file, read in chunks.
pub fn file_sha256(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open file");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).expect("read file");
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex(ctx.finish().as_ref())
}

/// Headers the echo route reports as `sha256:<hex>` instead of their value.
pub const SENSITIVE: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// SHA-256 (hex) of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real nginx: plain HTTP on `addr`, HTTPS (+HTTP/2) on `tls_addr` with a
/// certificate for `nginx.test` issued by a throw-away CA (`ca_pem`).
pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    /// The CA certificate (PEM file) that issued the HTTPS certificate.
    pub ca_pem: PathBuf,
    /// Static files served at `/files/`.
    pub www: PathBuf,
    child: tokio::process::Child,
}

/// The name in nginx's HTTPS certificate.
pub const NGINX_TLS_NAME: &str = "nginx.test";

impl Nginx {
    /// Starts nginx; `/proxy/` reverse-proxies (keep-alive) to `proxy_to`,
    /// or to this nginx itself when `None` (`/proxy/small` -> `/small`).
    /// Panics (the test fails) when nginx is not installed.
    pub async fn start(proxy_to: Option<SocketAddr>) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("e2e-nginx-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let www = d.join("www");
        std::fs::create_dir_all(www.join("files")).expect("www");
        std::fs::write(www.join("files/small.txt"), "hello from nginx\n").expect("file");
        let ca_pem = d.join("ca.pem");
        write_tls_files(d, &ca_pem);
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        let tls_addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        let user = if crate::is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
daemon off;
# One process: killing it (kill_on_drop) leaves no orphaned worker behind.
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    keepalive_requests 10000;
    upstream app {{ server {proxy_to_or_self}; keepalive 32; }}
    server {{
        listen {addr};
        root {www};
        location = /small {{ default_type text/plain; return 200 "hello\n"; }}
        location = /protocol {{ default_type text/plain; return 200 "$server_protocol\n"; }}
        location /proxy/ {{ proxy_pass http://app/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
    server {{
        listen {tls_addr} ssl http2;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {www};
        location = /protocol {{ default_type text/plain; return 200 "$server_protocol\n"; }}
    }}
}}
"#,
            d = d.display(),
            www = www.display(),
            proxy_to_or_self = proxy_to.unwrap_or(addr),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nginx ({e}); install it: apt-get install -y nginx")
            });
        let nginx = Nginx {
            addr,
            tls_addr,
            ca_pem,
            www,
            child,
            dir,
        };
        for at in [addr, tls_addr] {
            if crate::wait_for_port(at, Duration::from_secs(10))
                .await
                .is_err()
            {
                let log =
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx did not listen on {at}:\n{log}");
            }
        }
        nginx
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A CA (written to `ca_pem`) and a certificate for [`NGINX_TLS_NAME`]
/// (`cert.pem`, `key.pem` in `dir`).
fn write_tls_files(dir: &Path, ca_pem: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2e test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("leaf key");
    let params = CertificateParams::new(vec![NGINX_TLS_NAME.to_string()]).expect("leaf params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("leaf cert");
    std::fs::write(ca_pem, ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key.pem");
}
