//! Telling a PostgreSQL client why the appliance refused its tunnel. psql
//! would otherwise just see the connection drop; instead it prints the
//! reason ("access for alice has been revoked") as a FATAL error. This needs
//! only the startup phase of the protocol, bounded like the server's.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet.
const MAX_STARTUP: u32 = 10_000;

/// An ErrorResponse with severity FATAL, the SQLSTATE and the message.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(code);
        // A NUL would end the field early; the reason is ours, but be safe.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the client's startup (answering SSL/GSSENC requests with `N`) and
/// answers it with the refusal. A cancel request gets no answer, as from a
/// real server. Gives up after a few seconds of silence.
pub async fn refuse<S>(client: &mut S, sqlstate: &str, reason: &str) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        for _ in 0..3 {
            let len = client.read_u32().await?;
            if !(8..=MAX_STARTUP + 4).contains(&len) {
                return Ok(());
            }
            let mut body = vec![0u8; len as usize - 4];
            client.read_exact(&mut body).await?;
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            match code {
                SSL_REQUEST | GSSENC_REQUEST => client.write_all(b"N").await?,
                CANCEL_REQUEST => return Ok(()),
                _ => {
                    client.write_all(&error_response(sqlstate, reason)).await?;
                    return client.flush().await;
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_bytes() {
        let e = error_response("28000", "no");
        assert_eq!(e, b"E\0\0\0\x1eSFATAL\0VFATAL\0C28000\0Mno\0\0".to_vec());
    }

    #[tokio::test]
    async fn answers_ssl_then_startup() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { refuse(&mut b, "28000", "revoked").await });
        a.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut n = [0u8; 1];
        a.read_exact(&mut n).await.unwrap();
        assert_eq!(&n, b"N");
        let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0bob\0\0");
        let len = startup.len() as u32;
        startup[..4].copy_from_slice(&len.to_be_bytes());
        a.write_all(&startup).await.unwrap();
        let mut resp = Vec::new();
        drop(server.await.unwrap());
        a.read_to_end(&mut resp).await.unwrap();
        assert_eq!(resp, error_response("28000", "revoked"));
    }
}
