//! Allocation discipline: heap allocations per forwarded chunk on the tunnel
//! data path, counted by the product binaries themselves when built with the
//! benchmark-only `count-alloc` feature (each prints its totals on SIGUSR1).
//!
//! Two transfers of different sizes run over one fresh stack each way; the
//! difference of the counts divided by the difference in 16 KiB chunks is the
//! steady-state cost per chunk (connection setup and warm-up cancel out).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::measure;
use crate::setups::{Bins, Proc, TunnelStack};

/// Bytes per counted chunk (the client's write size and the relays' buffer).
pub const CHUNK: u64 = 16 * 1024;

/// Where the counting build goes, relative to the workspace.
pub const TARGET_DIR: &str = "target/count-alloc";

/// The build command, for the report and the "skipped" note.
pub const BUILD: &str = "cargo build --release --bins --features appliance/count-alloc,tunnel-lite/count-alloc --target-dir target/count-alloc";

#[derive(Debug, Clone, Serialize)]
pub struct AllocDirection {
    pub direction: &'static str,
    pub small_bytes: u64,
    pub large_bytes: u64,
    /// Allocations during the large transfer minus during the small one.
    pub appliance_allocations: i64,
    pub tunnel_lite_allocations: i64,
    pub appliance_per_chunk: f64,
    pub tunnel_lite_per_chunk: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocReport {
    pub build: &'static str,
    pub chunk_bytes: u64,
    pub directions: Vec<AllocDirection>,
}

/// The counting binaries, if they were built.
pub fn bins(workspace: &Path, release: &Bins) -> Option<Bins> {
    let dir: PathBuf = workspace.join(TARGET_DIR).join("release");
    let appliance = dir.join("appliance");
    let tunnel_lite = dir.join("tunnel-lite");
    (appliance.is_file() && tunnel_lite.is_file()).then(|| Bins {
        appliance,
        tunnel_lite,
        socat: release.socat.clone(),
        stale: Vec::new(),
    })
}

/// (allocations) so far in `p`: SIGUSR1, then the new line in its log.
async fn count(p: &Proc) -> Result<u64> {
    let lines = |log: &Path| -> Vec<u64> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("alloc-count allocations="))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let before = lines(&p.log).len();
    let pid = libc::pid_t::try_from(p.pid).context("pid")?;
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        bail!("cannot signal {}", p.name);
    }
    for _ in 0..100 {
        let now = lines(&p.log);
        if now.len() > before {
            return Ok(now[now.len() - 1]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "{} printed no allocation count (built without count-alloc?)",
        p.name
    )
}

async fn counted(stack: &TunnelStack, up: bool, bytes: u64) -> Result<(u64, u64)> {
    let (a0, t0) = (
        count(&stack.appliance).await?,
        count(&stack.tunnel_lite).await?,
    );
    if up {
        measure::bulk_up(stack.addr, bytes).await?;
    } else {
        measure::bulk_down(stack.addr, bytes).await?;
    }
    // Let both relays finish their last writes before reading.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a1, t1) = (
        count(&stack.appliance).await?,
        count(&stack.tunnel_lite).await?,
    );
    Ok((a1 - a0, t1 - t0))
}

/// Measures both directions with the counting binaries.
pub async fn measure(bins: &Bins, upstream: SocketAddr, quick: bool) -> Result<AllocReport> {
    let (small, large) = if quick {
        (16 << 20, 80 << 20)
    } else {
        (64 << 20, 576 << 20)
    };
    let mut directions = Vec::new();
    for (up, name) in [
        (true, "up (laptop -> upstream)"),
        (false, "down (upstream -> laptop)"),
    ] {
        let mut stack = TunnelStack::start(bins, upstream, &crate::unique_name("alloc")).await?;
        stack.verify().await?;
        // Warm-up: buffers, TLS session cache, allocator pools.
        counted(&stack, up, small).await?;
        let (sa, st) = counted(&stack, up, small).await?;
        let (la, lt) = counted(&stack, up, large).await?;
        stack.check_alive()?;
        stack.stop().await;
        let chunks = (large - small) as f64 / CHUNK as f64;
        let (da, dt) = (la as i64 - sa as i64, lt as i64 - st as i64);
        directions.push(AllocDirection {
            direction: name,
            small_bytes: small,
            large_bytes: large,
            appliance_allocations: da,
            tunnel_lite_allocations: dt,
            appliance_per_chunk: da as f64 / chunks,
            tunnel_lite_per_chunk: dt as f64 / chunks,
        });
    }
    Ok(AllocReport {
        build: BUILD,
        chunk_bytes: CHUNK,
        directions,
    })
}

/// The RESULTS.md section.
pub fn markdown(r: Option<&AllocReport>) -> String {
    use std::fmt::Write;
    let mut w = String::from("\n## Allocations per forwarded chunk (count-alloc build)\n\n");
    let Some(r) = r else {
        let _ = writeln!(
            w,
            "Skipped: the counting binaries were not built. Build them with\n\n```\n{BUILD}\n```\n"
        );
        return w;
    };
    let _ = writeln!(
        w,
        "Binaries built with `{}`: every heap allocation is counted and reported on SIGUSR1. \
         Per direction, one fresh stack, one warm-up transfer, then a small and a large transfer \
         in {} KiB writes; per chunk = (large - small) / ((large - small bytes) / {} KiB), so \
         connection setup cancels out.\n",
        r.build,
        r.chunk_bytes / 1024,
        r.chunk_bytes / 1024
    );
    let _ = writeln!(
        w,
        "| direction | transfers | appliance allocations (difference) | per chunk | tunnel-lite allocations (difference) | per chunk |\n|---|---|---|---|---|---|"
    );
    for d in &r.directions {
        let _ = writeln!(
            w,
            "| {} | {} MiB vs {} MiB | {} | {:.3} | {} | {:.3} |",
            d.direction,
            d.small_bytes >> 20,
            d.large_bytes >> 20,
            d.appliance_allocations,
            d.appliance_per_chunk,
            d.tunnel_lite_allocations,
            d.tunnel_lite_per_chunk
        );
    }
    w
}
