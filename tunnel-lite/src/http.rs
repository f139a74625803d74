//! A small HTTP/1.1 client for control-plane calls (the appliance API, the
//! IdP's device-flow and JWKS endpoints). One request per connection; bodies
//! are small JSON documents, bounded by `MAX_BODY`. Not used on the data path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Largest response body accepted (JWKS documents and tokens are far smaller).
pub const MAX_BODY: usize = 1 << 20;

/// Why a control-plane HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP exchange with {0} failed: {1}")]
    Protocol(String, String),
    #[error("request to {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

/// A response: status and the whole (bounded) body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// One request. `tls` is the client config for `https://` URLs; `None` means
/// the public web PKI (webpki roots).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    match tokio::time::timeout(timeout, request_inner(method, url, headers, body, tls)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(url.to_string(), timeout)),
    }
}

/// `application/x-www-form-urlencoded` body from pairs.
pub fn form_encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(k, &mut out);
        out.push('=');
        percent_encode_into(v, &mut out);
    }
    out.into_bytes()
}

fn percent_encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` text into pairs.
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Target, HttpError> {
    let bad = |why| HttpError::BadUrl(url.to_string(), why);
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    Ok(Target {
        https,
        host,
        port,
        path_and_query,
    })
}

/// The public web PKI client config (webpki roots), built once per call site.
pub fn webpki_client_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn request_inner(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<HttpResponse, HttpError> {
    let target = parse_url(url)?;
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| HttpError::Connect(authority.clone(), e))?;
    let _ = tcp.set_nodelay(true);

    let mut req = http::Request::builder()
        .method(method)
        .uri(&target.path_and_query)
        .header(http::header::HOST, &authority)
        .header(http::header::USER_AGENT, "tunnel-lite/1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default()));
    let req = req
        .body(body)
        .map_err(|e| HttpError::Protocol(authority.clone(), e.to_string()))?;

    if target.https {
        let config = tls.unwrap_or_else(webpki_client_config);
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| HttpError::BadUrl(url.to_string(), "host is not a valid TLS name"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls(authority.clone(), e))?;
        exchange(TokioIo::new(stream), req, &authority).await
    } else {
        exchange(TokioIo::new(tcp), req, &authority).await
    }
}

async fn exchange<I>(
    io: I,
    req: http::Request<Full<Bytes>>,
    authority: &str,
) -> Result<HttpResponse, HttpError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let proto =
        |e: &dyn std::fmt::Display| HttpError::Protocol(authority.to_string(), e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| proto(&e))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| proto(&e))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| proto(&e))?
        .to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let enc = form_encode(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("a b", "c&d"),
        ]);
        let s = String::from_utf8(enc).unwrap();
        assert_eq!(
            s,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&a%20b=c%26d"
        );
        assert_eq!(
            form_decode(&s),
            vec![
                (
                    "grant_type".to_string(),
                    "urn:ietf:params:oauth:grant-type:device_code".to_string()
                ),
                ("a b".to_string(), "c&d".to_string())
            ]
        );
        assert_eq!(
            form_decode("x=1+2&bad=%zz&t=%4"),
            vec![
                ("x".into(), "1 2".into()),
                ("bad".into(), "%zz".into()),
                ("t".into(), "%4".into())
            ]
        );
    }

    #[test]
    fn url_parsing() {
        let t = parse_url("https://idp.example:8443/token?x=1").unwrap();
        assert!(t.https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("idp.example", 8443, "/token?x=1")
        );
        let t = parse_url("http://127.0.0.1").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (80, "/"));
        assert!(parse_url("ftp://x").is_err());
    }
}
