//! The front door: accepts TCP, completes TLS 1.3, and dispatches by ALPN to
//! a tunnel stream (`tunnel-lite/1`) or the HTTPS API (`http/1.1`). A slow or
//! broken client costs only its own task: handshake and header are bounded
//! by `header_timeout`, and every connection runs on its own task.

mod admit;
mod tunnel;

pub use admit::{admit, rfc3339, Admission, Refusal};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            handle_connection(tcp, peer, acceptor, shared).await;
        });
    }
}

async fn handle_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.cfg.header_timeout;
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    match alpn.as_deref() {
        Some(p) if p == tunnel_lite::wire::ALPN => {
            tunnel::handle(Box::new(tls), peer, deadline, shared).await
        }
        // Boxed: the API server's future is large and most connections are tunnels.
        Some(p) if p == crate::tls::ALPN_HTTP => {
            Box::pin(crate::api::serve_connection(tls, peer, shared)).await
        }
        _ => tracing::debug!(%peer, "client offered no known ALPN protocol; closing"),
    }
}

/// Benchmark builds only: serves a plain loopback listener whose connections
/// are admitted as the configured identity to the configured target.
#[cfg(feature = "bench")]
pub async fn serve_bench(
    listener: TcpListener,
    binding: crate::config::BenchListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let binding = binding.clone();
        tokio::spawn(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let claims = crate::identity::SessionClaims {
                sub: binding.user.clone(),
                groups: binding.groups.clone(),
                iat: now,
                exp: now + 3600,
                jti: "bench".into(),
                iss: crate::identity::SESSION_ISSUER.into(),
            };
            tunnel::serve_admitted(
                Box::new(tcp),
                peer,
                shared,
                Ok(claims),
                &binding.target,
                binding.port,
                bytes::Bytes::new(),
                tunnel::Framing::Plain,
            )
            .await;
        });
    }
}

#[cfg(test)]
mod future_sizes {
    //! A spawned task is allocated (and copied) at the size of its future's
    //! largest state, for every connection. The protocol gateways' futures
    //! are boxed so a connection carries only what its own kind needs; this
    //! keeps that from regressing (unboxed, the task was over 32 KiB; now
    //! about 7.5 KiB in a debug build).
    fn size4<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn connection_task_stays_small() {
        let task = size4(super::handle_connection);
        assert!(task < 12 * 1024, "connection task future is {task} bytes");
        let proxy = size4(crate::proxy::serve);
        assert!(proxy < 2 * 1024, "proxy::serve future is {proxy} bytes");
    }
}
