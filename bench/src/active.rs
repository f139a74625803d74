//! Many active sessions: N connections open at once, each sending a small
//! request every `period` (staggered so they do not fire together) and
//! reading its echo; the latency of every request, direct and through a
//! fresh tunnel stack. What a busy bastion sees: many people, each typing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::measure::open_sessions;
use crate::setups::{Bins, TunnelStack};
use crate::stats::percentile;

/// Bytes per request (and per echo).
pub const REQUEST: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct ActiveSeries {
    pub setup: &'static str,
    pub requests: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveReport {
    pub sessions: usize,
    pub period_ms: u64,
    pub seconds: u64,
    pub request_bytes: usize,
    pub series: Vec<ActiveSeries>,
}

/// Round trips (ns) of `n` sessions at `addr`, one request per `period` each, for `run`.
async fn drive(addr: SocketAddr, n: usize, period: Duration, run: Duration) -> Result<Vec<u64>> {
    let sessions = open_sessions(addr, n, 32).await?;
    let start = Instant::now() + Duration::from_millis(200);
    let mut set = tokio::task::JoinSet::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let offset = period.mul_f64(i as f64 / n as f64);
        set.spawn(async move {
            let mut samples =
                Vec::with_capacity((run.as_millis() / period.as_millis().max(1)) as usize + 1);
            let mut next = start + offset;
            let end = start + run;
            let req = [0x5au8; REQUEST];
            let mut back = [0u8; REQUEST];
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let t = Instant::now();
                s.write_all(&req).await?;
                s.read_exact(&mut back).await?;
                samples.push(t.elapsed().as_nanos() as u64);
                next += period;
            }
            anyhow::Ok(samples)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.context("session task")??);
    }
    if all.is_empty() {
        bail!("no request completed");
    }
    Ok(all)
}

fn series(setup: &'static str, mut s: Vec<u64>) -> ActiveSeries {
    ActiveSeries {
        setup,
        requests: s.len(),
        p50_us: percentile(&mut s, 50.0) as f64 / 1e3,
        p99_us: percentile(&mut s, 99.0) as f64 / 1e3,
        max_us: s.iter().copied().max().unwrap_or(0) as f64 / 1e3,
    }
}

/// Direct, then through a fresh tunnel stack.
pub async fn run(
    bins: &Bins,
    upstream: SocketAddr,
    n: usize,
    seconds: u64,
) -> Result<ActiveReport> {
    let period = Duration::from_millis(100);
    let run = Duration::from_secs(seconds);
    let direct = drive(upstream, n, period, run).await?;
    let mut stack = TunnelStack::start(bins, upstream, &crate::unique_name("active")).await?;
    stack.verify().await?;
    let tunnel = drive(stack.addr, n, period, run).await;
    stack.check_alive()?;
    stack.stop().await;
    Ok(ActiveReport {
        sessions: n,
        period_ms: period.as_millis() as u64,
        seconds,
        request_bytes: REQUEST,
        series: vec![series("direct", direct), series("tunnel", tunnel?)],
    })
}

/// The RESULTS.md section.
pub fn markdown(r: Option<&ActiveReport>) -> String {
    use std::fmt::Write;
    let mut w = String::from("\n## Active sessions\n\n");
    let Some(r) = r else {
        w.push_str("Not run.\n");
        return w;
    };
    let _ = writeln!(
        w,
        "{} sessions open at once, each sending a {}-byte request every {} ms (staggered) and \
         reading its echo, for {} s; every request's round trip.\n",
        r.sessions, r.request_bytes, r.period_ms, r.seconds
    );
    let _ = writeln!(
        w,
        "| setup | requests | p50 (us) | p99 (us) | max (us) |\n|---|---|---|---|---|"
    );
    for s in &r.series {
        let _ = writeln!(
            w,
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            s.setup, s.requests, s.p50_us, s.p99_us, s.max_us
        );
    }
    w
}
