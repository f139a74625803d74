//! Talking to the appliance: open one tunnel stream per proxied connection
//! (TLS 1.3, ALPN `tunnel-lite/1`, session resumption through the shared
//! client config), and call the HTTPS API (ALPN `http/1.1`).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::api::{
    ApiError, ApprovalDecision, ApprovalInfo, ApprovalsResponse, ConnectionsResponse, InfoResponse,
    LoginRequest, LoginResponse,
};
use crate::http::{self, HttpResponse};
use crate::spare::{SpareSlot, SPARE_MAX_AGE};
use crate::tls::{self, Trust};
use crate::wire::{self, Request, Status, MAX_REQUEST, MAX_RESPONSE};

/// How long connecting plus the TLS handshake plus the header exchange may take.
pub const TUNNEL_SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const API_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the appliance at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with the appliance at {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("the appliance refused: {reason} ({})", status.as_str())]
    Refused { status: Status, reason: String },
    #[error("the appliance sent a malformed answer: {0}")]
    Protocol(String),
    #[error("timed out talking to the appliance at {0}")]
    Timeout(String),
    #[error(transparent)]
    TlsConfig(#[from] tls::TlsError),
    #[error("appliance API: {0}")]
    Http(#[from] http::HttpError),
    #[error("appliance API answered {status}: {reason}")]
    Api {
        status: u16,
        code: String,
        reason: String,
    },
}

impl ClientError {
    /// The tunnel status, when the appliance refused a tunnel.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the fix is `tunnel-lite login` (expired or rejected token, or revoked).
    pub fn needs_login(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => status.needs_login(),
            ClientError::Api { code, .. } => {
                matches!(
                    code.as_str(),
                    "token_expired" | "token_invalid" | "token_missing"
                )
            }
            _ => false,
        }
    }
}

/// A connection-ready handle to one appliance. Cheap to clone; clones share
/// the TLS session cache, so new tunnels resume instead of full handshakes.
#[derive(Clone)]
pub struct ApplianceClient {
    addr: String,
    server_name: ServerName<'static>,
    tunnel_tls: tokio_rustls::TlsConnector,
    api_tls: Arc<rustls::ClientConfig>,
    /// Set by [`ApplianceClient::with_spare`]; shared by clones.
    spare: Option<Arc<SpareSlot<TlsStream<TcpStream>>>>,
}

impl ApplianceClient {
    /// `addr` is `host:port`.
    pub fn new(addr: &str, trust: &Trust) -> Result<ApplianceClient, ClientError> {
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| ClientError::Protocol(format!("{host:?} is not a valid host name")))?;
        Ok(ApplianceClient {
            addr: addr.to_string(),
            server_name,
            tunnel_tls: tokio_rustls::TlsConnector::from(tls::client_config(trust, wire::ALPN)?),
            api_tls: tls::client_config(trust, b"http/1.1")?,
            spare: None,
        })
    }

    /// Whether a spare tunnel connection is stored now (see [`crate::spare`]).
    pub fn has_spare(&self) -> bool {
        self.spare.as_ref().is_some_and(|slot| slot.is_stored())
    }

    /// Keeps one spare tunnel connection handshaken after each tunnel opens
    /// (see [`crate::spare`]), so the next one skips the TLS handshake.
    pub fn with_spare(mut self) -> Self {
        self.spare = Some(Arc::default());
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens a tunnel stream to `target:port`, ready for raw bytes, or the
    /// appliance's refusal with its reason.
    pub async fn open_tunnel(
        &self,
        token: &str,
        target: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        match tokio::time::timeout(TUNNEL_SETUP_TIMEOUT, self.open_inner(token, target, port)).await
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.addr.clone())),
        }
    }

    async fn open_inner(
        &self,
        token: &str,
        target: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        let Some(slot) = &self.spare else {
            return self.open_fresh(token, target, port).await;
        };
        // A spare the appliance or the network closed while it waited
        // (restart, middlebox timeout) shows as EOF or an error here.
        let spare = slot
            .take_or_wait()
            .await
            .and_then(|mut tls| still_open(&mut tls).then_some(tls));
        let result = match spare {
            Some(mut tls) => {
                match self.send_header(&mut tls, token, target, port).await {
                    Ok(()) => self.read_answer(tls).await,
                    // The header did not go out whole, so the appliance
                    // admitted nothing: a fresh connection is safe. (After
                    // it went out, a failure is reported, not retried: the
                    // appliance may have admitted it.)
                    Err(e) => {
                        tracing::debug!(error = %e, "spare tunnel connection failed; opening a fresh one");
                        self.open_fresh(token, target, port).await
                    }
                }
            }
            None => self.open_fresh(token, target, port).await,
        };
        // Connected, or refused by a reachable appliance: worth a spare for
        // the next connection. Not after a connect failure (appliance down).
        if matches!(result, Ok(_) | Err(ClientError::Refused { .. })) {
            self.fill_spare(slot);
        }
        result
    }

    /// Connects and handshakes a spare in the background, unless one is
    /// stored or on its way; closes it at [`SPARE_MAX_AGE`] if unused.
    fn fill_spare(&self, slot: &Arc<SpareSlot<TlsStream<TcpStream>>>) {
        if !slot.begin_fill() {
            return;
        }
        let this = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match tokio::time::timeout(SPARE_MAX_AGE, this.connect()).await {
                Ok(Ok(tls)) => {
                    let generation = slot.put(tls, started);
                    tokio::time::sleep_until(started + SPARE_MAX_AGE).await;
                    drop(slot.expire(generation));
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not open a spare tunnel connection");
                    slot.fill_failed();
                }
                Err(_) => slot.fill_failed(),
            }
        });
    }

    /// A tunnel on a connection of its own.
    async fn open_fresh(
        &self,
        token: &str,
        target: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        let tls = self.connect().await?;
        self.request(tls, token, target, port).await
    }

    /// TCP connect and TLS handshake.
    async fn connect(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect(self.addr.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        self.tunnel_tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Tls(self.addr.clone(), e))
    }

    /// Sends the tunnel header on a handshaken connection and reads the answer.
    async fn request(
        &self,
        mut tls: TlsStream<TcpStream>,
        token: &str,
        target: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        self.send_header(&mut tls, token, target, port).await?;
        self.read_answer(tls).await
    }

    /// Writes and flushes the tunnel header. An error means it did not
    /// reach the appliance whole (it fits one TLS record).
    async fn send_header(
        &self,
        tls: &mut TlsStream<TcpStream>,
        token: &str,
        target: &str,
        port: u16,
    ) -> Result<(), ClientError> {
        let mut header = [0u8; MAX_REQUEST];
        let n = wire::encode_request(
            &Request {
                token,
                target,
                port,
            },
            &mut header,
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tls.write_all(&header[..n])
            .await
            .map_err(|e| ClientError::Tls(self.addr.clone(), e))?;
        tls.flush()
            .await
            .map_err(|e| ClientError::Tls(self.addr.clone(), e))
    }

    /// Reads the appliance's answer to the header.
    async fn read_answer(
        &self,
        mut tls: TlsStream<TcpStream>,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        // Read exactly the response header: bytes after it belong to the client.
        let mut buf = [0u8; MAX_RESPONSE];
        let mut have = 0;
        loop {
            match wire::decode_response(&buf[..have]) {
                Ok(Some((resp, _))) => {
                    return match resp.status {
                        Status::Ok => Ok(tls),
                        status => Err(ClientError::Refused {
                            status,
                            reason: resp.reason.to_string(),
                        }),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            // Read only as much as the header can still need (4 bytes, then the reason).
            let need = if have < 4 {
                4 - have
            } else {
                4 + u16::from_be_bytes([buf[2], buf[3]]) as usize - have
            };
            let n = tls
                .read(&mut buf[have..have + need])
                .await
                .map_err(|e| ClientError::Tls(self.addr.clone(), e))?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the appliance closed the tunnel before answering".into(),
                ));
            }
            have += n;
        }
    }

    async fn api(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ClientError> {
        let url = format!("https://{}{}", self.addr, path);
        let auth;
        let mut headers: Vec<(&str, &str)> = vec![("accept", "application/json")];
        if let Some(t) = bearer {
            auth = format!("Bearer {t}");
            headers.push(("authorization", &auth));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let resp = http::request(
            method,
            &url,
            &headers,
            body,
            Some(self.api_tls.clone()),
            API_TIMEOUT,
        )
        .await?;
        if resp.status >= 400 {
            let (code, reason) = match resp.json::<ApiError>() {
                Ok(e) => (e.error, e.reason),
                Err(_) => (
                    "http_error".to_string(),
                    String::from_utf8_lossy(&resp.body).into_owned(),
                ),
            };
            return Err(ClientError::Api {
                status: resp.status,
                code,
                reason,
            });
        }
        Ok(resp)
    }

    fn parse<T: serde::de::DeserializeOwned>(resp: &HttpResponse) -> Result<T, ClientError> {
        resp.json()
            .map_err(|e| ClientError::Protocol(format!("unexpected API answer: {e}")))
    }

    /// `GET /v1/health`: the raw JSON.
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        Self::parse(&self.api("GET", "/v1/health", None, None).await?)
    }

    pub async fn info(&self) -> Result<InfoResponse, ClientError> {
        Self::parse(&self.api("GET", "/v1/info", None, None).await?)
    }

    /// Exchanges an IdP ID token for an appliance session token.
    pub async fn login(&self, id_token: &str) -> Result<LoginResponse, ClientError> {
        let body = serde_json::to_vec(&LoginRequest {
            id_token: id_token.to_string(),
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Self::parse(&self.api("POST", "/v1/login", None, Some(body)).await?)
    }

    pub async fn connections(&self, token: &str) -> Result<ConnectionsResponse, ClientError> {
        Self::parse(
            &self
                .api("GET", "/v1/connections", Some(token), None)
                .await?,
        )
    }

    /// `GET /v1/approvals`: held requests this person may decide, and their own.
    pub async fn approvals(&self, token: &str) -> Result<ApprovalsResponse, ClientError> {
        Self::parse(&self.api("GET", "/v1/approvals", Some(token), None).await?)
    }

    /// Approves (`approve`) or denies a held request; a denial needs a reason.
    /// Returns the request as decided.
    pub async fn decide_approval(
        &self,
        token: &str,
        id: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<ApprovalInfo, ClientError> {
        let id = id.trim();
        // The id goes into the URL path: only what an id can be.
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ClientError::Protocol(format!(
                "{id:?} is not an approval id (see `tunnel-lite approvals list`)"
            )));
        }
        let body = serde_json::to_vec(&ApprovalDecision {
            reason: reason.map(str::to_string),
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let action = if approve { "approve" } else { "deny" };
        let path = format!("/v1/approvals/{id}/{action}");
        Self::parse(&self.api("POST", &path, Some(token), Some(body)).await?)
    }
}

/// Whether an idle spare can still carry a tunnel: a read that would block
/// means nothing arrived (the appliance sends nothing before the header).
/// End of stream, an error or stray bytes mean it was closed or misbehaves.
fn still_open(tls: &mut TlsStream<TcpStream>) -> bool {
    use tokio::io::AsyncRead;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    std::pin::Pin::new(tls)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}
