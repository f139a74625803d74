//! `tunnel-lite dns-setup [--apply]`: the OS split-DNS configuration that sends
//! `*.<suffix>` queries to tunnel-lite's responder, and nothing else.
//!
//! [`plan`] is pure (what to write and run, per OS), [`render`] explains a plan to a
//! human, and [`apply`] carries it out (blocking: this is a CLI path). Applying under a
//! root other than `/` (tests) writes files there and runs only the commands that act on
//! a file inside that root; commands that change the running system are skipped.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::addr;

/// What `dns-setup` writes and runs. Files are absolute paths as seen from `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSetupPlan {
    /// Files to create or replace, with their whole content.
    pub files: Vec<(PathBuf, String)>,
    /// Commands to run after the files are written, in order (argv, program first).
    pub commands: Vec<Vec<String>>,
    /// Explanations and caveats for the human.
    pub notes: Vec<String>,
}

/// The operating systems `dns-setup` knows how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    /// systemd-resolved.
    Linux,
    /// `/etc/resolver` plus loopback aliases.
    MacOs,
}

/// Why applying a plan stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    /// A planned file path is relative or contains `..`.
    #[error("refusing to write {0}: not an absolute, normalized path")]
    BadPath(PathBuf),
    /// Creating a directory or writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file as written (under the root).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command in the plan has no program.
    #[error("empty command in the plan")]
    EmptyCommand,
    /// The program was found neither in PATH nor in the sbin directories.
    #[error("`{command}`: {program} not found in PATH")]
    NotFound {
        /// The whole command line.
        command: String,
        /// The program looked for.
        program: String,
    },
    /// The program could not be started.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        /// The whole command line.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The whole command line.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// What it wrote to stderr (trimmed, at most 2,000 characters).
        stderr: String,
    },
}

/// The OS this binary was built for (anything but macOS is treated as Linux).
pub fn detect_os() -> Os {
    if cfg!(target_os = "macos") {
        Os::MacOs
    } else {
        Os::Linux
    }
}

/// Whether `suffix` is a DNS name safe to use as a domain and in a file name:
/// dot-separated labels of 1..=63 ASCII letters, digits and inner hyphens, at most
/// 253 characters in all (a trailing dot is allowed).
pub fn is_valid_suffix(suffix: &str) -> bool {
    let suffix = suffix.strip_suffix('.').unwrap_or(suffix);
    !suffix.is_empty()
        && suffix.len() <= 253
        && suffix.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The configuration that routes `*.<suffix>` to the responder at `dns`.
///
/// `connection_addrs` are the loopback addresses tunnel-lite listens on (aliased on
/// macOS's lo0; Linux routes all of 127/8 already). `low_ports_needed`: some connection
/// listens below port 1024. An invalid suffix (see [`is_valid_suffix`]) yields a plan
/// with no files nor commands and a note saying why.
pub fn plan(
    os: Os,
    suffix: &str,
    dns: SocketAddrV4,
    connection_addrs: &[Ipv4Addr],
    tunnel_lite_binary: &Path,
    low_ports_needed: bool,
) -> DnsSetupPlan {
    let mut plan = DnsSetupPlan::default();
    if !is_valid_suffix(suffix) {
        plan.notes.push(format!(
            "error: suffix {suffix:?} is not a valid DNS name; nothing to configure"
        ));
        return plan;
    }
    let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
    let (ip, port) = (*dns.ip(), dns.port());
    match os {
        Os::Linux => {
            let server = if port == 53 {
                ip.to_string()
            } else {
                dns.to_string()
            };
            plan.files.push((
                PathBuf::from(format!("/etc/systemd/resolved.conf.d/{suffix}.conf")),
                format!("[Resolve]\nDNS={server}\nDomains=~{suffix}\n"),
            ));
            plan.commands
                .push(argv(&["systemctl", "restart", "systemd-resolved"]));
            plan.notes.push(format!(
                "systemd-resolved sends only *.{suffix} queries to {dns}; every other name \
                 keeps its usual DNS servers."
            ));
            plan.notes.push(
                "This works when /etc/resolv.conf points at systemd-resolved's stub \
                 (nameserver 127.0.0.53), the default on Ubuntu and Fedora."
                    .into(),
            );
            if port != 53 {
                plan.notes
                    .push("DNS=<address>:<port> needs systemd 246 or later.".into());
            }
            plan.notes.push(
                "Linux routes all of 127.0.0.0/8 to lo: the 127.77.x.x addresses need no alias."
                    .into(),
            );
            if low_ports_needed {
                let binary = tunnel_lite_binary.display().to_string();
                plan.commands
                    .push(argv(&["setcap", "cap_net_bind_service=+ep", &binary]));
                plan.notes.push(format!(
                    "Some connections use ports below 1024: setcap grants {binary} \
                     cap_net_bind_service (that capability only). A new binary has no \
                     capabilities: run dns-setup --apply again after each upgrade."
                ));
            } else if port < 1024 {
                plan.notes.push(format!(
                    "The DNS responder's port {port} is below 1024: tunnel-lite needs \
                     cap_net_bind_service (or root) to listen on {dns}."
                ));
            }
        }
        Os::MacOs => {
            plan.files.push((
                PathBuf::from(format!("/etc/resolver/{suffix}")),
                format!("nameserver {ip}\nport {port}\n"),
            ));
            let mut aliases: Vec<Ipv4Addr> = connection_addrs
                .iter()
                .copied()
                .filter(|a| addr::is_tunnel_address(*a) && *a != ip)
                .collect();
            aliases.sort();
            aliases.dedup();
            let skipped = connection_addrs
                .iter()
                .filter(|a| !addr::is_tunnel_address(**a))
                .count();
            if ip.is_loopback() && ip != Ipv4Addr::LOCALHOST {
                aliases.insert(0, ip);
            }
            for alias in aliases {
                plan.commands.push(argv(&[
                    "ifconfig",
                    "lo0",
                    "alias",
                    &alias.to_string(),
                    "up",
                ]));
            }
            plan.notes.push(format!(
                "macOS sends only *.{suffix} queries to {dns} (see `scutil --dns`); every \
                 other name keeps its usual DNS servers."
            ));
            plan.notes.push(
                "macOS routes only 127.0.0.1 on lo0: each tunnel-lite address is added as an \
                 lo0 alias. Aliases do not survive a reboot: run dns-setup --apply again after one."
                    .into(),
            );
            if skipped > 0 {
                plan.notes.push(format!(
                    "{skipped} address(es) outside 127.77.0.0/16 were not aliased."
                ));
            }
            if low_ports_needed {
                plan.notes.push(
                    "Ports below 1024 on loopback need no privilege since macOS 10.14 \
                     (Mojave): nothing to change."
                        .into(),
                );
            }
        }
    }
    plan
}

/// Adds what makes `ssh NAME.<suffix>` trust the appliance's SSH host keys
/// without a prompt: the keys as `*.<suffix>` lines in
/// `/etc/ssh/ssh_known_hosts.d/<suffix>`, and an `/etc/ssh/ssh_config.d/<suffix>.conf`
/// drop-in pointing OpenSSH at that file for `*.<suffix>` hosts (the stock
/// `ssh_config` of Debian, Ubuntu, Fedora and macOS includes that directory).
/// Lines that are not `ALGORITHM BASE64` public keys are skipped.
pub fn add_ssh_known_hosts(plan: &mut DnsSetupPlan, suffix: &str, host_keys: &[String]) {
    if !is_valid_suffix(suffix) {
        return;
    }
    let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
    let lines: Vec<String> = host_keys
        .iter()
        .filter(|k| ssh_fingerprint(k).is_some())
        .map(|k| {
            format!(
                "*.{suffix} {}\n",
                k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    let known = format!("/etc/ssh/ssh_known_hosts.d/{suffix}");
    plan.files.push((PathBuf::from(&known), lines.concat()));
    plan.files.push((
        PathBuf::from(format!("/etc/ssh/ssh_config.d/{suffix}.conf")),
        format!("Host *.{suffix}\n    GlobalKnownHostsFile {known}\n"),
    ));
    plan.notes.push(format!(
        "ssh to *.{suffix} checks the appliance's SSH host key against {known}; run \
         dns-setup --apply again if the appliance's key ever changes."
    ));
}

/// `SHA256:...` (as `ssh-keygen -lf` prints it) of an OpenSSH public key line.
pub fn ssh_fingerprint(line: &str) -> Option<String> {
    use base64::Engine;
    let mut parts = line.split_whitespace();
    let alg = parts.next()?;
    if !(alg.starts_with("ssh-") || alg.starts_with("ecdsa-")) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &blob);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    ))
}

/// A human-readable account of `plan`: the files with their content, the commands, why
/// each is needed, and the notes.
pub fn render(plan: &DnsSetupPlan) -> String {
    let mut out = String::new();
    if plan.files.is_empty() && plan.commands.is_empty() {
        out.push_str("Nothing to write or run.\n");
    }
    if !plan.files.is_empty() {
        out.push_str("Files to write:\n");
    }
    for (path, content) in &plan.files {
        let _ = writeln!(out, "  {}", path.display());
        let _ = writeln!(out, "    why: {}", why_file(path));
        for line in content.lines() {
            let _ = writeln!(out, "    | {line}");
        }
    }
    if !plan.commands.is_empty() {
        out.push_str("Commands to run:\n");
    }
    for command in &plan.commands {
        let _ = writeln!(out, "  $ {}", shell_line(command));
        let _ = writeln!(out, "    why: {}", why_command(command));
    }
    if !plan.notes.is_empty() {
        out.push_str("Notes:\n");
    }
    for note in &plan.notes {
        let _ = writeln!(out, "  - {note}");
    }
    out
}

/// Writes the plan's files under `root` (creating parent directories, replacing files
/// atomically), then runs its commands in order. Under a root other than `/`, only
/// commands with an argument naming a path inside `root` run (e.g. `setcap` on a copy
/// of the binary); service restarts and interface changes are skipped and logged.
/// Stops at the first failure; the error names the command and carries its stderr.
pub fn apply(plan: &DnsSetupPlan, root: &Path) -> Result<Vec<String>, DnsSetupError> {
    let real_root = root == Path::new("/");
    let mut log = Vec::new();
    for (path, content) in &plan.files {
        let dest = under_root(root, path)?;
        write_atomically(&dest, content)?;
        log.push(format!("wrote {}", dest.display()));
    }
    for command in &plan.commands {
        let line = shell_line(command);
        let acts_inside_root = command
            .iter()
            .skip(1)
            .any(|arg| Path::new(arg).is_absolute() && Path::new(arg).starts_with(root));
        if !real_root && !acts_inside_root {
            log.push(format!(
                "skipped (root is {}, not /): {line}",
                root.display()
            ));
            continue;
        }
        run(command, &line)?;
        log.push(format!("ran: {line}"));
    }
    Ok(log)
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn why_file(path: &Path) -> &'static str {
    if path.starts_with("/etc/systemd/resolved.conf.d") {
        "a systemd-resolved drop-in routing the suffix (and only it) to tunnel-lite"
    } else if path.starts_with("/etc/ssh") {
        "lets ssh trust the appliance's SSH host key for the suffix's names, without a prompt"
    } else if path.starts_with("/etc/resolver") {
        "a macOS per-domain resolver routing the suffix (and only it) to tunnel-lite"
    } else {
        "configuration tunnel-lite needs"
    }
}

fn why_command(command: &[String]) -> &'static str {
    match command.first().map(String::as_str) {
        Some("systemctl") => "systemd-resolved reads its drop-ins only when it starts",
        Some("ifconfig") => "macOS routes only 127.0.0.1 on lo0; tunnel-lite listens here",
        Some("setcap") => "lets tunnel-lite listen on ports below 1024 without running as root",
        _ => "part of the split-DNS setup",
    }
}

/// The command as one shell line, quoting arguments that need it.
fn shell_line(command: &[String]) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./=:+,@%~".contains(&b))
    };
    command
        .iter()
        .map(|a| {
            if plain(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `root` + absolute `path`, refusing anything that could escape `root`.
fn under_root(root: &Path, path: &Path) -> Result<PathBuf, DnsSetupError> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(DnsSetupError::BadPath(path.to_path_buf()));
    }
    let mut dest = root.to_path_buf();
    for component in components {
        match component {
            Component::Normal(part) => dest.push(part),
            _ => return Err(DnsSetupError::BadPath(path.to_path_buf())),
        }
    }
    if dest == root {
        return Err(DnsSetupError::BadPath(path.to_path_buf()));
    }
    Ok(dest)
}

/// Writes a sibling temporary file and renames it over `dest`, so a reader (the
/// resolver) never sees half a file.
fn write_atomically(dest: &Path, content: &str) -> Result<(), DnsSetupError> {
    let err = |source| DnsSetupError::Write {
        path: dest.to_path_buf(),
        source,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".tunnel-lite.tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, content).map_err(err)?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn run(command: &[String], line: &str) -> Result<(), DnsSetupError> {
    let (program, args) = command.split_first().ok_or(DnsSetupError::EmptyCommand)?;
    let resolved = resolve_program(program).ok_or_else(|| DnsSetupError::NotFound {
        command: line.to_string(),
        program: program.clone(),
    })?;
    let output = Command::new(&resolved)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DnsSetupError::Spawn {
            command: line.to_string(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(DnsSetupError::Failed {
        command: line.to_string(),
        status: output.status.to_string(),
        stderr: stderr.trim().chars().take(2000).collect(),
    })
}

/// An absolute path for `program`: searched in PATH (absolute entries only), then in
/// the sbin directories `sudo` usually adds, since `setcap` and `ifconfig` live there.
fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = Path::new(program);
        return (path.is_absolute() && is_executable(path)).then(|| path.to_path_buf());
    }
    let from_env = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    from_env
        .into_iter()
        .chain(fallback)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests;
