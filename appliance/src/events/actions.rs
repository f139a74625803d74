//! Running one action of a route, and describing its outcome for the audit
//! trail. Webhooks and runbooks have hard timeouts; none of this runs on a
//! session's task.
//!
//! Webhook signature: `X-Hoop-Signature: sha256=<hex>` where the MAC is
//! HMAC-SHA256 with the route's secret over `"<X-Hoop-Timestamp>.<body>"`
//! (the timestamp is unix seconds, so a receiver can refuse old replays).
//! `X-Hoop-Delivery` is stable across retries (`<record id>/<route>/<n>`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::ship::http::Target;
use crate::audit::StoredRecord;
use crate::policy::routes::Action;
use crate::secrets::SecretStore;
use crate::sessions::SessionRegistry;

/// Output captured from a runbook, per stream.
pub const MAX_OUTPUT: usize = 16 * 1024;

/// What an action needs from the appliance.
#[derive(Clone)]
pub struct ActionEnv {
    pub secrets: SecretStore,
    pub sessions: SessionRegistry,
    /// Live sessions by id (`close_session`).
    pub live: super::LiveSessions,
    pub db_path: PathBuf,
    pub runbook_dir: Option<PathBuf>,
}

/// An action's result: `ok`, and details for the `event_action` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub reason: String,
    pub detail: Value,
}

/// The action's type name (metrics label, audit detail).
pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Webhook { .. } => "webhook",
        Action::Command { .. } => "command",
        Action::CloseSession => "close_session",
        Action::RevokeIdentity => "revoke_identity",
    }
}

/// HMAC-SHA256 signature header value over `"<ts>.<body>"`.
pub fn sign(secret: &[u8], ts: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(ts.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", crate::audit::chain::hex(ctx.sign().as_ref()))
}

fn truncate(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
    if b.len() > MAX_OUTPUT {
        format!("{s}…[truncated]")
    } else {
        s
    }
}

/// Runs `action` for `payload` (the event JSON) about `rec`.
pub async fn run(
    env: &ActionEnv,
    action: &Action,
    route: &str,
    index: usize,
    rec: &StoredRecord,
    payload: &Value,
) -> Outcome {
    match action {
        Action::Webhook {
            url,
            secret,
            timeout,
            retries,
        } => {
            webhook(
                env,
                url,
                secret.as_deref(),
                *timeout,
                *retries,
                route,
                index,
                rec,
                payload,
            )
            .await
        }
        Action::Command {
            runbook,
            args,
            timeout,
        } => command(env, runbook, args, *timeout, payload).await,
        Action::CloseSession => close_session(env, rec),
        Action::RevokeIdentity => revoke(env, route, rec).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn webhook(
    env: &ActionEnv,
    url: &str,
    secret: Option<&str>,
    timeout: Duration,
    retries: u32,
    route: &str,
    index: usize,
    rec: &StoredRecord,
    payload: &Value,
) -> Outcome {
    let fail = |reason: String, attempts: u32| Outcome {
        ok: false,
        reason,
        detail: json!({ "url": url, "attempts": attempts }),
    };
    let target = match Target::parse(url, None, None) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string(), 0),
    };
    let key = match secret {
        None => None,
        Some(name) => match env.secrets.get(name) {
            Some(s) => Some(s),
            None => return fail(format!("secret {name:?} is not in the store"), 0),
        },
    };
    let body = Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
    let delivery = format!("{}/{route}/{index}", rec.id);
    let mut last_err = String::new();
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=retries.saturating_add(1) {
        let ts = u64::try_from(crate::audit::now_ms() / 1000).unwrap_or(0);
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            (
                "x-hoop-event",
                payload["event"].as_str().unwrap_or("").to_owned(),
            ),
            ("x-hoop-delivery", delivery.clone()),
            ("x-hoop-timestamp", ts.to_string()),
        ];
        if let Some(k) = &key {
            headers.push(("x-hoop-signature", sign(k.expose().as_bytes(), ts, &body)));
        }
        let started = Instant::now();
        match target.post(&headers, body.clone(), timeout).await {
            Ok((code, _)) if (200..300).contains(&code) => {
                return Outcome {
                    ok: true,
                    reason: format!("HTTP {code}"),
                    detail: json!({ "url": url, "status": code, "attempts": attempt,
                        "duration_ms": started.elapsed().as_millis() as u64 }),
                }
            }
            Ok((code, _)) => last_err = format!("HTTP {code}"),
            Err(e) => last_err = e.to_string(),
        }
        if attempt <= retries {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
    fail(last_err, retries.saturating_add(1))
}

/// A runbook may run only if it is a regular, executable file directly in
/// `dir`, not writable by group or others.
fn runbook_path(dir: Option<&Path>, runbook: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir.ok_or("no runbook_dir is configured")?;
    let path = dir.join(runbook);
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    if mode & 0o022 != 0 {
        return Err(format!("{} is writable by group or others", path.display()));
    }
    Ok(path)
}

async fn command(
    env: &ActionEnv,
    runbook: &str,
    args: &[String],
    timeout: Duration,
    payload: &Value,
) -> Outcome {
    let fail = |reason: String| Outcome {
        ok: false,
        reason,
        detail: json!({ "runbook": runbook }),
    };
    let path = match runbook_path(env.runbook_dir.as_deref(), runbook) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOOP_EVENT", payload["event"].as_str().unwrap_or(""))
        .env("HOOP_ROUTE", payload["route"].as_str().unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &env.runbook_dir {
        cmd.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {}: {e}", path.display())),
    };
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let io = async {
        if let Some(mut s) = stdin {
            // A runbook that ignores stdin closes it early; that is fine.
            let _ = s.write_all(&body).await;
            drop(s);
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(timeout, io).await {
        Ok((Ok(status), out, err)) => Outcome {
            ok: status.success(),
            reason: match status.code() {
                Some(0) => "exit 0".into(),
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            },
            detail: json!({
                "runbook": runbook,
                "exit_code": status.code(),
                "stdout": truncate(&out),
                "stderr": truncate(&err),
                "duration_ms": started.elapsed().as_millis() as u64,
            }),
        },
        Ok((Err(e), _, _)) => fail(format!("waiting for {}: {e}", path.display())),
        // Dropping the future drops the child: kill_on_drop ends it.
        Err(_) => fail(format!("timed out after {timeout:?}; killed")),
    }
}

fn close_session(env: &ActionEnv, rec: &StoredRecord) -> Outcome {
    const WHY: &str = "closed by an event route";
    let user = rec.record.user.as_deref();
    match (rec.record.session_id.as_deref(), user) {
        (Some(id), _) => {
            let closed = env.live.close(id, WHY);
            Outcome {
                ok: true,
                reason: if closed {
                    format!("session {id} closed")
                } else {
                    format!("session {id} had already ended")
                },
                detail: json!({ "session": id, "closed": u8::from(closed), "user": user }),
            }
        }
        // An event without a session (login, token, policy...): the person's sessions.
        (None, Some(user)) => {
            let n = env.sessions.close_user(user, WHY);
            Outcome {
                ok: true,
                reason: format!("{n} live session(s) of {user} closed"),
                detail: json!({ "user": user, "closed": n }),
            }
        }
        (None, None) => Outcome {
            ok: false,
            reason: "the event names no session and no user".into(),
            detail: json!({}),
        },
    }
}

async fn revoke(env: &ActionEnv, route: &str, rec: &StoredRecord) -> Outcome {
    let Some(user) = rec.record.user.clone() else {
        return Outcome {
            ok: false,
            reason: "the event names no user".into(),
            detail: json!({}),
        };
    };
    let db = env.db_path.clone();
    let by = format!("event route {route:?}");
    let reason = format!("event {} (record {})", rec.record.kind, rec.id);
    let (u, b, r) = (user.clone(), by.clone(), reason.clone());
    let result = tokio::task::spawn_blocking(move || {
        crate::identity::RevocationStore::open(&db).and_then(|s| s.revoke(&u, &b, Some(&r)))
    })
    .await;
    match result {
        Ok(Ok(changed)) => {
            // The revocation poller closes the sessions; do it now as well.
            let n = env.sessions.close_user(&user, "identity revoked");
            Outcome {
                ok: true,
                reason: if changed {
                    format!("{user} revoked")
                } else {
                    format!("{user} was already revoked")
                },
                detail: json!({ "user": user, "closed": n, "by": by }),
            }
        }
        Ok(Err(e)) => Outcome {
            ok: false,
            reason: e.to_string(),
            detail: json!({ "user": user }),
        },
        Err(e) => Outcome {
            ok: false,
            reason: e.to_string(),
            detail: json!({ "user": user }),
        },
    }
}
