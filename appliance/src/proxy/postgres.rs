//! `kind = "postgres"`: terminates the PostgreSQL protocol. The appliance
//! answers the client's startup itself (the tunnel identified the person),
//! logs in upstream with the injected or ephemeral credential, then relays
//! frames both ways and audits every statement under the person's name.
//!
//! Layout: `codec` (bytes <-> messages), `client` (laptop startup phase),
//! `upstream` (TLS and authentication), `relay` (the I/O loop), `tracker`
//! (which statement finished how: pure), `cancel` (cancel keys),
//! `ephemeral` (per-session roles), `error` (what the client sees).

pub mod cancel;
pub mod classify;
pub mod client;
pub mod codec;
pub mod controls;
pub mod ephemeral;
pub mod error;
pub mod guard;
pub mod hold;
pub mod mask;
pub mod masker;
pub mod relay;
mod relay_masked;
pub mod sideconn;
pub mod tracker;
pub mod upstream;

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use self::cancel::CancelTarget;
use self::client::ClientHello;
use self::codec::{Diagnostic, ProtocolVersion, Severity};
use self::error::PgError;
use self::relay::{Direction, Stop};
use self::tracker::StatementEvent;
use super::{SessionContext, SessionEnd, TunnelStream};
use crate::audit::AuditKind;
use crate::policy::kinds::postgres::CredentialMode;
use crate::policy::{KindSettings, PostgresSettings};

/// Whether this build serves the kind.
pub const SERVED: bool = true;

/// After the client's Terminate, how long the server may take to finish
/// sending (and close) before the session is torn down.
const CLIENT_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn end(reason: impl Into<String>, up: u64, down: u64) -> SessionEnd {
    SessionEnd {
        bytes_up: up,
        bytes_down: down,
        reason: reason.into(),
    }
}

/// Serves one admitted session.
pub async fn serve(
    mut stream: TunnelStream,
    upstream: Option<TcpStream>,
    pending: Bytes,
    ctx: &SessionContext,
) -> SessionEnd {
    let settings = match &ctx.connection.settings {
        KindSettings::Postgres(s) => s.clone(),
        _ => PostgresSettings::default(),
    };
    let Some(upstream) = upstream else {
        return end("no upstream connection", 0, 0);
    };
    let mut cbuf = BytesMut::with_capacity(relay::READ_CHUNK);
    cbuf.extend_from_slice(&pending);
    let hello = tokio::select! {
        h = client::read_hello(&mut stream, &mut cbuf) => h,
        _ = ctx.cancel.cancelled() => return end("closed by the appliance before startup", 0, 0),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e) => return fail(&mut stream, &e).await,
    };
    match hello {
        ClientHello::Cancel {
            process_id,
            secret_key,
        } => forward_cancel(upstream, process_id, &secret_key, ctx).await,
        ClientHello::Startup { version, params } => {
            session(stream, upstream, cbuf, version, &params, &settings, ctx).await
        }
    }
}

/// Sends the client a FATAL ErrorResponse for `e` and ends the session.
async fn fail(stream: &mut TunnelStream, e: &PgError) -> SessionEnd {
    let mut out = Vec::new();
    e.write_error_response(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    end(e.to_string(), 0, out.len() as u64)
}

async fn forward_cancel(
    mut upstream: TcpStream,
    process_id: i32,
    key: &[u8],
    ctx: &SessionContext,
) -> SessionEnd {
    let registry = &ctx.shared.pg_cancel;
    let Some(target) = registry.lookup(process_id, key) else {
        return end("cancel request for an unknown session ignored", 0, 0);
    };
    if !target.user.eq_ignore_ascii_case(&ctx.identity.user)
        || target.connection != ctx.connection.name
    {
        tracing::warn!(user = %ctx.identity.user, owner = %target.user, "cancel request for another person's session ignored");
        return end("cancel request for another person's session ignored", 0, 0);
    }
    // A statement held for approval is withdrawn; a running one is cancelled upstream.
    target.hold_cancel.notify_waiters();
    let mut out = Vec::new();
    if codec::cancel_request(&mut out, target.upstream_process_id, &target.upstream_key).is_err() {
        return end("cancel key unusable", 0, 0);
    }
    match upstream.write_all(&out).await {
        Ok(()) => {
            let _ = upstream.shutdown().await;
            end("cancel request forwarded", 0, 0)
        }
        Err(e) => end(format!("cancel request not forwarded: {e}"), 0, 0),
    }
}

/// The parameters that go upstream: database chosen per policy, then the
/// client's parameters the policy lets through.
fn upstream_params(
    client: &[(String, String)],
    settings: &PostgresSettings,
    default_database: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let asked = client
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty());
    let database = match (&settings.database, asked) {
        (Some(forced), _) => forced.clone(),
        (None, Some(db)) => db.to_string(),
        (None, None) => default_database.to_string(),
    };
    if !settings.allowed_databases.is_empty() && !settings.allowed_databases.contains(&database) {
        return Err(PgError::NotAllowed(format!(
            "database {database:?} is not allowed on this connection (allowed: {})",
            settings.allowed_databases.join(", ")
        )));
    }
    let mut params = vec![("database".to_string(), database)];
    for (k, v) in client {
        if settings
            .startup_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case(k))
        {
            params.push((k.clone(), v.clone()));
        }
    }
    Ok(params)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    mut stream: TunnelStream,
    tcp: TcpStream,
    cbuf: BytesMut,
    version: ProtocolVersion,
    client_params: &[(String, String)],
    settings: &PostgresSettings,
    ctx: &SessionContext,
) -> SessionEnd {
    let conn = &ctx.connection;
    let masking = &settings.controls.masking;
    let detectors = if masking.is_active() {
        match mask::Detectors::new(masking, ctx.shared.mask_hash_key.as_bytes()) {
            Ok(d) => Some(d),
            Err(e) => {
                let e = PgError::NotAllowed(format!(
                    "connection {:?}: masking detectors do not compile ({e}); refusing the session rather than return unmasked data",
                    conn.name
                ));
                return fail(&mut stream, &e).await;
            }
        }
    } else {
        None
    };
    let ephemeral = match &settings.credential {
        CredentialMode::Inject => None,
        CredentialMode::Ephemeral { .. } => match ephemeral::create(ctx, settings).await {
            Ok(role) => Some(role),
            Err(e) => return fail(&mut stream, &e).await,
        },
    };
    let (user, password) = match &ephemeral {
        Some(role) => (role.name.clone(), Some(role.password.clone())),
        None => {
            let password = conn
                .secrets
                .get("password")
                .map(|name| ctx.shared.secrets.get(name).ok_or_else(|| name.clone()));
            match password {
                Some(Err(name)) => {
                    let e = PgError::MissingSecret {
                        connection: conn.name.clone(),
                        secret: name,
                    };
                    return fail(&mut stream, &e).await;
                }
                Some(Ok(p)) => (settings.user.clone(), Some(p)),
                None => (settings.user.clone(), None),
            }
        }
    };
    let params = match upstream_params(client_params, settings, &settings.user) {
        Ok(p) => p,
        Err(e) => {
            drop_ephemeral(ctx, settings, ephemeral).await;
            return fail(&mut stream, &e).await;
        }
    };
    let database = params[0].1.clone();
    let login = upstream::Login {
        connection: &conn.name,
        upstream: &conn.upstream,
        settings,
        user: &user,
        password: password.as_ref(),
        version,
        params: &params,
    };
    let up = match upstream::login(tcp, &login).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(connection = %conn.name, user = %ctx.identity.user, error = %e, "upstream login failed");
            drop_ephemeral(ctx, settings, ephemeral).await;
            return fail(&mut stream, &e).await;
        }
    };
    let key_len = if version == ProtocolVersion::V3_0 {
        4
    } else {
        32
    };
    let hold_cancel = std::sync::Arc::new(tokio::sync::Notify::new());
    let cancel_key = ctx.shared.pg_cancel.register(
        CancelTarget {
            user: ctx.identity.user.clone(),
            connection: conn.name.clone(),
            upstream_process_id: up.process_id,
            upstream_key: up.secret_key.clone(),
            hold_cancel: hold_cancel.clone(),
        },
        key_len,
    );
    // What a server would send after authentication, with our cancel key.
    let mut hello = Vec::with_capacity(up.startup_frames.len() + 64);
    hello.extend_from_slice(&up.negotiate_frames);
    codec::authentication_ok(&mut hello);
    hello.extend_from_slice(&up.startup_frames);
    if key_len == 4 {
        let k = &cancel_key.secret_key;
        codec::backend_key_data(&mut hello, cancel_key.process_id, [k[0], k[1], k[2], k[3]]);
    } else if codec::backend_key_data_var(&mut hello, cancel_key.process_id, &cancel_key.secret_key)
        .is_err()
    {
        return end("internal: cancel key", 0, 0);
    }
    codec::ready_for_query(&mut hello, up.status);
    if let Err(e) = stream.write_all(&hello).await {
        drop_ephemeral(ctx, settings, ephemeral).await;
        return end(format!("client went away during startup: {e}"), 0, 0);
    }
    tracing::info!(connection = %conn.name, user = %ctx.identity.user, role = %user, %database, "postgres session ready");

    let shared = relay::Shared::new(settings.max_message_bytes, detectors.is_some());
    let masker = detectors.map(|d| {
        masker::Masker::new(
            &masking.columns,
            d,
            masker::CatalogLogin {
                connection: &conn.name,
                upstream: &conn.upstream,
                settings,
                user: &user,
                password: password.as_ref(),
                database: &database,
                timeout: ctx.shared.cfg.upstream_connect_timeout,
            },
        )
    });
    shared
        .bytes_down
        .fetch_add(hello.len() as u64, Ordering::Relaxed);
    let controls = controls::Controls::new(
        std::sync::Arc::new(settings.controls.clone()),
        ctx.identity.groups.clone(),
        ctx.policy_version,
    );
    let stop = run_relay(
        stream,
        up.stream,
        cbuf,
        up.leftover,
        &shared,
        ctx,
        &database,
        controls,
        hold_cancel,
        masker,
    )
    .await;
    drop(cancel_key);
    let mut left = Vec::new();
    let reason = stop.to_string();
    shared
        .tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(std::time::Instant::now(), &reason, &mut left);
    audit_statements(ctx, &database, left).await;
    drop_ephemeral(ctx, settings, ephemeral).await;
    end(
        reason,
        shared.bytes_up.load(Ordering::Relaxed),
        shared.bytes_down.load(Ordering::Relaxed),
    )
}

async fn drop_ephemeral(
    ctx: &SessionContext,
    settings: &PostgresSettings,
    role: Option<ephemeral::EphemeralRole>,
) {
    if let Some(role) = role {
        if let Err(e) = ephemeral::drop_role(ctx, settings, &role.name).await {
            tracing::error!(role = %role.name, error = %e, "dropping an ephemeral role failed; the sweeper will retry");
        }
    }
}

/// How the relay ended, as the session's end reason.
enum RelayEnd {
    ClientClosed,
    UpstreamClosed,
    Cancelled,
    ClientProtocol(codec::CodecError),
    UpstreamProtocol(codec::CodecError),
    /// Masking could not account for a result.
    MaskingRefused(String),
    Io(std::io::Error),
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::ClientClosed => f.write_str("client closed"),
            RelayEnd::UpstreamClosed => f.write_str("upstream connection lost"),
            RelayEnd::Cancelled => f.write_str("closed by the appliance"),
            RelayEnd::ClientProtocol(e) => write!(f, "protocol violation from the client: {e}"),
            RelayEnd::UpstreamProtocol(e) => {
                write!(f, "protocol violation from the upstream server: {e}")
            }
            RelayEnd::MaskingRefused(r) => write!(f, "closed by masking: {r}"),
            RelayEnd::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_relay(
    client: TunnelStream,
    upstream: upstream::UpstreamStream,
    mut cbuf: BytesMut,
    mut ubuf: BytesMut,
    shared: &relay::Shared,
    ctx: &SessionContext,
    database: &str,
    controls: controls::Controls,
    hold_cancel: std::sync::Arc<tokio::sync::Notify>,
    mut masker: Option<masker::Masker<'_>>,
) -> RelayEnd {
    let (notice_tx, mut notice_rx) = tokio::sync::mpsc::channel(16);
    let mut up_controls = relay::UpControls {
        controls,
        ctx,
        notices: notice_tx,
        cancelled: hold_cancel,
        database: database.to_string(),
    };
    let (mut cr, mut cw): (ReadHalf<TunnelStream>, WriteHalf<TunnelStream>) =
        tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    ubuf.reserve(relay::READ_CHUNK);
    let flush_audit = || async {
        let events = shared.take_events();
        if !events.is_empty() {
            audit_statements(ctx, database, events).await;
        }
    };
    let outcome = {
        let up = relay::pump_up(
            &mut cr,
            &mut uw,
            &mut cbuf,
            shared,
            &mut up_controls,
            flush_audit,
        );
        let down = async {
            match masker.as_mut() {
                Some(m) => {
                    relay_masked::pump_masked(
                        &mut ur,
                        &mut cw,
                        &mut ubuf,
                        shared,
                        m,
                        &mut notice_rx,
                        flush_audit,
                    )
                    .await
                }
                None => {
                    relay::pump(
                        &mut ur,
                        &mut cw,
                        &mut ubuf,
                        Direction::Down,
                        shared,
                        Some(&mut notice_rx),
                        flush_audit,
                    )
                    .await
                }
            }
        };
        tokio::pin!(up, down);
        let down_stop = |s: Stop| match s {
            Stop::Closed => RelayEnd::UpstreamClosed,
            Stop::Protocol(e) => RelayEnd::UpstreamProtocol(e),
            Stop::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                RelayEnd::UpstreamClosed
            }
            Stop::Refused(r) => RelayEnd::MaskingRefused(r),
            Stop::Io(e) => RelayEnd::Io(e),
        };
        tokio::select! {
            s = &mut up => match s {
                // The client is done (Terminate or end of stream): let what the
                // server still sends reach it, then end.
                Stop::Closed => {
                    let _ = tokio::time::timeout(CLIENT_CLOSE_GRACE, &mut down).await;
                    RelayEnd::ClientClosed
                }
                Stop::Protocol(e) => RelayEnd::ClientProtocol(e),
                Stop::Refused(r) => RelayEnd::MaskingRefused(r),
                Stop::Io(e) => RelayEnd::Io(e),
            },
            s = &mut down => down_stop(s),
            _ = ctx.cancel.cancelled() => RelayEnd::Cancelled,
        }
    };
    // Tell the client why, in its own protocol, where it is still listening.
    let notice = match &outcome {
        RelayEnd::ClientProtocol(e) => Some(("08P01", format!("protocol violation: {e}"))),
        RelayEnd::UpstreamProtocol(e) => Some((
            "08P01",
            format!("the upstream server sent malformed data: {e}"),
        )),
        RelayEnd::MaskingRefused(r) => Some((
            "42501",
            format!("terminating connection: masking could not check a result ({r}); the session is closed rather than return unmasked data"),
        )),
        RelayEnd::UpstreamClosed => Some((
            "08006",
            format!(
                "the connection to the upstream of {:?} was lost",
                ctx.connection.name
            ),
        )),
        RelayEnd::Cancelled => Some((
            "57P01",
            format!(
                "terminating connection: the appliance closed this session ({})",
                ctx.cancel_reason()
            ),
        )),
        _ => None,
    };
    if let Some((state, message)) = notice {
        let mut out = Vec::new();
        if codec::error_response(&mut out, &Diagnostic::new(Severity::Fatal, state, &message))
            .is_ok()
        {
            let _ = cw.write_all(&out).await;
        }
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    if let Some(m) = masker {
        m.close().await;
    }
    outcome
}

/// One audit record per finished statement.
async fn audit_statements(ctx: &SessionContext, database: &str, events: Vec<StatementEvent>) {
    for ev in events {
        let mut detail = serde_json::json!({
            "database": database,
            "protocol": ev.kind.as_str(),
        });
        let d = &mut detail;
        if let Some(t) = &ev.text {
            d["statement"] = serde_json::Value::from(&**t);
        }
        if let Some(s) = &ev.statement {
            d["prepared"] = serde_json::Value::from(s.as_str());
        }
        if let Some(p) = ev.params {
            d["params"] = serde_json::Value::from(p);
        }
        if !ev.tags.is_empty() {
            d["tags"] = serde_json::Value::from(ev.tags.clone());
        }
        if let Some(r) = ev.rows {
            d["rows"] = serde_json::Value::from(r);
        }
        if let Some(s) = &ev.sqlstate {
            d["sqlstate"] = serde_json::Value::from(s.as_str());
        }
        if let Some(c) = &ev.control {
            d["control"] = c.clone();
        }
        let mut rec = ctx
            .audit_record(AuditKind::Statement)
            .duration(ev.duration)
            .outcome(ev.outcome)
            .detail(detail);
        if let Some(e) = ev.error {
            rec = rec.reason(e);
        }
        if ctx.shared.audit.record(rec).await.is_err() {
            tracing::error!("audit writer is gone; statement record lost");
        }
    }
}
