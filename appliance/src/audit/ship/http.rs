//! A minimal HTTP/1.1 POST client (plain or TLS, one connection per request)
//! used by the HTTP sink and by webhook actions, and the HTTP sink itself:
//! NDJSON batches, gzip, bearer token; a 2xx answer acknowledges the batch.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ShipError, SinkConfig, SinkStatus};
use crate::audit::{RawRow, StoredRecord};
use crate::secrets::Secret;

/// Largest response body read (the rest is ignored).
const MAX_RESPONSE: usize = 64 * 1024;

/// Where to POST: parsed once.
#[derive(Clone)]
pub struct Target {
    uri: Uri,
    host_port: String,
    host_header: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.uri)
    }
}

impl Target {
    /// Parses `http(s)://host[:port]/path`; TLS trusts `ca_file` or the web PKI.
    pub fn parse(
        url: &str,
        ca_file: Option<&std::path::Path>,
        server_name: Option<&str>,
    ) -> Result<Target, ShipError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ShipError::Config(format!("url {url:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ShipError::Config(format!("url {url:?} is not http(s)://"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ShipError::Config(format!("url {url:?} has no host")))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https {
            let name = server_name.unwrap_or(&host).to_owned();
            let sn = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|_| ShipError::Config(format!("bad TLS server name {name:?}")))?;
            Some((
                tokio_rustls::TlsConnector::from(super::client_tls(ca_file)?),
                sn,
            ))
        } else {
            None
        };
        Ok(Target {
            host_header: authority.as_str().to_owned(),
            uri,
            host_port,
            tls,
        })
    }

    /// POSTs `body` with `headers`; returns the status and (at most 64 KiB of) the body.
    pub async fn post(
        &self,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ShipError> {
        tokio::time::timeout(timeout, self.post_inner(headers, body))
            .await
            .map_err(|_| ShipError::Timeout)?
    }

    async fn post_inner(
        &self,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(u16, Bytes), ShipError> {
        let tcp = TcpStream::connect(&self.host_port)
            .await
            .map_err(|e| ShipError::Connect(self.host_port.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let path = self
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, &self.host_header)
            .header(http::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ShipError::Http(e.to_string()))?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ShipError::Tls(e.to_string()))?;
                exchange(TokioIo::new(tls), req).await
            }
            None => exchange(TokioIo::new(tcp), req).await,
        }
    }
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), ShipError>
where
    S: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ShipError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ShipError::Http(e.to_string()));
    let out = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok((status, body))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

/// Gzip `data` (fast level: batches are sent often).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, ShipError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Gunzip `data` (receivers, tests), refusing more than 256 MiB of output.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, ShipError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(256 << 20)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The HTTP sink.
pub struct HttpTransport {
    target: Target,
    token: Option<Secret>,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(
        cfg: &SinkConfig,
        url: &str,
        token: Option<Secret>,
    ) -> Result<HttpTransport, ShipError> {
        Ok(HttpTransport {
            target: Target::parse(url, cfg.ca_file.as_deref(), cfg.server_name.as_deref())?,
            token,
            timeout: cfg.timeout,
        })
    }

    pub async fn send(
        &mut self,
        rows: &[RawRow],
        status: &SinkStatus,
    ) -> Result<Option<i64>, ShipError> {
        let mut ndjson = Vec::with_capacity(rows.len() * 400);
        for row in rows {
            let line = match StoredRecord::from_raw(row) {
                Ok(rec) => serde_json::to_vec(&rec).unwrap_or_default(),
                Err(_) => serde_json::to_vec(
                    &serde_json::json!({ "seq": row.seq, "id": row.id, "kind": row.kind, "hash": row.hash }),
                )
                .unwrap_or_default(),
            };
            ndjson.extend_from_slice(&line);
            ndjson.push(b'\n');
        }
        let body = gzip(&ndjson)?;
        let (first, last) = match (rows.first(), rows.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Ok(None),
        };
        let mut headers = vec![
            ("content-type", "application/x-ndjson".to_owned()),
            ("content-encoding", "gzip".to_owned()),
            ("x-audit-batch", format!("{first}-{last}")),
        ];
        if let Some(t) = &self.token {
            headers.push(("authorization", format!("Bearer {}", t.expose())));
        }
        let n = body.len();
        let (code, _) = self
            .target
            .post(&headers, Bytes::from(body), self.timeout)
            .await?;
        status
            .sent_records
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        status.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if (200..300).contains(&code) {
            Ok(Some(last))
        } else {
            Err(ShipError::Status(code))
        }
    }
}
