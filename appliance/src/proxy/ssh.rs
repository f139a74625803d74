//! `kind = "ssh"`: an SSH gateway. The laptop's `ssh` talks SSH to the
//! appliance over the tunnel stream (russh server, the appliance's own host
//! key, no client credential: the person is the tunnel identity); the
//! appliance talks SSH to the upstream over the TCP connection the gate
//! opened (russh client, pinned host key, credential from the secret store,
//! the account from `[connection.ssh]`), and bridges channels between the
//! two: session channels (pty, shell, exec, env, signals, exit status,
//! subsystems such as sftp) and `direct-tcpip` when the policy allows it.
//!
//! Layout: `server` (laptop-side callbacks), `upstream` (client and login),
//! `bridge` (one task per channel), `lane` (laptop -> upstream flow control),
//! `record` (asciicast files and the `recordings` CLI), `sftp` (SFTP codec
//! for the audit), `controls` (pure decisions), `hostkey`, `stream`.
//!
//! Must not: decide whether the person may connect (the gate did), let the
//! upstream credential reach the laptop or a log, or buffer without bound.
//! Known limit: within one SSH connection, a channel whose upstream stops
//! reading eventually pauses the connection's other channels (russh offers
//! no per-channel window control); separate connections are independent.

mod bridge;
pub mod controls;
pub mod hostkey;
mod lane;
pub mod record;
mod server;
pub mod sftp;
mod stream;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::{Preferred, Sig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use record::{run_command as recordings_command, RecordingError, RecordingsCommand};

use super::{SessionContext, SessionEnd, TunnelStream};
use crate::audit::{AuditKind, AuditRecord};
use crate::identity::Identity;
use crate::policy::{Connection, KindSettings, SshSettings};
use crate::server::Shared;
use lane::Pressure;
use stream::{Counters, Guarded};
use upstream::{UpstreamError, UpstreamHandle};

/// Whether this build serves the kind.
pub const SERVED: bool = true;

/// SSH channel window offered to both peers.
const WINDOW: u32 = 2 * 1024 * 1024;
/// Largest SSH packet payload accepted.
const MAX_PACKET: u32 = 32 * 1024;
/// Messages russh queues per upstream channel before it stops reading.
const CHANNEL_BUFFER: usize = 32;
/// How long session end waits for channel tasks to write their audit records.
const DRAIN: Duration = Duration::from_secs(2);

type UpstreamState = Option<Result<Arc<UpstreamHandle>, String>>;

/// One SSH connection: what every channel task of it shares.
pub(crate) struct Conn {
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub connection: Connection,
    pub settings: SshSettings,
    pub session_id: String,
    peer: SocketAddr,
    port: u16,
    policy_version: Option<u64>,
    upstream: watch::Receiver<UpstreamState>,
    /// Fires when the session ends for any reason; streams and tasks stop.
    pub kill: CancellationToken,
    pub pressure: Arc<Pressure>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    seq: AtomicU32,
}

impl Conn {
    /// The policy version the session was admitted under.
    pub fn policy_version(&self) -> Option<u64> {
        self.policy_version
    }

    /// An audit record pre-filled with who, what and where.
    pub fn audit(&self, kind: AuditKind) -> AuditRecord {
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

    /// Writes an audit record (waiting for queue space, never dropping it).
    pub async fn record(&self, rec: AuditRecord) {
        if let Err(e) = self.shared.audit.record(rec).await {
            tracing::error!(error = %e, "ssh audit record lost");
        }
    }

    /// Strict audit mode: a durable `forwarded` record of a shell, exec or
    /// subsystem request before it goes upstream; `false` means refuse it.
    /// Always `true` in fast mode.
    pub async fn gate(&self, what: &str, command: Option<&str>) -> bool {
        if self.shared.audit.mode().0 != crate::audit::AuditMode::Strict {
            return true;
        }
        let rec = self
            .audit(AuditKind::SshExec)
            .outcome("forwarded")
            .detail(serde_json::json!({ "request": what, "command": command }));
        match self.shared.audit.record_durable(rec).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "strict audit mode: request not recorded, so not forwarded");
                false
            }
        }
    }

    /// Runs `f` on its own task, tracked so session end can wait for it.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        let h = tokio::spawn(f);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    /// A number unique within the connection (recording ids).
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The logged-in upstream, once ready; the reason if it is unusable.
    pub async fn upstream(&self) -> Result<Arc<UpstreamHandle>, String> {
        let mut rx = self.upstream.clone();
        let state: Option<UpstreamState> = tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().map(|v| v.clone()),
            _ = self.kill.cancelled() => return Err("the session is closing".into()),
        };
        match state {
            Some(Some(r)) => r,
            _ => Err("the upstream connection ended".into()),
        }
    }
}

/// Serves one admitted session.
pub async fn serve(
    stream: TunnelStream,
    upstream: Option<TcpStream>,
    pending: Bytes,
    ctx: &SessionContext,
) -> SessionEnd {
    let counters = Arc::new(Counters::default());
    let end = |reason: String| SessionEnd {
        bytes_up: counters.read(),
        bytes_down: counters.written(),
        reason,
    };
    let settings = match &ctx.connection.settings {
        KindSettings::Ssh(s) => s.clone(),
        _ => SshSettings::default(),
    };
    let host_key = match hostkey::load_or_generate(&ctx.shared.cfg.data_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "ssh gateway has no host key");
            return end(e.to_string());
        }
    };
    let Some(upstream_tcp) = upstream else {
        return end("no upstream connection".into());
    };
    let kill = ctx.cancel.child_token();
    let (up_tx, up_rx) = watch::channel(None);
    let conn = Arc::new(Conn {
        shared: ctx.shared.clone(),
        identity: ctx.identity.clone(),
        connection: ctx.connection.clone(),
        settings: settings.clone(),
        session_id: ctx.session_id.clone(),
        peer: ctx.peer,
        port: ctx.port,
        policy_version: ctx.policy_version,
        upstream: up_rx,
        kill: kill.clone(),
        pressure: Arc::new(Pressure::default()),
        tasks: Mutex::new(Vec::new()),
        seq: AtomicU32::new(0),
    });
    let mut stream = stream;
    let (pending, client_id) = tokio::select! {
        r = peek_client_id(&mut stream, pending) => r,
        _ = ctx.cancel.cancelled() => return end("closed by the appliance".into()),
    };
    let mut tunnel = Guarded::new(stream, pending, kill.clone(), counters.clone());
    // Log in upstream in parallel with the laptop's handshake, but only once
    // the laptop has said something (port probes open empty tunnels).
    let laptop_spoke = tunnel.on_first_byte();
    let up_stream = Guarded::new(upstream_tcp, Bytes::new(), kill.clone(), Arc::default());
    conn.spawn(connect_upstream(
        conn.clone(),
        laptop_spoke,
        up_stream,
        up_tx,
    ));

    let config = Arc::new(server_config(
        (*host_key).clone(),
        &settings,
        laptop_ciphers(client_id.as_deref()),
    ));
    let front = server::Front::new(conn.clone());
    let reason = tokio::select! {
        r = russh::server::run_stream(config, tunnel, front) => match r {
            Ok(running) => {
                let handle = running.handle();
                tokio::select! {
                    r = running => match r {
                        Ok(()) => "client closed".to_string(),
                        Err(e) => format!("ssh session ended: {e}"),
                    },
                    _ = ctx.cancel.cancelled() => {
                        // Tell the client why, briefly; the streams die right after.
                        let bye = handle.disconnect(
                            russh::Disconnect::ByApplication,
                            "closed by the access appliance (access revoked or appliance shutting down)".into(),
                            "en".into(),
                        );
                        let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        "closed by the appliance".to_string()
                    }
                }
            }
            Err(e) => format!("ssh handshake failed: {e}"),
        },
        _ = ctx.cancel.cancelled() => "closed by the appliance".to_string(),
    };
    kill.cancel();
    let tasks = std::mem::take(&mut *conn.tasks.lock().unwrap_or_else(|e| e.into_inner()));
    let drain = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN, drain).await;
    end(reason)
}

/// Logs in upstream and publishes the outcome to the channel tasks.
async fn connect_upstream(
    conn: Arc<Conn>,
    laptop_spoke: tokio::sync::oneshot::Receiver<()>,
    stream: Guarded<TcpStream>,
    tx: watch::Sender<UpstreamState>,
) {
    if laptop_spoke.await.is_err() {
        return;
    }
    let result = login(&conn, stream).await;
    if conn.kill.is_cancelled() {
        return;
    }
    let state = match result {
        Ok(h) => Ok(Arc::new(h)),
        Err(e) => {
            tracing::warn!(session = %conn.session_id, connection = %conn.connection.name, error = %e, "ssh upstream refused");
            let mut rec = conn
                .audit(AuditKind::SshUpstreamRefused)
                .outcome(e.outcome())
                .reason(e.to_string());
            if let UpstreamError::HostKeyMismatch {
                presented,
                expected,
            } = &e
            {
                rec =
                    rec.detail(serde_json::json!({ "presented": presented, "expected": expected }));
            }
            conn.record(rec).await;
            Err(e.to_string())
        }
    };
    let _ = tx.send(Some(state));
}

async fn login(conn: &Conn, stream: Guarded<TcpStream>) -> Result<UpstreamHandle, UpstreamError> {
    let Some(user) = conn.settings.user.clone() else {
        return Err(UpstreamError::NotConfigured(conn.connection.name.clone()));
    };
    let credential = upstream::credential(&conn.connection, &conn.shared.secrets)?;
    let secret_name = conn
        .connection
        .secrets
        .get("private_key")
        .cloned()
        .unwrap_or_default();
    let login = upstream::establish(stream, &conn.settings, &user, credential, &secret_name);
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(30), login) => match r {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Protocol("no answer from the upstream within 30 s".into())),
        },
        _ = conn.kill.cancelled() => Err(UpstreamError::Protocol("the session ended".into())),
    }
}

/// Longest identification line read ahead of russh (RFC 4253 allows 255).
const MAX_ID_LINE: usize = 512;
/// How long to wait for the client's identification line before choosing
/// algorithms without it (clients send it at once; this bounds odd ones).
const ID_WAIT: Duration = Duration::from_secs(2);

/// Reads the laptop client's identification line (`SSH-2.0-OpenSSH_9.2p1
/// ...`) ahead of russh; returns every byte read (to be replayed) and the
/// line, if one arrived in time.
async fn peek_client_id(stream: &mut TunnelStream, pending: Bytes) -> (Bytes, Option<String>) {
    use tokio::io::AsyncReadExt;
    let mut buf = pending.to_vec();
    let deadline = tokio::time::Instant::now() + ID_WAIT;
    let mut chunk = [0u8; MAX_ID_LINE];
    while !buf.contains(&b'\n') && buf.len() < MAX_ID_LINE {
        let want = MAX_ID_LINE - buf.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let line = buf
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| String::from_utf8_lossy(&buf[..i]).trim_end().to_string());
    (Bytes::from(buf), line)
}

/// Ciphers offered to the laptop. The client's preference decides, and
/// OpenSSH puts ChaCha20-Poly1305 first, whose Poly1305 costs the appliance
/// several times AES-GCM (measured: a quarter of the gateway's CPU). OpenSSH
/// 6.2 and later all do AES-GCM, so they are offered only that; any other
/// client gets the full list.
fn laptop_ciphers(client_id: Option<&str>) -> &'static [russh::cipher::Name] {
    use russh::cipher;
    const GCM: &[cipher::Name] = &[cipher::AES_128_GCM, cipher::AES_256_GCM];
    let openssh = client_id
        .and_then(|id| id.strip_prefix("SSH-2.0-OpenSSH_"))
        .and_then(|v| {
            let mut it = v.split(|c: char| !c.is_ascii_digit());
            let major: u32 = it.next()?.parse().ok()?;
            let minor: u32 = it.next()?.parse().ok()?;
            Some((major, minor))
        });
    match openssh {
        Some(v) if v >= (6, 2) => GCM,
        _ => CIPHERS,
    }
}

/// Ciphers in preference order: AES-GCM first, it costs least here.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Algorithm preferences (the laptop leg narrows the ciphers, see
/// [`laptop_ciphers`]).
fn preferred() -> Preferred {
    Preferred {
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        ..Preferred::default()
    }
}

fn server_config(
    key: russh::keys::PrivateKey,
    settings: &SshSettings,
    ciphers: &'static [russh::cipher::Name],
) -> russh::server::Config {
    use russh::{MethodKind, MethodSet};
    let methods = MethodSet::from(
        &[
            MethodKind::None,
            MethodKind::PublicKey,
            MethodKind::Password,
        ][..],
    );
    let keepalive =
        (settings.keepalive_secs > 0).then(|| Duration::from_secs(settings.keepalive_secs));
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-hoop_appliance".into()),
        methods,
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_BUFFER,
        event_buffer_size: 64,
        inactivity_timeout: None,
        keepalive_interval: keepalive,
        keepalive_max: 3,
        nodelay: true,
        preferred: Preferred {
            cipher: std::borrow::Cow::Borrowed(ciphers),
            ..preferred()
        },
        ..Default::default()
    }
}

/// A signal's SSH name (`TERM`, `KILL`, ...).
pub(crate) fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => c.as_str(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_gets_aes_gcm_only_others_everything() {
        let gcm = laptop_ciphers(Some("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"));
        assert!(gcm.iter().all(|c| c.as_ref().contains("gcm")), "{gcm:?}");
        assert_eq!(laptop_ciphers(Some("SSH-2.0-OpenSSH_6.2")), gcm);
        assert_eq!(laptop_ciphers(Some("SSH-2.0-OpenSSH_6.1")), CIPHERS);
        assert_eq!(laptop_ciphers(Some("SSH-2.0-paramiko_3.4.0")), CIPHERS);
        assert_eq!(laptop_ciphers(Some("SSH-2.0-PuTTY_Release_0.80")), CIPHERS);
        assert_eq!(laptop_ciphers(None), CIPHERS);
    }
}
