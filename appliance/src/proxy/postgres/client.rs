//! The laptop side of the startup phase: answer SSLRequest/GSSENCRequest
//! with `N` (the tunnel already encrypts), then take the StartupMessage or a
//! CancelRequest. The appliance answers the startup itself: the person was
//! identified by the tunnel, so the client needs no password.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, ProtocolVersion, StartupMessage};
use super::error::PgError;

/// The first thing a client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    Cancel {
        process_id: i32,
        secret_key: Vec<u8>,
    },
    Startup {
        version: ProtocolVersion,
        params: Vec<(String, String)>,
    },
}

/// Reads until a StartupMessage or CancelRequest. `buf` starts with any
/// bytes that arrived with the tunnel header and keeps what follows.
pub async fn read_hello<S>(stream: &mut S, buf: &mut BytesMut) -> Result<ClientHello, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // At most two refusals (SSL then GSSENC, or the reverse), as libpq does.
    let mut refusals = 0;
    loop {
        match codec::decode_startup(buf).map_err(PgError::ClientProtocol)? {
            Some((msg, used)) => {
                let hello = match msg {
                    StartupMessage::SslRequest | StartupMessage::GssEncRequest => {
                        refusals += 1;
                        if refusals > 2 {
                            return Err(PgError::Unexpected(
                                "too many encryption requests in one startup".into(),
                            ));
                        }
                        None
                    }
                    StartupMessage::Cancel(c) => Some(ClientHello::Cancel {
                        process_id: c.process_id,
                        secret_key: c.secret_key.to_vec(),
                    }),
                    StartupMessage::Startup(s) => Some(ClientHello::Startup {
                        version: s.version,
                        params: s
                            .params
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    }),
                };
                buf.advance(used);
                match hello {
                    Some(h) => return Ok(h),
                    None => {
                        stream.write_all(&[codec::SSL_NOT_SUPPORTED]).await?;
                        stream.flush().await?;
                    }
                }
            }
            None => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(codec::MAX_STARTUP + 4);
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(PgError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
}
