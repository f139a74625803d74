//! `kind = "tcp"`: a plain byte relay to the upstream, for anything that needs
//! no protocol awareness. Port enforcement happened at the gate; this module
//! only moves bytes and reports how the session ended.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use tunnel_lite::relay::Relay;

use super::SessionEnd;

/// Connects to `host:port` within `timeout`, with TCP_NODELAY on.
pub async fn connect_upstream(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Relays until both sides close, the session is cancelled (revocation,
/// shutdown), or an I/O error. `pending` holds laptop bytes that arrived with
/// the tunnel header and go upstream first.
pub async fn run<C>(
    client: &mut C,
    upstream: &mut TcpStream,
    pending: &[u8],
    cancel: &CancellationToken,
) -> SessionEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if !pending.is_empty() {
        if let Err(e) = upstream.write_all(pending).await {
            return SessionEnd {
                bytes_up: 0,
                bytes_down: 0,
                reason: format!("upstream write failed: {e}"),
            };
        }
    }
    let mut relay = Relay::new(client, upstream);
    let reason = tokio::select! {
        r = &mut relay => match r {
            Ok(_) if relay.upstream_closed_first() => "upstream closed".to_string(),
            Ok(_) => "client closed".to_string(),
            Err(e) => format!("connection error: {e}"),
        },
        _ = cancel.cancelled() => "closed by the appliance (identity revoked or shutdown)".to_string(),
    };
    SessionEnd {
        bytes_up: relay.up() + pending.len() as u64,
        bytes_down: relay.down(),
        reason,
    }
}
