//! What the report says about the machine and the build: /proc readings (CPU,
//! kernel, memory, load, a process's RSS, listening sockets), tool versions,
//! the workspace's git commit (read from `.git`, without running git), and the
//! open-files limit.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub os: String,
    pub mem_total_mib: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn probe(open_files_limit: u64) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_total_mib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            mem_total_mib,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            open_files_limit,
        }
    }
}

pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Resident set size of `pid` in bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size of `pid` in bytes (`VmHWM`).
pub fn hwm_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|k| k * 1024)
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("{path}: {e} (did the process exit?)"))?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in {path}"))
}

/// Whether some socket listens on `addr` (IPv4), from /proc/net/tcp, without
/// connecting (a connect through tunnel-lite would open a tunneled session).
pub fn is_listening(addr: SocketAddrV4) -> bool {
    // Columns: sl local_address rem_address st ...; addresses are little-endian hex.
    let want_ip = u32::from_le_bytes(addr.ip().octets());
    let want = format!("{:08X}:{:04X}", want_ip, addr.port());
    read("/proc/net/tcp").lines().skip(1).any(|l| {
        let mut cols = l.split_whitespace();
        let local = cols.nth(1);
        let state = cols.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// First line of `cmd args` stdout (or stderr), or a note why there is none.
pub fn first_line(cmd: &Path, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

/// `program` on $PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// The commit the workspace's HEAD points at, read from `.git` directly.
pub fn git_commit(workspace: &Path) -> String {
    let git = workspace.join(".git");
    let head = match std::fs::read_to_string(git.join("HEAD")) {
        Ok(h) => h.trim().to_string(),
        Err(_) => return "unknown (no .git)".into(),
    };
    let Some(refname) = head.strip_prefix("ref: ") else {
        return head; // detached HEAD holds the hash itself
    };
    if let Ok(hash) = std::fs::read_to_string(git.join(refname)) {
        return format!(
            "{} ({})",
            hash.trim(),
            refname.trim_start_matches("refs/heads/")
        );
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).unwrap_or_default();
    packed
        .lines()
        .find_map(|l| {
            let (hash, name) = l.split_once(' ')?;
            (name == refname)
                .then(|| format!("{hash} ({})", refname.trim_start_matches("refs/heads/")))
        })
        .unwrap_or_else(|| format!("unknown ({refname} has no commit yet)"))
}

/// Raises the soft open-files limit as far as allowed (the hard limit, or
/// more when privileged); returns the limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass; no
    // memory is shared with the kernel beyond the call.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        // Root may raise the hard limit too; others stop at the hard limit.
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let capped = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// UTC now as RFC 3339 (`2025-01-31T12:00:00Z`), without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// CPUs this process may run on (its affinity mask at the time of the call).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// Restricts every thread of process `pid` to `cpus` (threads it creates later
/// inherit the mask). Forked children of `pid` inherit it too (socat's
/// per-connection processes).
pub fn set_affinity(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| anyhow::anyhow!("/proc/{pid}/task: {e}"))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for c in cpus {
                libc::CPU_SET(*c, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // A thread that exited since the listing is fine.
            if e.raw_os_error() != Some(libc::ESRCH) {
                anyhow::bail!("sched_setaffinity({tid} of {pid}, {cpus:?}): {e}");
            }
        }
    }
    Ok(())
}
