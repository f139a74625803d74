//! The channel bridge: one task per laptop channel, tied to one upstream
//! channel. The up side takes the channel's lane (what the laptop sent, in
//! order) and replays it upstream; the down side reads the upstream channel
//! and writes to the laptop, waiting for the laptop's SSH window. Recording,
//! SFTP auditing and interactive command checks hang off these two loops;
//! the channel's audit record is written when both have ended.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use russh::{
    client, server, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf,
};
use tokio_util::sync::CancellationToken;

use super::controls::{self, LineTracker, Typed};
use super::lane::{FrontEvent, LaneRx, Pressure, Start};
use super::record::{CastHeader, Recorder};
use super::sftp::{SftpOp, SftpTracker};
use super::Conn;
use crate::audit::AuditKind;

type LaptopWrite = ChannelWriteHalf<server::Msg>;
type UpWrite = ChannelWriteHalf<client::Msg>;

/// Where a `direct-tcpip` channel goes.
#[derive(Debug, Clone)]
pub struct Forward {
    pub host: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

/// The laptop end of a channel.
struct Laptop {
    write: LaptopWrite,
    handle: Option<server::Handle>,
    id: ChannelId,
    /// Fires when the laptop closed the channel (or the session is killed):
    /// writes towards it stop waiting for window.
    closed: CancellationToken,
    pressure: Arc<Pressure>,
}

impl Laptop {
    async fn guard<E>(&self, f: impl std::future::Future<Output = Result<(), E>>) -> bool {
        tokio::select! {
            r = f => r.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }
    async fn data(&self, b: Bytes) -> bool {
        self.guard(self.pressure.track(self.write.data_bytes(b)))
            .await
    }
    async fn ext(&self, code: u32, b: Bytes) -> bool {
        self.guard(self.pressure.track(self.write.extended_data_bytes(code, b)))
            .await
    }
    /// Ends the channel with a message on stderr and an exit status.
    async fn fail(&self, message: &str, pty: bool, status: u32) {
        let eol = if pty { "\r\n" } else { "\n" };
        self.ext(1, Bytes::from(format!("appliance: {message}{eol}")))
            .await;
        let _ = self.write.exit_status(status).await;
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }
}

/// What the two loops learn about the channel, for its audit record.
#[derive(Default)]
struct RunInfo {
    start: Option<Start>,
    pty: Option<(String, u32, u32)>,
    up: u64,
    down: u64,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    upstream_failure: bool,
}

#[derive(Default)]
struct ChanShared {
    info: Mutex<RunInfo>,
    recorder: OnceLock<Recorder>,
    sftp: Mutex<Option<SftpTracker>>,
    /// Fires when the upstream channel has ended.
    done: CancellationToken,
}

impl ChanShared {
    fn info(&self) -> std::sync::MutexGuard<'_, RunInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sftp(&self, f: impl FnOnce(&mut SftpTracker) -> Vec<SftpOp>) -> Vec<SftpOp> {
        let mut g = self.sftp.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().map(f).unwrap_or_default()
    }
}

/// Bridges one session channel (shell, exec, subsystem).
pub async fn session_channel(
    conn: Arc<Conn>,
    id: ChannelId,
    write: LaptopWrite,
    handle: server::Handle,
    mut rx: LaneRx,
) {
    let laptop = Laptop {
        write,
        handle: Some(handle),
        id,
        closed: conn.kill.child_token(),
        pressure: conn.pressure.clone(),
    };
    let upstream = match conn.upstream().await {
        Ok(u) => u,
        Err(message) => return refuse_session(&conn, &laptop, &mut rx, &message).await,
    };
    let chan = match upstream.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("the upstream did not open a session channel: {e}");
            return refuse_session(&conn, &laptop, &mut rx, &msg).await;
        }
    };
    let (up_read, up_write) = chan.split();
    let sh = ChanShared::default();
    let started = Instant::now();
    tokio::join!(
        up_loop(&conn, &laptop, &up_write, &sh, &mut rx),
        down_loop(&conn, &laptop, up_read, &sh),
    );
    let leftovers = sh.sftp(|t| t.finish());
    audit_sftp(&conn, leftovers).await;
    audit_session(&conn, &sh, started).await;
}

/// Bridges one `direct-tcpip` channel (`ssh -L`), already allowed by policy.
pub async fn forward_channel(
    conn: Arc<Conn>,
    write: LaptopWrite,
    reply: server::ChannelOpenHandle,
    target: Forward,
    mut rx: LaneRx,
) {
    let detail = serde_json::json!({
        "host": target.host, "port": target.port,
        "originator": format!("{}:{}", target.originator, target.originator_port),
    });
    let opened = match conn.upstream().await {
        Ok(up) => up
            .channel_open_direct_tcpip(
                target.host.clone(),
                target.port,
                target.originator.clone(),
                target.originator_port,
            )
            .await
            .map_err(|e| {
                format!(
                    "the upstream could not connect to {}:{}: {e}",
                    target.host, target.port
                )
            }),
        Err(message) => Err(message),
    };
    let chan = match opened {
        Ok(c) => c,
        Err(reason) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            let rec = conn
                .audit(AuditKind::SshForward)
                .outcome("error")
                .reason(reason)
                .detail(detail);
            conn.record(rec).await;
            return;
        }
    };
    reply.accept().await;
    let laptop = Laptop {
        id: write.id(),
        write,
        handle: None,
        closed: conn.kill.child_token(),
        pressure: conn.pressure.clone(),
    };
    let (up_read, up_write) = chan.split();
    let sh = ChanShared::default();
    let started = Instant::now();
    tokio::join!(
        up_loop(&conn, &laptop, &up_write, &sh, &mut rx),
        down_loop(&conn, &laptop, up_read, &sh),
    );
    let (up, down) = {
        let i = sh.info();
        (i.up, i.down)
    };
    let rec = conn
        .audit(AuditKind::SshForward)
        .outcome("ok")
        .bytes(up, down)
        .duration(started.elapsed())
        .detail(detail);
    conn.record(rec).await;
}

/// A command held by `hold_commands`: files the approval request, tells the
/// person on stderr, and waits. `Ok` runs it; `Err` is why it did not run.
async fn hold_command(
    conn: &Conn,
    laptop: &Laptop,
    command: &str,
    pattern: &str,
    pty: bool,
) -> Result<(), String> {
    use crate::approvals::{approve_hint, ApprovalOutcome, ApprovalRequest};
    let group = conn.settings.approvers_group.clone().unwrap_or_default();
    let fingerprint = tunnel_lite::tls::hex(
        ring::digest::digest(&ring::digest::SHA256, command.as_bytes()).as_ref(),
    );
    let approvals = &conn.shared.approvals;
    if approvals.reusable(&conn.identity.user, &conn.connection.name, &fingerprint) {
        return Ok(());
    }
    let request = ApprovalRequest {
        user: conn.identity.user.clone(),
        groups: conn.identity.groups.clone(),
        connection: conn.connection.name.clone(),
        session_id: conn.session_id.clone(),
        kind: "command".into(),
        text: command.to_string(),
        fingerprint,
        approvers_group: group.clone(),
        timeout: conn.settings.approval_timeout,
        reuse_window: conn.settings.approval_reuse_window,
        policy_version: conn.policy_version(),
    };
    let (id, pending) = approvals.request(request).await.map_err(|e| {
        format!("command held by {pattern:?}, but the approval request failed: {e}")
    })?;
    let eol = if pty { "\r\n" } else { "\n" };
    let notice = format!(
        "appliance: command held for approval {id} (matches {pattern:?}); approvers: {group}; approve with: {}{eol}",
        approve_hint(&id)
    );
    laptop.ext(1, Bytes::from(notice)).await;
    let outcome = tokio::select! {
        o = pending.outcome() => o,
        _ = laptop.closed.cancelled() => {
            let _ = approvals.withdraw(&id).await;
            ApprovalOutcome::Withdrawn
        }
        _ = conn.kill.cancelled() => {
            let _ = approvals.withdraw(&id).await;
            ApprovalOutcome::Withdrawn
        }
    };
    match outcome {
        ApprovalOutcome::Approved { .. } => Ok(()),
        other => Err(format!(
            "approval {id} {}; the command did not run",
            other.describe()
        )),
    }
}

/// The upstream is unusable: wait for the request that starts the channel
/// (so the client listens), then explain on stderr and exit 255.
async fn refuse_session(conn: &Conn, laptop: &Laptop, rx: &mut LaneRx, message: &str) {
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut pty = false;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(FrontEvent::Start(_) | FrontEvent::Denied { .. } | FrontEvent::Held { .. }) => break,
                Some(FrontEvent::Pty { .. }) => pty = true,
                Some(FrontEvent::Close) | None => return,
                Some(_) => {}
            },
            _ = &mut deadline => break,
            _ = conn.kill.cancelled() => return,
        }
    }
    laptop.fail(message, pty, 255).await;
}

/// Laptop -> upstream: replays the lane.
async fn up_loop(conn: &Conn, laptop: &Laptop, up: &UpWrite, sh: &ChanShared, rx: &mut LaneRx) {
    let mut lines: Option<LineTracker> = None;
    loop {
        let ev = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            _ = sh.done.cancelled() => {
                let _ = up.close().await;
                break;
            }
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        let sent = match ev {
            FrontEvent::Data(b) => {
                sh.info().up += b.len() as u64;
                if let Some(rec) = sh.recorder.get().filter(|_| conn.settings.record_input) {
                    rec.input(b.clone()).await;
                }
                let ops = sh.sftp(|t| t.client_bytes(&b));
                audit_sftp(conn, ops).await;
                match lines.as_mut() {
                    Some(t) => typed(conn, laptop, up, t, b, sh).await,
                    None => up_send(conn, sh, up.data_bytes(b)).await,
                }
            }
            FrontEvent::ExtData(code, b) => {
                sh.info().up += b.len() as u64;
                up_send(conn, sh, up.extended_data_bytes(code, b)).await
            }
            FrontEvent::Eof => up.eof().await.is_ok(),
            FrontEvent::Close => {
                laptop.closed.cancel();
                let _ = up.close().await;
                break;
            }
            FrontEvent::Pty {
                term,
                cols,
                rows,
                pix_w,
                pix_h,
                modes,
            } => {
                let r = up
                    .request_pty(false, &term, cols, rows, pix_w, pix_h, &modes)
                    .await;
                sh.info().pty = Some((term, cols, rows));
                r.is_ok()
            }
            FrontEvent::Env { name, value } => up.set_env(false, name, value).await.is_ok(),
            FrontEvent::WindowChange {
                cols,
                rows,
                pix_w,
                pix_h,
            } => {
                if let Some(rec) = sh.recorder.get() {
                    rec.resize(cols, rows).await;
                }
                up.window_change(cols, rows, pix_w, pix_h).await.is_ok()
            }
            FrontEvent::Signal(sig) => up.signal(sig).await.is_ok(),
            FrontEvent::Start(start) => {
                let pty = sh.info().pty.clone();
                sh.info().start = Some(start.clone());
                let (what, command) = match &start {
                    Start::Shell => ("shell", None),
                    Start::Exec(cmd) => ("exec", Some(String::from_utf8_lossy(cmd).into_owned())),
                    Start::Subsystem(name) => ("subsystem", Some(name.clone())),
                };
                if !conn.gate(what, command.as_deref()).await {
                    let msg = "the audit trail is unavailable, and strict audit mode forwards nothing unrecorded";
                    laptop.fail(msg, pty.is_some(), 255).await;
                    laptop.closed.cancel();
                    let _ = up.close().await;
                    break;
                }
                match start {
                    Start::Shell => {
                        if let (Some(pty), true) = (&pty, conn.settings.record) {
                            start_recording(conn, sh, pty).await;
                        }
                        if pty.is_some() && !conn.settings.deny_commands.is_empty() {
                            lines = Some(LineTracker::default());
                        }
                        up.request_shell(true).await.is_ok()
                    }
                    Start::Exec(cmd) => up.exec(true, cmd).await.is_ok(),
                    Start::Subsystem(name) => {
                        if name == "sftp" {
                            *sh.sftp.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(SftpTracker::default());
                        }
                        up.request_subsystem(true, name).await.is_ok()
                    }
                }
            }
            FrontEvent::Held { command, pattern } => {
                let pty = sh.info().pty.is_some();
                let text = String::from_utf8_lossy(&command).into_owned();
                match hold_command(conn, laptop, &text, &pattern, pty).await {
                    Ok(()) => {
                        sh.info().start = Some(Start::Exec(command.clone()));
                        if !conn.gate("exec", Some(&text)).await {
                            let msg = "the audit trail is unavailable, and strict audit mode forwards nothing unrecorded";
                            laptop.fail(msg, pty, 255).await;
                            laptop.closed.cancel();
                            let _ = up.close().await;
                            break;
                        }
                        up.exec(true, command).await.is_ok()
                    }
                    Err(reason) => {
                        laptop.fail(&reason, pty, 126).await;
                        laptop.closed.cancel();
                        let _ = up.close().await;
                        break;
                    }
                }
            }
            FrontEvent::Denied { command, pattern } => {
                deny(conn, &command, &pattern, "exec").await;
                let pty = sh.info().pty.is_some();
                let msg =
                    format!("command refused by the access policy (matches {pattern:?}); not run");
                laptop.fail(&msg, pty, 126).await;
                laptop.closed.cancel();
                let _ = up.close().await;
                break;
            }
        };
        if !sent {
            break;
        }
    }
}

/// Sends towards the upstream unless the session dies or the channel ends
/// first (a stopped upstream never opens its window again).
async fn up_send<E>(
    conn: &Conn,
    sh: &ChanShared,
    f: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    tokio::select! {
        r = f => r.is_ok(),
        _ = conn.kill.cancelled() => false,
        _ = sh.done.cancelled() => false,
    }
}

/// Typed input of an interactive shell with deny patterns: a completed line
/// that matches is erased (Ctrl-U) instead of entered, and the person told.
async fn typed(
    conn: &Conn,
    laptop: &Laptop,
    up: &UpWrite,
    t: &mut LineTracker,
    b: Bytes,
    sh: &ChanShared,
) -> bool {
    let (mut from, mut sent_to) = (0usize, 0usize);
    while let Typed::Line { end, line } = t.feed(&b, from) {
        from = end + 1;
        let Some(line) = line else { continue };
        let Some(pattern) = controls::denied_command(&conn.settings.deny_commands, &line) else {
            continue;
        };
        if !up_send(conn, sh, up.data_bytes(b.slice(sent_to..end))).await
            || !up_send(conn, sh, up.data_bytes(Bytes::from_static(b"\x15\r"))).await
        {
            return false;
        }
        sent_to = end + 1;
        let msg = format!("\r\n[appliance] command refused by the access policy (matches {pattern:?}); not run\r\n");
        laptop.data(Bytes::from(msg)).await;
        deny(conn, &line, pattern, "interactive").await;
    }
    if sent_to < b.len() {
        return up_send(conn, sh, up.data_bytes(b.slice(sent_to..))).await;
    }
    true
}

async fn deny(conn: &Conn, command: &str, pattern: &str, mode: &str) {
    tracing::info!(session = %conn.session_id, user = %conn.identity.user, command, pattern, "ssh command denied");
    let rec = conn
        .audit(AuditKind::SshCommandDenied)
        .outcome("denied")
        .reason(format!("matches deny pattern {pattern:?}"))
        .detail(serde_json::json!({ "command": command, "pattern": pattern, "mode": mode }));
    conn.record(rec).await;
}

async fn start_recording(conn: &Conn, sh: &ChanShared, pty: &(String, u32, u32)) {
    let id = format!("{}-{}", conn.session_id, conn.next_seq());
    let header = CastHeader {
        version: 2,
        // A client without a terminal reports 0x0.
        width: if pty.1 == 0 { 80 } else { pty.1.min(1000) },
        height: if pty.2 == 0 { 24 } else { pty.2.min(1000) },
        timestamp: (crate::audit::now_ms() / 1000).max(0) as u64,
        title: format!(
            "{} on {} (session {})",
            conn.identity.user, conn.connection.name, conn.session_id
        ),
        env: serde_json::json!({ "TERM": pty.0, "SHELL": "/bin/sh" }),
    };
    match Recorder::start(&conn.shared.cfg.data_dir, &id, &header) {
        Ok(rec) => {
            let _ = sh.recorder.set(rec);
        }
        Err(e) => {
            tracing::error!(session = %conn.session_id, error = %e, "cannot record the session")
        }
    }
}

/// Upstream -> laptop.
async fn down_loop(conn: &Conn, laptop: &Laptop, mut up: ChannelReadHalf, sh: &ChanShared) {
    loop {
        let msg = tokio::select! {
            m = up.wait() => m,
            _ = conn.kill.cancelled() => None,
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } => {
                sh.info().down += data.len() as u64;
                if let Some(rec) = sh.recorder.get() {
                    rec.output(data.clone()).await;
                }
                let ops = sh.sftp(|t| t.server_bytes(&data));
                audit_sftp(conn, ops).await;
                laptop.data(data).await;
            }
            ChannelMsg::ExtendedData { data, ext } => {
                sh.info().down += data.len() as u64;
                if let Some(rec) = sh.recorder.get() {
                    rec.output(data.clone()).await;
                }
                laptop.ext(ext, data).await;
            }
            ChannelMsg::Eof => {
                laptop.guard(laptop.write.eof()).await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                sh.info().exit_status = Some(exit_status);
                laptop.guard(laptop.write.exit_status(exit_status)).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                sh.info().exit_signal = Some(super::signal_name(&signal_name));
                if let Some(h) = &laptop.handle {
                    let f = h.exit_signal_request(
                        laptop.id,
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    );
                    laptop.guard(f).await;
                }
            }
            ChannelMsg::Failure => {
                // Only the request that starts the channel asks for a reply.
                sh.info().upstream_failure = true;
                let pty = sh.info().pty.is_some();
                laptop
                    .fail("the upstream refused the request", pty, 1)
                    .await;
                break;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    sh.done.cancel();
    if !laptop.closed.is_cancelled() {
        let _ = laptop.write.close().await;
    }
}

async fn audit_sftp(conn: &Conn, ops: Vec<SftpOp>) {
    for op in ops {
        let outcome = match op.status {
            None | Some(0) => "ok",
            Some(_) => "error",
        };
        let mut detail = serde_json::json!({ "op": op.op, "path": op.path });
        if let Some(t) = &op.target {
            detail["target"] = t.clone().into();
        }
        if !op.mode.is_empty() {
            detail["mode"] = op.mode.into();
        }
        if let Some(s) = op.status {
            detail["status"] = s.into();
        }
        let mut rec = conn
            .audit(AuditKind::SshSftp)
            .outcome(outcome)
            .detail(detail);
        match op.op {
            "read" => rec = rec.bytes(0, op.bytes),
            "write" => rec = rec.bytes(op.bytes, 0),
            _ => {}
        }
        conn.record(rec).await;
    }
}

async fn audit_session(conn: &Conn, sh: &ChanShared, started: Instant) {
    let recording = sh.recorder.get().map(|r| r.id.clone());
    let info = std::mem::take(&mut *sh.info());
    let Some(start) = info.start else { return };
    let outcome = if info.upstream_failure { "error" } else { "ok" };
    let (kind, detail) = match &start {
        Start::Shell => (
            AuditKind::SshShell,
            serde_json::json!({
                "recording": recording,
                "input_recorded": recording.is_some() && conn.settings.record_input,
                "term": info.pty.as_ref().map(|p| p.0.clone()),
                "exit_status": info.exit_status,
                "exit_signal": info.exit_signal,
            }),
        ),
        Start::Exec(cmd) => (
            AuditKind::SshExec,
            serde_json::json!({
                "command": String::from_utf8_lossy(cmd),
                "exit_status": info.exit_status,
                "exit_signal": info.exit_signal,
                "pty": info.pty.is_some(),
            }),
        ),
        Start::Subsystem(name) => (
            AuditKind::SshExec,
            serde_json::json!({
                "subsystem": name,
                "exit_status": info.exit_status,
                "exit_signal": info.exit_signal,
            }),
        ),
    };
    let rec = conn
        .audit(kind)
        .outcome(outcome)
        .bytes(info.up, info.down)
        .duration(started.elapsed())
        .detail(detail);
    conn.record(rec).await;
}
