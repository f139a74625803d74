//! Receivers for the audit trail: a real rsyslog (Debian's `rsyslogd`, imtcp
//! with the gtls driver, a CA and server certificate made with `openssl`)
//! writing every message body into a file, and an in-process HTTP receiver
//! (NDJSON batches, gzip, bearer token; also used for webhooks, with a
//! "hang" mode that accepts and never answers). Each can be stopped and
//! started again on the same port to simulate an outage. Children are
//! killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A CA and a `localhost`/127.0.0.1 server certificate signed by it.
pub fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let d = dir.display();
    let script = format!(
        "set -e; cd {d}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=e2e test CA'
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out srv.csr -subj '/CN=localhost'
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf"
    );
    let out = Command::new("sh").arg("-c").arg(script).output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// rsyslogd receiving RFC 5425 (octet counting) over TLS into `out.log`,
/// one message body (the record's JSON) per line.
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub async fn start() -> anyhow::Result<Rsyslog> {
        let dir = tempfile::Builder::new().prefix("e2e-rsyslog-").tempdir()?;
        make_certs(dir.path())?;
        let port = crate::free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("rsyslog.conf"),
            format!(
                r#"global(workDirectory="{d}" maxMessageSize="256k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{d}/ca.pem"
  DefaultNetstreamDriverCertFile="{d}/cert.pem"
  DefaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="body" type="string" string="%msg%\n")
action(type="omfile" file="{d}/out.log" template="body" flushOnTXEnd="on" asyncWriting="off")
"#
            ),
        )?;
        let mut r = Rsyslog {
            dir,
            port,
            child: None,
        };
        r.resume().await?;
        Ok(r)
    }

    /// The CA that signed the server certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                anyhow::anyhow!("rsyslogd is not installed (rsyslog, rsyslog-gnutls)")
            })?;
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rsyslogd.log"))?;
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        crate::wait_for_port(([127, 0, 0, 1], self.port).into(), Duration::from_secs(10)).await
    }

    /// Stops it gracefully (SIGTERM, so it flushes), waiting for the exit.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Every line received so far, parsed as JSON (non-JSON lines skipped).
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("out.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request the HTTP receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    /// The body, gunzipped when `Content-Encoding: gzip`.
    pub body: Vec<u8>,
}

/// An HTTP receiver on 127.0.0.1: answers 200 (or hangs, in hang mode),
/// keeps every request.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    hang: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpReceiver {
    pub async fn start() -> HttpReceiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = l.local_addr().expect("addr");
        let mut r = HttpReceiver {
            addr,
            received: Arc::default(),
            hang: Arc::default(),
            task: None,
        };
        r.serve(l);
        r
    }

    /// Accepts, reads the request, and never answers.
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve(&mut self, l: tokio::net::TcpListener) {
        let (received, hang) = (self.received.clone(), self.hang.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (received, hang) = (received.clone(), hang.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (received, hang) = (received.clone(), hang.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let gz = parts
                                    .headers
                                    .get("content-encoding")
                                    .is_some_and(|v| v == "gzip");
                                let body = if gz {
                                    appliance::audit::ship::http::gunzip(&bytes).unwrap_or_default()
                                } else {
                                    bytes.to_vec()
                                };
                                received.lock().expect("lock").push(Received {
                                    headers: parts.headers,
                                    body,
                                });
                                if hang.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }));
    }

    /// Stops listening (connections are refused) until [`HttpReceiver::resume`].
    pub fn pause(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let mut tries = 0;
        let l = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(l);
    }

    /// NDJSON lines of every request, parsed.
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|r| {
                String::from_utf8_lossy(&r.body)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<serde_json::Value>>()
            })
            .collect()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.pause();
    }
}
