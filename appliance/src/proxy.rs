//! Protocol proxies, one per connection kind. Each takes an admitted,
//! audited tunnel stream (and, except for http, a connected upstream) and
//! serves it until either side ends or the session is cancelled. None of
//! them decides *whether* to connect: that is the gate's job.

pub mod http;
pub mod postgres;
pub mod ssh;
pub use tunnel_lite::relay;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditKind, AuditRecord};
use crate::identity::Identity;
use crate::policy::{Connection, ConnectionKind};
use crate::server::Shared;

/// A byte stream toward the laptop.
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// The laptop side of a session: the TLS tunnel stream (or, in benchmark
/// builds only, a plain loopback connection; see `config::BenchListener`).
pub type TunnelStream = Box<dyn ClientIo>;

/// Everything a proxy knows about the session it serves.
pub struct SessionContext {
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub connection: Connection,
    pub session_id: String,
    pub peer: SocketAddr,
    /// The port the laptop asked for.
    pub port: u16,
    pub policy_version: Option<u64>,
    /// Fires when the appliance closes the session (revocation, shutdown).
    pub cancel: CancellationToken,
    /// Why it was closed, once it was.
    pub close_reason: Arc<OnceLock<String>>,
}

impl SessionContext {
    /// Why the appliance closed the session ("closed by the appliance" if unknown).
    pub fn cancel_reason(&self) -> &str {
        self.close_reason
            .get()
            .map(String::as_str)
            .unwrap_or("closed by the appliance")
    }

    /// An audit record pre-filled with who, what and where.
    pub fn audit_record(&self, kind: AuditKind) -> AuditRecord {
        let mut r = AuditRecord::new(kind)
            .user(self.identity.user.clone())
            .groups(self.identity.groups.iter().cloned())
            .connection(self.connection.name.clone())
            .session(self.session_id.clone())
            .client_addr(self.peer)
            .port(self.port);
        if let Some(v) = self.policy_version {
            r = r.policy_version(v);
        }
        r
    }
}

/// How a session ended, for its `session_end` audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// Laptop -> upstream.
    pub bytes_up: u64,
    /// Upstream -> laptop.
    pub bytes_down: u64,
    pub reason: String,
}

/// Whether the gate opens the upstream TCP connection before handing over
/// (so an unreachable upstream is a tunnel refusal), or the proxy manages
/// its own upstream connections.
pub fn gate_connects_upstream(kind: ConnectionKind) -> bool {
    !matches!(kind, ConnectionKind::Http)
}

/// Whether this build serves the kind.
pub fn serves(kind: ConnectionKind) -> bool {
    match kind {
        ConnectionKind::Tcp => true,
        ConnectionKind::Postgres => postgres::SERVED,
        ConnectionKind::Ssh => ssh::SERVED,
        ConnectionKind::Http => http::SERVED,
    }
}

/// Serves one admitted session with the proxy for its kind. `pending` holds
/// laptop bytes that arrived with the tunnel header.
///
/// The protocol gateways' futures are boxed: a spawned task is allocated at
/// the size of its largest state, so without the boxes every session (a
/// plain TCP one too) would carry the PostgreSQL or SSH gateway's state
/// (tens of KiB) from its first byte.
pub async fn serve(
    mut stream: TunnelStream,
    upstream: Option<TcpStream>,
    pending: Bytes,
    ctx: &SessionContext,
) -> SessionEnd {
    match (ctx.connection.kind, upstream) {
        (ConnectionKind::Tcp, Some(mut upstream)) => {
            let end = tcp::run(&mut stream, &mut upstream, &pending, &ctx.cancel).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            end
        }
        (ConnectionKind::Postgres, upstream) => {
            Box::pin(postgres::serve(stream, upstream, pending, ctx)).await
        }
        (ConnectionKind::Ssh, upstream) => {
            Box::pin(ssh::serve(stream, upstream, pending, ctx)).await
        }
        (ConnectionKind::Http, upstream) => {
            Box::pin(http::serve(stream, upstream, pending, ctx)).await
        }
        (kind, None) => SessionEnd {
            bytes_up: 0,
            bytes_down: 0,
            reason: format!("kind {} is not served by this build", kind.as_str()),
        },
    }
}
