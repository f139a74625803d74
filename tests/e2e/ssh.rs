//! `kind = "ssh"` end to end: the real OpenSSH client (`ssh`, `scp`, `sftp`,
//! `rsync`) through the real `tunnel-lite up` and the in-process appliance to
//! a throw-away OpenSSH sshd. The laptop side has no key (the tunnel identity
//! is the person); the appliance logs in upstream with a key from its secret
//! store and checks the pinned upstream host key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::audit::{AuditKind, StoredRecord};
use e2e::appliance::{policy_with, ApplianceFixture};
use e2e::sshd::Sshd;
use e2e::tunnel::TunnelLite;
use e2e::{run, unique_name};

mod access;
mod transfers;

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const USER: &str = "sam@example.com";

/// One ssh connection through the gateway, ready to use.
pub(crate) struct Gw {
    pub sshd: Sshd,
    pub app: ApplianceFixture,
    pub tl: TunnelLite,
    pub name: String,
    pub at: SocketAddr,
    pub tmp: tempfile::TempDir,
}

pub(crate) fn whoami() -> String {
    String::from_utf8(run(&mut Command::new("whoami"), true).stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// A `kind = "ssh"` connection table for `sshd` with extra `[connection.ssh]` lines.
pub(crate) fn ssh_connection(name: &str, sshd: &Sshd, secret: &str, extra: &str) -> String {
    format!(
        "[[connection]]\nname = {name:?}\nkind = \"ssh\"\nupstream = {:?}\nports = [22]\n\
         allow_users = [{USER:?}, \"erin\"]\n\n[connection.secrets]\nprivate_key = {secret:?}\n\n\
         [connection.ssh]\nuser = {:?}\nhost_key = {:?}\n{extra}\n\n",
        sshd.addr(),
        whoami(),
        sshd.host_fingerprint(),
    )
}

/// A secrets file holding `keys` (name, private key file), mode 0600.
pub(crate) fn secrets_file(dir: &Path, keys: &[(&str, PathBuf)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut text = String::new();
    for (name, path) in keys {
        let key = std::fs::read_to_string(path).unwrap();
        text.push_str(&format!("{name} = '''\n{key}'''\n"));
    }
    let p = dir.join("secrets.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// sshd, appliance and tunnel-lite with one ssh connection (`extra` goes in
/// its `[connection.ssh]` table).
pub(crate) async fn gateway(extra: &str) -> Gw {
    gateway_as(extra, USER).await
}

pub(crate) async fn gateway_as(extra: &str, user: &str) -> Gw {
    let sshd = Sshd::start().await.unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("e2e-ssh-")
        .tempdir()
        .unwrap();
    let secrets = secrets_file(tmp.path(), &[("web_key", sshd.client_key())]);
    let name = unique_name("web");
    let policy = policy_with(1, &ssh_connection(&name, &sshd, "web_key", extra));
    let app = ApplianceFixture::start_with(
        Some(&policy),
        &format!("secrets_file = {:?}\n", secrets.display().to_string()),
    )
    .await;
    let tl = TunnelLite::start(&app, &app.token(user, &[], HOUR)).await;
    let at = tl.wait_listening(&name, 22).await;
    Gw {
        sshd,
        app,
        tl,
        name,
        at,
        tmp,
    }
}

impl Gw {
    /// Options every client invocation uses: no key, no known_hosts.
    pub fn opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh` to the gateway (any user name: it is ignored).
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts())
            .args(["-p", "22"])
            .arg(format!("nobody-in-particular@{}", self.at.ip()));
        c
    }

    /// `ssh` logging at INFO (channel open failures are logged there).
    pub fn ssh_info(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "LogLevel=INFO"])
            .args(self.opts())
            .args(["-p", "22"])
            .arg(format!("nobody-in-particular@{}", self.at.ip()));
        c
    }

    pub fn host(&self) -> String {
        self.at.ip().to_string()
    }

    pub async fn audit(&self, kind: AuditKind) -> Vec<StoredRecord> {
        self.app.audit(Some(kind)).await
    }

    /// Waits until an audit record of `kind` satisfies `pred`.
    async fn wait_audit(
        &self,
        kind: AuditKind,
        pred: impl Fn(&StoredRecord) -> bool,
    ) -> StoredRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.audit(kind).await;
            if let Some(r) = recs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            if Instant::now() > deadline {
                panic!("no matching {kind} record in {recs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.tl.stop().await;
        self.app.stop().await;
        // The upstream goes last, once nothing talks to it.
        drop(self.sshd);
    }
}

pub(crate) fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd` with `input` on stdin.
pub(crate) fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // Typed slowly enough for a shell to read line by line.
        for line in input.split_inclusive(|b| *b == b'\n') {
            let _ = stdin.write_all(line);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let o = child.wait_with_output().expect("wait");
    let _ = writer.join();
    o
}

pub(crate) fn sha256(path: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(path), true);
    out(&o)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_signals_env_recording_and_known_hosts() {
    let gw = gateway("allow_env = [\"HOOP_*\"]\nrecord_input = true").await;

    // Interactive shell through a pty, fed by a script.
    let o = run_with_input(gw.ssh().arg("-tt"), b"echo marker-$((6*7))\nexit 3\n");
    assert_eq!(o.status.code(), Some(3), "{}\n{}", out(&o), err(&o));
    assert!(out(&o).contains("marker-42"), "{}", out(&o));

    // exec: stdout, stderr and the exit status come back as they are.
    let o = run(gw.ssh().arg("echo out; echo err >&2; exit 42"), false);
    assert_eq!(o.status.code(), Some(42), "{}", err(&o));
    assert_eq!(out(&o), "out\n");
    assert_eq!(err(&o), "err\n");

    // A command killed by a signal: exit-signal reaches the client (ssh exits 255).
    let o = run(gw.ssh().arg("kill -TERM $$"), false);
    assert_eq!(o.status.code(), Some(255), "{}", err(&o));

    // Only allowed environment variables pass.
    let o = run(
        gw.ssh()
            .args(["-o", "SetEnv=HOOP_COLOR=blue LD_TRICK=1"])
            .arg("echo \"[$HOOP_COLOR][$LD_TRICK]\""),
        true,
    );
    assert_eq!(out(&o), "[blue][]\n");

    // Audit: exec with command line, exit status, bytes; the signal; the shell with its recording.
    let exec = gw
        .wait_audit(AuditKind::SshExec, |r| {
            r.record
                .detail
                .as_ref()
                .is_some_and(|d| d["exit_status"] == 42)
        })
        .await;
    let d = exec.record.detail.clone().unwrap();
    assert_eq!(d["command"], "echo out; echo err >&2; exit 42");
    assert_eq!(exec.record.user.as_deref(), Some(USER));
    assert!(exec.record.bytes_down.unwrap() >= 8 && exec.record.duration_ms.is_some());
    gw.wait_audit(AuditKind::SshExec, |r| {
        r.record
            .detail
            .as_ref()
            .is_some_and(|d| d["exit_signal"] == "TERM")
    })
    .await;
    let shell = gw
        .wait_audit(AuditKind::SshShell, |r| {
            r.record
                .detail
                .as_ref()
                .is_some_and(|d| d["exit_status"] == 3)
        })
        .await;
    let id = shell.record.detail.unwrap()["recording"]
        .as_str()
        .expect("the shell was recorded")
        .to_string();

    // The asciicast file parses: a JSON header, then [time, code, data] events
    // that hold what the shell printed and (record_input) what was typed.
    let cast = gw
        .app
        .cfg
        .data_dir
        .join("recordings")
        .join(format!("{id}.cast"));
    let text = std::fs::read_to_string(&cast).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0);
    let (mut output, mut input) = (String::new(), String::new());
    let mut last = 0.0;
    for l in lines {
        let ev: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = ev[0].as_f64().unwrap();
        assert!(t >= last);
        last = t;
        match ev[1].as_str().unwrap() {
            "o" => output.push_str(ev[2].as_str().unwrap()),
            "i" => input.push_str(ev[2].as_str().unwrap()),
            other => assert_eq!(other, "r"),
        }
    }
    assert!(output.contains("marker-42"), "{output}");
    assert!(input.contains("echo marker-$((6*7))"), "{input}");

    // The CLI lists and exports it.
    let list = gw.app.cli(&["recordings", "list"]);
    assert!(out(&list).contains(&id), "{}", err(&list));
    let export = gw.tmp.path().join("copy.cast");
    let show = gw
        .app
        .cli(&["recordings", "show", &id, "--out", export.to_str().unwrap()]);
    assert!(show.status.success(), "{}", err(&show));
    assert_eq!(std::fs::read_to_string(&export).unwrap(), text);

    // tunnel-lite shows the appliance's SSH host key and installs it for
    // *.hoop: strict host key checking then passes without a prompt.
    let tl_dir = gw.tl.config_dir.path().to_path_buf();
    let status = run(
        Command::new(e2e::bin("tunnel-lite"))
            .arg("--config-dir")
            .arg(&tl_dir)
            .arg("status"),
        true,
    );
    let fp = out(&status)
        .lines()
        .find_map(|l| l.strip_prefix("ssh host key: "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no host key in status:\n{}", out(&status)));
    assert!(fp.starts_with("SHA256:"));
    let root = gw.tmp.path().join("root");
    run(
        Command::new(e2e::bin("tunnel-lite"))
            .arg("--config-dir")
            .arg(&tl_dir)
            .args([
                "dns-setup",
                "--apply",
                "--dns-listen",
                "127.0.0.1:5353",
                "--root",
            ])
            .arg(&root)
            .args(["--binary", "/nonexistent/tunnel-lite"]),
        true,
    );
    let known = root.join("etc/ssh/ssh_known_hosts.d/hoop");
    let conf = std::fs::read_to_string(root.join("etc/ssh/ssh_config.d/hoop.conf")).unwrap();
    assert!(
        conf.contains("GlobalKnownHostsFile /etc/ssh/ssh_known_hosts.d/hoop"),
        "{conf}"
    );
    let o = run(
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("-o")
            .arg(format!("HostKeyAlias={}.hoop", gw.name))
            .arg(format!("x@{}", gw.host()))
            .arg("echo trusted"),
        false,
    );
    assert_eq!(out(&o), "trusted\n", "{}", err(&o));
    let keygen = run(Command::new("ssh-keygen").arg("-lf").arg(&known), true);
    assert!(out(&keygen).contains(&fp), "{}", out(&keygen));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_channels_share_one_connection() {
    let gw = gateway("").await;
    let sock = gw.tmp.path().join("control");
    let control = format!("ControlPath={}", sock.display());
    let mut master = gw
        .ssh()
        .args(["-N", "-o", "ControlMaster=yes", "-o", &control])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        e2e::eventually(Duration::from_secs(10), || sock.exists()).await,
        "the control socket never appeared"
    );
    // Three commands at once over the one connection, one of them slow.
    let mut children: Vec<_> = ["sleep 1; echo slow", "echo a", "echo b"]
        .iter()
        .map(|cmd| {
            gw.ssh()
                .args(["-o", "ControlMaster=no", "-o", &control])
                .arg(cmd)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let fast = children.split_off(1);
    for (c, want) in fast.into_iter().zip(["a\n", "b\n"]) {
        let o = c.wait_with_output().unwrap();
        assert_eq!(out(&o), want);
    }
    let o = children.pop().unwrap().wait_with_output().unwrap();
    assert_eq!(out(&o), "slow\n");
    let _ = master.kill();
    let _ = master.wait();
    // One tunnel session carried all three exec channels.
    let mut execs = gw.audit(AuditKind::SshExec).await;
    for _ in 0..50 {
        if execs.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        execs = gw.audit(AuditKind::SshExec).await;
    }
    let sessions: std::collections::BTreeSet<_> =
        execs.iter().map(|r| r.record.session_id.clone()).collect();
    assert_eq!(execs.len(), 3, "{execs:#?}");
    assert_eq!(sessions.len(), 1, "{execs:#?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_audit_records_a_command_before_it_is_forwarded() {
    let gw = gateway("\n[audit]\nmode = \"strict\"\n").await;
    let o = run(gw.ssh().arg("echo strictly-audited"), false);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "strictly-audited"
    );
    assert!(
        e2e::eventually(Duration::from_secs(5), || gw.app.live_sessions() == 0).await,
        "session did not end"
    );
    let execs = gw.app.audit(Some(AuditKind::SshExec)).await;
    let mine: Vec<&StoredRecord> = execs
        .iter()
        .filter(|r| {
            r.record
                .detail
                .as_ref()
                .map(|d| d.to_string().contains("strictly-audited"))
                .unwrap_or(false)
        })
        .collect();
    assert!(mine.len() >= 2, "{execs:#?}");
    assert_eq!(mine[0].record.outcome.as_deref(), Some("forwarded"));
    gw.tl.stop().await;
    gw.app.stop().await;
}

/// Runs `command` over ssh in the background and returns the approval id
/// from the hold notice on its stderr.
async fn held_ssh(gw: &Gw, command: &str) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let std_cmd = {
        let mut c = gw.ssh();
        c.arg(command);
        c
    };
    let mut child = tokio::process::Command::from(std_cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let id = e2e::held_approval_id(&mut lines, Duration::from_secs(15)).await;
    // Keep reading stderr so the child never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_commands_wait_for_an_approver() {
    let gw = gateway(
        "hold_commands = [\"touch *\"]\napprovers_group = \"leads\"\napproval_timeout = \"20s\"",
    )
    .await;
    let marker = gw.tmp.path().join("approved-marker");
    let (child, id) = held_ssh(&gw, &format!("touch {}", marker.display())).await;
    assert!(!marker.exists(), "ran before approval");
    let ok = gw.app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        "bob@example.com",
        "--groups",
        "leads",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(marker.exists());

    let other = gw.tmp.path().join("denied-marker");
    let (child, id) = held_ssh(&gw, &format!("touch {}", other.display())).await;
    let no = gw.app.cli(&[
        "approvals",
        "deny",
        &id,
        "--as",
        "bob@example.com",
        "--groups",
        "leads",
        "--reason",
        "not today",
    ]);
    assert!(
        no.status.success(),
        "{}",
        String::from_utf8_lossy(&no.stderr)
    );
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert!(!other.exists());
    gw.tl.stop().await;
    gw.app.stop().await;
}
