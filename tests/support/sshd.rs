//! A throw-away OpenSSH sshd on a free port, accepting one generated client
//! key for the current user. Runs in the foreground (`-D -e`) as a child that
//! is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, run};

pub struct Sshd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    pub async fn start() -> anyhow::Result<Sshd> {
        let dir = tempfile::Builder::new().prefix("e2e-sshd-").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all("/run/sshd").ok();
        for (name, kind) in [
            ("host_key", "ed25519"),
            ("client_key", "ed25519"),
            ("client_key_ecdsa", "ecdsa"),
            ("client_key_rsa", "rsa"),
        ] {
            let mut cmd = Command::new("ssh-keygen");
            cmd.args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(d.join(name));
            if kind == "rsa" {
                cmd.args(["-b", "2048"]);
            }
            run(&mut cmd, true);
        }
        let mut authorized = String::new();
        for name in ["client_key", "client_key_ecdsa", "client_key_rsa"] {
            authorized.push_str(&std::fs::read_to_string(d.join(format!("{name}.pub")))?);
        }
        std::fs::write(d.join("authorized_keys"), authorized)?;
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\n\
             AcceptEnv LANG LC_* HOOP_* LD_*\nMaxStartups 200\nMaxSessions 50\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| anyhow::anyhow!("sshd is not installed (openssh-server)"))?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let s = Sshd { port, dir, child };
        crate::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await?;
        Ok(s)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client's private key (authorized on this sshd).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// An authorized client key of `kind` (`ed25519`, `ecdsa` or `rsa`).
    pub fn client_key_of(&self, kind: &str) -> PathBuf {
        match kind {
            "ed25519" => self.client_key(),
            k => self.dir.path().join(format!("client_key_{k}")),
        }
    }

    /// The host key's fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).
    pub fn host_fingerprint(&self) -> String {
        let out = run(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.dir.path().join("host_key.pub")),
            true,
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// An empty known_hosts file for the client (host keys are not checked in tests).
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.client_key().display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
