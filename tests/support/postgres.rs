//! A throw-away PostgreSQL cluster with scram-sha-256 auth on a free port.
//! initdb runs once per test process (a template); each cluster is a copy of
//! it, which starts in well under a second. As root, everything runs as the
//! `postgres` user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{free_port, is_root, run};

pub const SUPERUSER: &str = "app";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql missing): run scripts/test, which installs it")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

/// `cmd` as the postgres user when we are root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_postgres(path: &Path) {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            true,
        );
    }
}

/// The initdb'd template, made once per test process.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("e2e-pg-template-")
                .tempdir()
                .expect("tempdir");
            let bin = pg_bin_dir();
            let pwfile = dir.path().join("pw");
            std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
            chown_postgres(dir.path());
            let data = dir.path().join("data");
            run(
                pg_command(&bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args([
                        "-U",
                        SUPERUSER,
                        "--auth=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "-N",
                    ])
                    .arg(format!("--pwfile={}", pwfile.display())),
                true,
            );
            dir
        })
        .path()
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_inner(false)
    }

    /// With TLS on: a certificate for `localhost` issued by `ca_cert()`.
    pub fn start_with_tls() -> Postgres {
        Self::start_inner(true)
    }

    /// The CA that issued a TLS cluster's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn start_inner(tls: bool) -> Postgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("e2e-pg-")
            .tempdir()
            .expect("tempdir");
        // World-traversable so the postgres user can reach its data dir.
        set_mode(dir.path(), 0o755);
        let data = dir.path().join("data");
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template().join("data"))
                .arg(&data),
            true,
        );
        let mut tls_opts = String::new();
        if tls {
            let d = dir.path();
            let (crt, key) = (d.join("server.crt"), d.join("server.key"));
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ];
            // A CA, and a leaf for `localhost` signed by it (webpki refuses a CA
            // certificate used as the server's own).
            run(
                Command::new("openssl")
                    .args(["req", "-x509"])
                    .args(ec)
                    .args(["-days", "2", "-subj", "/CN=e2e test CA", "-keyout"])
                    .arg(d.join("ca.key"))
                    .arg("-out")
                    .arg(d.join("ca.crt")),
                true,
            );
            run(
                Command::new("openssl")
                    .args(["req"])
                    .args(ec)
                    .args(["-subj", "/CN=localhost", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(d.join("server.csr")),
                true,
            );
            std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n").expect("ext");
            run(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "2", "-in"])
                    .arg(d.join("server.csr"))
                    .arg("-CA")
                    .arg(d.join("ca.crt"))
                    .arg("-CAkey")
                    .arg(d.join("ca.key"))
                    .args(["-CAcreateserial", "-extfile"])
                    .arg(d.join("ext.cnf"))
                    .arg("-out")
                    .arg(&crt),
                true,
            );
            set_mode(&key, 0o600);
            tls_opts = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            );
        }
        chown_postgres(dir.path());
        let port = free_port();
        let log = dir.path().join("log");
        run(
            pg_command(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-w")
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{tls_opts}",
                    dir.path().display()
                ))
                .arg("start"),
            true,
        );
        Postgres { port, dir, bin }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs SQL as the superuser over TCP with the password.
    pub fn psql(&self, sql: &str) -> String {
        let out = run(
            Command::new("psql")
                .env("PGPASSWORD", PASSWORD)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                ])
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            true,
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Puts `line` first in pg_hba.conf and reloads the configuration.
    pub fn hba_first(&self, line: &str) {
        let path = self.dir.path().join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&path).expect("pg_hba.conf");
        std::fs::write(&path, format!("{line}\n{old}")).expect("write pg_hba.conf");
        self.psql("select pg_reload_conf()");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
