//! `kind = "ssh"` gateway (being written; not served by this build yet).

use bytes::Bytes;
use tokio::net::TcpStream;

use super::{SessionContext, SessionEnd, TunnelStream};

/// Whether this build serves the kind.
pub const SERVED: bool = false;

/// Serves one admitted session.
pub async fn serve(
    _stream: TunnelStream,
    _upstream: Option<TcpStream>,
    _pending: Bytes,
    _ctx: &SessionContext,
) -> SessionEnd {
    SessionEnd {
        bytes_up: 0,
        bytes_down: 0,
        reason: "kind ssh is not served by this build".into(),
    }
}
