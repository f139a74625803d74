//! The upstream side of a PostgreSQL session: optional TLS, the startup
//! message, and authentication with the injected credential (SCRAM-SHA-256,
//! md5, cleartext, trust). Reads until the server's first ReadyForQuery and
//! keeps what the client must see (ParameterStatus, notices) as raw frames.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::codec::{self, backend, CodecError, ProtocolVersion};
use super::error::PgError;
use crate::policy::kinds::postgres::UpstreamTls;
use crate::policy::PostgresSettings;
use crate::secrets::Secret;

/// The upstream byte stream: plain TCP or TLS over it.
pub type UpstreamStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// What the gateway logs in with.
pub struct Login<'a> {
    /// Connection name, for messages.
    pub connection: &'a str,
    /// Upstream `host:port` from the policy (host for SNI and verification).
    pub upstream: &'a str,
    pub settings: &'a PostgresSettings,
    pub user: &'a str,
    pub password: Option<&'a Secret>,
    pub version: ProtocolVersion,
    /// Startup parameters other than `user` (database first, then application_name...).
    pub params: &'a [(String, String)],
}

/// A logged-in upstream session, ready for queries.
pub struct Upstream {
    pub stream: UpstreamStream,
    pub process_id: i32,
    pub secret_key: Vec<u8>,
    /// Raw NegotiateProtocolVersion frames (sent before AuthenticationOk).
    pub negotiate_frames: Vec<u8>,
    /// Raw ParameterStatus and NoticeResponse frames, in order, for the client.
    pub startup_frames: Vec<u8>,
    /// Transaction status of the first ReadyForQuery.
    pub status: backend::TransactionStatus,
    /// Bytes read past the first ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Reads one whole frame into `buf` (which keeps any bytes after it) and
/// returns its tag and total length.
pub(super) async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, usize), PgError> {
    loop {
        match codec::decode_frame(buf, max) {
            Ok(Some((frame, total))) => return Ok((frame.tag, total)),
            Ok(None) => {}
            Err(e) => return Err(PgError::UpstreamProtocol(e)),
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(8192);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PgError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn host_of(upstream: &str) -> &str {
    match upstream.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => upstream,
    }
}

async fn start_tls(tcp: TcpStream, login: &Login<'_>) -> Result<UpstreamStream, PgError> {
    let mode = login.settings.tls;
    if mode == UpstreamTls::Disable {
        return Ok(Either::Left(tcp));
    }
    let tls_err = |reason: String| PgError::UpstreamTls {
        connection: login.connection.to_string(),
        reason,
    };
    let mut tcp = tcp;
    let mut out = Vec::with_capacity(8);
    codec::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let answer = tcp.read_u8().await?;
    if answer != codec::SSL_ACCEPTED {
        return Err(tls_err(
            "the server does not accept TLS, but the policy requires it".into(),
        ));
    }
    let config = upstream_tls_config(login.settings).map_err(tls_err)?;
    let name = login
        .settings
        .server_name
        .clone()
        .unwrap_or_else(|| host_of(login.upstream).to_string());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| tls_err(format!("{name:?} is not a valid TLS server name")))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    Ok(Either::Right(stream))
}

fn upstream_tls_config(settings: &PostgresSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match settings.tls {
        UpstreamTls::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &settings.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| format!("CA file {path}: {e}"))?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert.map_err(|e| format!("CA file {path}: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("CA file {path}: {e}"))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // `require`: encryption without verification, as libpq's sslmode=require.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects TLS if configured, sends the startup message, authenticates and
/// reads up to the first ReadyForQuery.
pub async fn login(tcp: TcpStream, login: &Login<'_>) -> Result<Upstream, PgError> {
    let max = login.settings.max_message_bytes;
    let mut stream = start_tls(tcp, login).await?;
    let mut out = Vec::with_capacity(512);
    let params = std::iter::once(("user", login.user))
        .chain(login.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    codec::startup_message(&mut out, login.version, params).map_err(PgError::ClientProtocol)?;
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut startup_frames = Vec::new();
    let mut negotiate_frames = Vec::new();
    let mut scram: Option<ScramSha256> = None;
    let mut key: Option<(i32, Vec<u8>)> = None;
    let role = || format!("role {:?}", login.user);
    loop {
        let (tag, total) = read_frame(&mut stream, &mut buf, max).await?;
        let frame = buf.split_to(total);
        let body = &frame[codec::FRAME_HEADER_LEN..];
        out.clear();
        match tag {
            backend::AUTHENTICATION_TAG => {
                let auth =
                    backend::Authentication::parse(body).map_err(PgError::UpstreamProtocol)?;
                respond_to_auth(auth, login, &mut scram, &mut out)?;
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
            }
            backend::PARAMETER_STATUS_TAG | backend::NOTICE_RESPONSE_TAG => {
                startup_frames.extend_from_slice(&frame);
            }
            backend::NEGOTIATE_PROTOCOL_VERSION_TAG => negotiate_frames.extend_from_slice(&frame),
            backend::BACKEND_KEY_DATA_TAG => {
                let k = backend::BackendKeyData::parse(body).map_err(PgError::UpstreamProtocol)?;
                key = Some((k.process_id, k.secret_key.to_vec()));
            }
            backend::ERROR_RESPONSE_TAG => {
                let e = backend::ErrorNotice::parse(body).map_err(PgError::UpstreamProtocol)?;
                let sqlstate = e.sqlstate().unwrap_or("XX000").to_string();
                let message = e.message().map(|m| m.to_string()).unwrap_or_default();
                // 28P01 invalid_password, 28000 invalid_authorization_specification
                return Err(if sqlstate.starts_with("28") {
                    PgError::CredentialRejected {
                        connection: login.connection.to_string(),
                        role: role(),
                        upstream_message: message,
                    }
                } else {
                    PgError::UpstreamRefused {
                        connection: login.connection.to_string(),
                        sqlstate,
                        message,
                    }
                });
            }
            backend::READY_FOR_QUERY_TAG => {
                let rfq = backend::ReadyForQuery::parse(body).map_err(PgError::UpstreamProtocol)?;
                let (process_id, secret_key) = key.unwrap_or((0, vec![0; 4]));
                return Ok(Upstream {
                    stream,
                    process_id,
                    secret_key,
                    negotiate_frames,
                    startup_frames,
                    status: rfq.status,
                    leftover: buf,
                });
            }
            other => {
                return Err(PgError::UpstreamProtocol(if other == 0 {
                    CodecError::Truncated
                } else {
                    CodecError::BadTarget(other)
                }))
            }
        }
    }
}

fn respond_to_auth(
    auth: backend::Authentication<'_>,
    login: &Login<'_>,
    scram: &mut Option<ScramSha256>,
    out: &mut Vec<u8>,
) -> Result<(), PgError> {
    use backend::Authentication as A;
    let connection = || login.connection.to_string();
    let password = || {
        login.password.ok_or_else(|| PgError::MissingSecret {
            connection: connection(),
            secret: "password".into(),
        })
    };
    let unsupported = |method: &str| PgError::UnsupportedAuth {
        connection: connection(),
        method: method.to_string(),
    };
    let proto = PgError::UpstreamProtocol;
    match auth {
        A::Ok => Ok(()),
        A::CleartextPassword => {
            codec::password_message(out, password()?.expose().as_bytes()).map_err(proto)
        }
        A::Md5Password { salt } => {
            let hash = postgres_protocol::authentication::md5_hash(
                login.user.as_bytes(),
                password()?.expose().as_bytes(),
                salt,
            );
            codec::password_message(out, hash.as_bytes()).map_err(proto)
        }
        A::Sasl(mechs) => {
            if !mechs.contains("SCRAM-SHA-256") {
                return Err(unsupported("SASL without SCRAM-SHA-256"));
            }
            let s = ScramSha256::new(
                password()?.expose().as_bytes(),
                ChannelBinding::unsupported(),
            );
            codec::sasl_initial_response(out, "SCRAM-SHA-256", s.message()).map_err(proto)?;
            *scram = Some(s);
            Ok(())
        }
        A::SaslContinue { data } => {
            let s = scram.as_mut().ok_or(proto(CodecError::Truncated))?;
            s.update(data).map_err(|e| PgError::CredentialRejected {
                connection: connection(),
                role: format!("role {:?}", login.user),
                upstream_message: format!("SCRAM exchange failed: {e}"),
            })?;
            codec::sasl_response(out, s.message()).map_err(proto)
        }
        A::SaslFinal { data } => {
            let mut s = scram.take().ok_or(proto(CodecError::Truncated))?;
            s.finish(data).map_err(|e| PgError::CredentialRejected {
                connection: connection(),
                role: format!("role {:?}", login.user),
                upstream_message: format!("the server's SCRAM proof did not verify: {e}"),
            })
        }
        A::KerberosV5 => Err(unsupported("Kerberos V5")),
        A::Gss | A::GssContinue { .. } => Err(unsupported("GSSAPI")),
        A::Sspi => Err(unsupported("SSPI")),
    }
}
