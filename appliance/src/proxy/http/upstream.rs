//! The upstream side of one session: connect (TCP, then TLS with ALPN when
//! `https`), HTTP/1.1 or HTTP/2 as negotiated, one reused connection per
//! session (the client side is sequential), a fresh HTTP/1.1 connection for
//! each Upgrade. Connect and response-header timeouts are enforced here and
//! reported as [`GatewayError`]s naming the limit. Connection driver tasks
//! live in a `JoinSet` that is aborted when the session ends.

use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::body::UpBody;
use super::error::GatewayError;
use crate::policy::kinds::http::{HttpSettings, Scheme};

/// Where and how to reach the upstream.
pub struct Target {
    /// The connection's name, for messages.
    pub connection: String,
    host: String,
    port: u16,
    /// `host[:port]` as the upstream knows itself (Host / :authority).
    pub authority: String,
    pub scheme: Scheme,
    tls: Option<Result<TlsTarget, String>>,
    connect_timeout: Duration,
    response_header_timeout: Duration,
}

struct TlsTarget {
    /// ALPN h2 + http/1.1 (or http/1.1 alone when http2 is off).
    normal: std::sync::Arc<rustls::ClientConfig>,
    /// ALPN http/1.1 only, for Upgrade requests.
    h1_only: std::sync::Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Target {
    /// `upstream` is the policy's `host:port`.
    pub fn new(
        connection: &str,
        upstream: &str,
        settings: &HttpSettings,
        default_connect_timeout: Duration,
    ) -> Result<Target, String> {
        let (host, port) = split_host_port(upstream)
            .ok_or_else(|| format!("upstream {upstream:?} is not host:port"))?;
        let authority = if port == settings.scheme.default_port() {
            upstream[..upstream.len() - port.to_string().len() - 1].to_string()
        } else {
            upstream.to_string()
        };
        let tls = (settings.scheme == Scheme::Https).then(|| {
            let sni = settings.sni.clone().unwrap_or_else(|| host.clone());
            let name = ServerName::try_from(sni.clone())
                .map_err(|_| format!("{sni:?} is not a valid TLS server name"))?;
            let ca = settings.ca_file.as_deref();
            Ok(TlsTarget {
                normal: super::tls::client_config(ca, settings.http2)?,
                h1_only: super::tls::client_config(ca, false)?,
                name,
            })
        });
        Ok(Target {
            connection: connection.to_string(),
            host,
            port,
            authority,
            scheme: settings.scheme,
            tls,
            connect_timeout: settings.connect_timeout.unwrap_or(default_connect_timeout),
            response_header_timeout: settings.response_header_timeout,
        })
    }
}

/// `host:port` with an optional `[v6]` host; the host comes back unbracketed.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// The session's upstream connections.
pub struct Upstream {
    pub target: Target,
    idle: Mutex<Option<Sender>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Upstream {
    pub fn new(target: Target) -> Upstream {
        Upstream {
            target,
            idle: Mutex::new(None),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the response
    /// head. The response-header timeout starts once `body_sent` fires.
    pub async fn send(
        &self,
        mut req: Request<UpBody>,
        body_sent: oneshot::Receiver<()>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let limit = self.target.response_header_timeout;
        let deadline = async move {
            let _ = body_sent.await;
            tokio::time::sleep(limit).await;
        };
        tokio::pin!(deadline);
        let mut retried = false;
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(s) => (s, true),
                None => (self.connect(false).await?, false),
            };
            let attempt = async {
                match &mut sender {
                    Sender::H1(s) => {
                        prepare(&mut req, Version::HTTP_11, &self.target);
                        s.try_send_request(req).await
                    }
                    Sender::H2(s) => {
                        prepare(&mut req, Version::HTTP_2, &self.target);
                        s.try_send_request(req).await
                    }
                }
            };
            let res = tokio::select! {
                r = attempt => r,
                _ = &mut deadline => return Err(self.timeout()),
            };
            match res {
                Ok(resp) => {
                    *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => {
                    // A reused keep-alive connection the upstream had just
                    // closed: the request was never sent, try once on a new one.
                    match e.take_message() {
                        Some(back) if reused && !retried => {
                            retried = true;
                            req = back;
                        }
                        _ => return Err(self.broken(e.error())),
                    }
                }
            }
        }
    }

    /// Sends an Upgrade request on a fresh HTTP/1.1 connection (which the
    /// upgrade then owns).
    pub async fn send_upgrade(
        &self,
        mut req: Request<UpBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let Sender::H1(mut s) = self.connect(true).await? else {
            return Err(self.broken_msg("the upstream negotiated HTTP/2 for an Upgrade"));
        };
        prepare(&mut req, Version::HTTP_11, &self.target);
        match tokio::time::timeout(self.target.response_header_timeout, s.send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.broken(&e)),
            Err(_) => Err(self.timeout()),
        }
    }

    async fn take_idle(&self) -> Option<Sender> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(Sender::H1(mut s)) => s.ready().await.ok().map(|_| Sender::H1(s)),
            Some(Sender::H2(mut s)) => s.ready().await.ok().map(|_| Sender::H2(s)),
            None => None,
        }
    }

    async fn connect(&self, h1_only: bool) -> Result<Sender, GatewayError> {
        let t = &self.target;
        let started = tokio::time::Instant::now();
        let tcp = tokio::time::timeout(
            t.connect_timeout,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| self.connect_timeout())?
        .map_err(|e| GatewayError::UpstreamUnreachable {
            connection: t.connection.clone(),
            reason: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &t.tls else {
            return self.h1(tcp).await;
        };
        let tls = tls.as_ref().map_err(|e| self.tls_error(e.clone()))?;
        let config = if h1_only { &tls.h1_only } else { &tls.normal };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let left = t.connect_timeout.saturating_sub(started.elapsed());
        let stream = tokio::time::timeout(left, connector.connect(tls.name.clone(), tcp))
            .await
            .map_err(|_| self.connect_timeout())?
            .map_err(|e| self.tls_error(e.to_string()))?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.h2(stream).await
        } else {
            self.h1(stream).await
        }
    }

    async fn h1<T>(&self, io: T) -> Result<Sender, GatewayError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.broken(&e))?;
        self.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }

    async fn h2<T>(&self, io: T) -> Result<Sender, GatewayError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.broken(&e))?;
        self.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Sender::H2(sender))
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn timeout(&self) -> GatewayError {
        GatewayError::UpstreamTimeout {
            connection: self.target.connection.clone(),
            after: self.target.response_header_timeout,
        }
    }

    fn connect_timeout(&self) -> GatewayError {
        GatewayError::UpstreamConnectTimeout {
            connection: self.target.connection.clone(),
            after: self.target.connect_timeout,
        }
    }

    fn tls_error(&self, reason: String) -> GatewayError {
        GatewayError::UpstreamTls {
            connection: self.target.connection.clone(),
            reason,
        }
    }

    fn broken(&self, e: &hyper::Error) -> GatewayError {
        let reason = match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        };
        self.broken_msg(&reason)
    }

    fn broken_msg(&self, reason: &str) -> GatewayError {
        GatewayError::UpstreamProtocol {
            connection: self.target.connection.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Puts the request in the form the negotiated version wants: origin-form
/// URI and `Host` for HTTP/1.1; absolute URI (the `Host` value becomes the
/// :authority) and no `Host` for HTTP/2.
fn prepare<B>(req: &mut Request<B>, version: Version, target: &Target) {
    *req.version_mut() = version;
    if version != Version::HTTP_2 {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| target.authority.clone());
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = Uri::builder()
        .scheme(target.scheme.as_str())
        .authority(authority.as_str())
        .path_and_query(pq.as_str())
        .build()
    {
        *req.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host_port("a.b:80"), Some(("a.b".into(), 80)));
        assert_eq!(
            split_host_port("[fd00::1]:443"),
            Some(("fd00::1".into(), 443))
        );
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(split_host_port(":80"), None);
    }

    #[test]
    fn authority_drops_the_default_port() {
        let s = HttpSettings::default();
        let t = Target::new("g", "grafana.internal:80", &s, Duration::from_secs(1)).unwrap();
        assert_eq!(t.authority, "grafana.internal");
        let t = Target::new("g", "10.0.0.5:3000", &s, Duration::from_secs(1)).unwrap();
        assert_eq!(t.authority, "10.0.0.5:3000");
    }
}
