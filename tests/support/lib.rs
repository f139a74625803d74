//! Test fixtures for the end-to-end suite: real PostgreSQL, real sshd, the
//! appliance (in-process, on port 0) and tunnel-lite (the real binary). Every
//! fixture owns a temp dir and stops what it started on drop, also when the
//! test fails. Ports are picked free; nothing is global, so tests run in
//! parallel.

pub mod appliance;
pub mod http_upstream;
pub mod oidc;
pub mod postgres;
pub mod receivers;
pub mod sshd;
pub mod tunnel;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Path of a workspace binary built by `cargo build --workspace --bins`
/// (the README's test command builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-HASH -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `scripts/test` does)",
        path.display()
    );
    path
}

/// Runs a program to completion and returns its output; panics with the
/// whole output if `expect_ok` and it failed.
pub fn run(cmd: &mut std::process::Command, expect_ok: bool) -> std::process::Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if expect_ok && !out.status.success() {
        panic!(
            "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Polls until a TCP connect to `addr` succeeds.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` every 25 ms until it returns true or `within` passes.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether this process runs as root (CI does; PostgreSQL then runs as `postgres`).
pub fn is_root() -> bool {
    // SAFETY-free: geteuid has no preconditions and cannot fail.
    unsafe_free_geteuid() == 0
}

fn unsafe_free_geteuid() -> u32 {
    // Read from /proc to avoid an unsafe libc call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// A TCP echo server standing in for an upstream (runs until the test's
/// runtime ends); returns its address.
pub async fn echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo server");
    let addr = l.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads a client's stderr until the gateway's "held for approval ID"
/// notice and returns the id (the PostgreSQL and SSH gateways word it alike).
pub async fn held_approval_id<R>(lines: &mut tokio::io::Lines<R>, within: Duration) -> String
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(rest) = line.split("held for approval ").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        panic!("the client printed no hold notice");
    })
    .await
    .unwrap_or_else(|_| panic!("no hold notice within {within:?}"))
}

/// A unique lowercase name for connections, so parallel tests never share a
/// loopback address.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
