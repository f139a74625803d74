//! `bench`: one command that measures the tunnel data path (tunnel-lite +
//! appliance, `kind = "tcp"`) against a direct loopback connection and a
//! `socat` relay, interleaving the setups, and writes `bench/RESULTS.md` and
//! `bench/results.json`. See `bench/README.md`.
//!
//! This binary owns orchestration only: the upstream server is in `upstream`,
//! the setups (child processes) in `setups`, the client measurements in
//! `measure`, and the rendering in `report`. It never asserts on timings.

mod active;
mod alloc;
mod dns;
mod measure;
mod pgsummary;
mod report;
mod setups;
mod stats;
mod sysinfo;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use report::{
    Calibration, Memory, Metric, Params, Phase, Report, ScaleRep, SetupInfo, Target, Versions,
    SETUPS,
};
use setups::{Bins, Socat, TunnelStack};
use stats::{median, percentile};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmarks the tunnel data path against a direct connection and a socat relay",
    after_help = "Build the product binaries first: cargo build --release --bins\n\
                  Then: cargo run --release -p bench -- [--quick]"
)]
struct Args {
    /// Smoke run: 1 repetition and small sizes; writes bench/out/ unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Where RESULTS.md goes (default bench/RESULTS.md; bench/out/RESULTS.md with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the JSON goes (default: results.json next to --out).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Repetitions of every data-path measurement (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Bulk transfer size each way, in MB of 10^6 bytes (default 2000; 200 with --quick).
    #[arg(long)]
    bulk_mb: Option<u64>,
    /// Recorded 1-byte round trips per repetition (default 20000; 2000 with --quick).
    #[arg(long)]
    rtt_rounds: Option<usize>,
    /// Recorded new connections per repetition (default 500; 100 with --quick).
    #[arg(long)]
    setup_conns: Option<usize>,
    /// Idle tunneled sessions held open for the memory test (default 10000,
    /// capped to fit the open-files limit; 100 with --quick).
    #[arg(long)]
    sessions: Option<usize>,
    /// Active sessions sending small requests at once (default 1000; 100 with --quick).
    #[arg(long)]
    active: Option<usize>,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(upstream::CHILD_ARG) {
        return upstream::child_main();
    }
    let args = Args::parse();
    // One thread: the client side never competes with itself for the 2 cores.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run future, and with it every child-process guard.
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Plan {
    quick: bool,
    reps: usize,
    bulk_bytes: u64,
    rtt_warmup: usize,
    rtt_rounds: usize,
    setup_warmup: usize,
    setup_conns: usize,
    sessions: usize,
    sessions_parallel: usize,
    scale_reps: usize,
    active_sessions: usize,
    active_secs: u64,
}

impl Plan {
    fn from(args: &Args) -> Plan {
        let q = args.quick;
        let reps = args.reps.unwrap_or(if q { 1 } else { 3 }).max(1);
        Plan {
            quick: q,
            reps,
            bulk_bytes: args.bulk_mb.unwrap_or(if q { 200 } else { 2000 }) * 1_000_000,
            rtt_warmup: if q { 200 } else { 1000 },
            rtt_rounds: args.rtt_rounds.unwrap_or(if q { 2000 } else { 20_000 }),
            setup_warmup: if q { 10 } else { 20 },
            setup_conns: args.setup_conns.unwrap_or(if q { 100 } else { 500 }),
            sessions: args.sessions.unwrap_or(if q { 100 } else { 10_000 }),
            sessions_parallel: 32,
            scale_reps: reps,
            active_sessions: args.active.unwrap_or(if q { 100 } else { 1000 }),
            active_secs: if q { 3 } else { 10 },
        }
    }
}

/// Wall time per phase, in first-seen order.
#[derive(Default)]
struct Clock(Vec<Phase>);

impl Clock {
    fn add(&mut self, phase: &str, secs: f64) {
        match self.0.iter_mut().find(|p| p.phase == phase) {
            Some(p) => p.secs += secs,
            None => self.0.push(Phase {
                phase: phase.to_string(),
                secs,
            }),
        }
    }
}

/// p50 and p99 of nanosecond samples, in microseconds.
fn p50_p99_us(samples: &mut [u64]) -> (f64, f64) {
    (
        percentile(samples, 50.0) as f64 / 1e3,
        percentile(samples, 99.0) as f64 / 1e3,
    )
}

fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench-{tag}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn bounded<T>(what: &str, limit: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow!("{what}: no result within {limit:?}"))?
        .with_context(|| what.to_string())
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let date = sysinfo::utc_now();
    let mut plan = Plan::from(&args);
    let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = bench_dir
        .parent()
        .context("bench/ lives in the workspace")?
        .to_path_buf();
    let out_md = args.out.clone().unwrap_or_else(|| {
        if plan.quick {
            bench_dir.join("out").join("RESULTS.md")
        } else {
            bench_dir.join("RESULTS.md")
        }
    });
    let out_json = args.json.clone().unwrap_or_else(|| {
        out_md
            .parent()
            .unwrap_or(Path::new("."))
            .join("results.json")
    });
    let mut notes = Vec::new();
    if plan.quick {
        notes.push(
            "QUICK MODE (smoke run): 1 repetition and small sizes; not for comparison.".to_string(),
        );
    }

    let bins = Bins::locate(&workspace)?;
    for s in &bins.stale {
        eprintln!("bench: warning: stale build: {s}; rebuild with `cargo build --release --bins`");
    }

    // Open files: each idle session holds a socket in the harness and in the
    // upstream, and 2 in tunnel-lite and in the appliance; children inherit
    // the limit raised here.
    let want = (plan.sessions as u64) * 2 + 1024;
    let limit = sysinfo::raise_nofile(want);
    if (limit as usize) < plan.sessions * 2 + 256 {
        let fit = (limit as usize).saturating_sub(256) / 2;
        notes.push(format!(
            "The open-files limit is {limit}: the idle-sessions test uses N = {fit} instead of {}.",
            plan.sessions
        ));
        plan.sessions = fit;
    }
    let machine = sysinfo::Machine::probe(limit);
    let versions = Versions {
        rustc: sysinfo::first_line(Path::new("rustc"), &["-V"]),
        git_commit: sysinfo::git_commit(&workspace),
        appliance: sysinfo::first_line(&bins.appliance, &["--version"]),
        tunnel_lite: sysinfo::first_line(&bins.tunnel_lite, &["--version"]),
        socat: socat_version(&bins.socat),
        appliance_path: bins.appliance.display().to_string(),
        tunnel_lite_path: bins.tunnel_lite.display().to_string(),
        stale_binaries: bins.stale.clone(),
    };
    eprintln!(
        "bench: {} mode, {} reps, bulk {} MB, {} round trips, {} connections, {} idle sessions; \
         machine: {} x {}, load {}",
        if plan.quick { "quick" } else { "full" },
        plan.reps,
        plan.bulk_bytes / 1_000_000,
        plan.rtt_rounds,
        plan.setup_conns,
        plan.sessions,
        machine.nproc,
        machine.cpu_model,
        machine.loadavg_start
    );

    let mut clock = Clock::default();
    let t = Instant::now();
    let upstream = upstream::spawn().await?;
    let socat = Socat::start(&bins, upstream.addr).await?;
    let mut stack = TunnelStack::start(&bins, upstream.addr, &unique_name("main")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut memory = Memory {
        main_idle_appliance_bytes: sysinfo::rss_bytes(stack.appliance.pid)?,
        main_idle_tunnel_lite_bytes: sysinfo::rss_bytes(stack.tunnel_lite.pid)?,
        ..Memory::default()
    };
    stack.verify().await?;
    // The same path without tunnel-lite's spare connection: every new
    // connection does its own (resumed) TLS handshake. Setup times only.
    let mut cold =
        TunnelStack::start_with(&bins, upstream.addr, &unique_name("cold"), &["--no-spare"])
            .await?;
    cold.verify().await?;
    let addrs: [SocketAddr; 3] = [upstream.addr, socat.addr, stack.addr];
    for a in addrs {
        setups::echo_once(a)
            .await
            .with_context(|| format!("sanity echo via {a}"))?;
    }
    let setup_infos = vec![
        SetupInfo {
            name: "direct",
            path: format!("client -> upstream {} (tokio server, a child process of the harness)", upstream.addr),
            commands: vec![],
        },
        SetupInfo {
            name: "socat",
            path: format!("client -> socat {} -> upstream {}", socat.addr, upstream.addr),
            commands: vec![socat.command.clone()],
        },
        SetupInfo {
            name: "tunnel",
            path: format!(
                "client -> tunnel-lite {} -> TLS 1.3 -> appliance -> upstream {} (kind = \"tcp\"; default log level)",
                stack.addr, upstream.addr
            ),
            commands: {
                let mut c = stack.commands.clone();
                c.push(String::new());
                c.push(format!("# appliance.toml\n{}", stack.appliance_config.trim_end()));
                c.push(format!("# policy.toml (signed)\n{}", stack.policy.trim_end()));
                c.push(format!(
                    "# \"without the spare connection\" rows: a second stack, the same commands, \
                     with `tunnel-lite up ... --no-spare` (tunnel-lite {})",
                    cold.addr
                ));
                c
            },
        },
    ];
    clock.add("start setups", t.elapsed().as_secs_f64());

    // Every process on the path, for the one-CPU round-trip variant.
    let cpus = sysinfo::allowed_cpus();
    let pids = [
        std::process::id(),
        upstream.pid,
        socat.proc.pid,
        stack.appliance.pid,
        stack.tunnel_lite.pid,
    ];
    let t = Instant::now();
    let calibration = if cpus.len() >= 2 {
        Some(calibrate(&plan, upstream.addr, upstream.pid, &cpus).await?)
    } else {
        None
    };
    clock.add("calibration", t.elapsed().as_secs_f64());

    // Interleaved data-path measurements: for each rep, each measurement, A B C.
    let mut up: [Vec<f64>; 3] = Default::default();
    let mut down: [Vec<f64>; 3] = Default::default();
    let mut rtt50: [Vec<f64>; 3] = Default::default();
    let mut rtt99: [Vec<f64>; 3] = Default::default();
    let mut pin50: [Vec<f64>; 3] = Default::default();
    let mut pin99: [Vec<f64>; 3] = Default::default();
    let mut set50: [Vec<f64>; 3] = Default::default();
    let mut set99: [Vec<f64>; 3] = Default::default();
    let (mut cold50, mut cold99) = (Vec::new(), Vec::new());
    let bulk_limit = Duration::from_secs(600);
    for rep in 1..=plan.reps {
        for (i, (setup, addr)) in SETUPS.iter().zip(addrs).enumerate() {
            let t = Instant::now();
            let g = bounded(
                "bulk up",
                bulk_limit,
                measure::bulk_up(addr, plan.bulk_bytes),
            )
            .await?;
            clock.add(&format!("bulk up, {setup}"), t.elapsed().as_secs_f64());
            eprintln!(
                "[rep {rep}/{}] bulk up    {setup:>6}: {g:.2} Gbit/s",
                plan.reps
            );
            up[i].push(g);
            stack.check_alive()?;
        }
        for (i, (setup, addr)) in SETUPS.iter().zip(addrs).enumerate() {
            let t = Instant::now();
            let g = bounded(
                "bulk down",
                bulk_limit,
                measure::bulk_down(addr, plan.bulk_bytes),
            )
            .await?;
            clock.add(&format!("bulk down, {setup}"), t.elapsed().as_secs_f64());
            eprintln!(
                "[rep {rep}/{}] bulk down  {setup:>6}: {g:.2} Gbit/s",
                plan.reps
            );
            down[i].push(g);
            stack.check_alive()?;
        }
        for (i, (setup, addr)) in SETUPS.iter().zip(addrs).enumerate() {
            let t = Instant::now();
            let mut s = bounded(
                "round trips",
                Duration::from_secs(300),
                measure::ping_pong(addr, plan.rtt_warmup, plan.rtt_rounds),
            )
            .await?;
            clock.add(&format!("round trips, {setup}"), t.elapsed().as_secs_f64());
            let (p50, p99) = p50_p99_us(&mut s);
            eprintln!(
                "[rep {rep}/{}] round trip {setup:>6}: p50 {p50:.1} us, p99 {p99:.1} us",
                plan.reps
            );
            rtt50[i].push(p50);
            rtt99[i].push(p99);
            stack.check_alive()?;
        }
        // The same with every process on one CPU: no cross-CPU wake-ups, so
        // what remains is the CPU work per round trip on the path.
        for pid in pids {
            sysinfo::set_affinity(pid, &cpus[..1])?;
        }
        for (i, (setup, addr)) in SETUPS.iter().zip(addrs).enumerate() {
            let t = Instant::now();
            let mut s = bounded(
                "round trips on one CPU",
                Duration::from_secs(300),
                measure::ping_pong(addr, plan.rtt_warmup, plan.rtt_rounds),
            )
            .await?;
            clock.add(
                &format!("round trips on one CPU, {setup}"),
                t.elapsed().as_secs_f64(),
            );
            let (p50, p99) = p50_p99_us(&mut s);
            eprintln!(
                "[rep {rep}/{}] 1-CPU rtt  {setup:>6}: p50 {p50:.1} us, p99 {p99:.1} us",
                plan.reps
            );
            pin50[i].push(p50);
            pin99[i].push(p99);
        }
        for pid in pids {
            sysinfo::set_affinity(pid, &cpus)?;
        }
        for (i, (setup, addr)) in SETUPS.iter().zip(addrs).enumerate() {
            let t = Instant::now();
            let mut s = bounded(
                "connection setup",
                Duration::from_secs(300),
                measure::setup_times(addr, plan.setup_warmup, plan.setup_conns),
            )
            .await?;
            clock.add(
                &format!("connection setup, {setup}"),
                t.elapsed().as_secs_f64(),
            );
            let (p50, p99) = p50_p99_us(&mut s);
            eprintln!(
                "[rep {rep}/{}] setup      {setup:>6}: p50 {p50:.1} us, p99 {p99:.1} us",
                plan.reps
            );
            set50[i].push(p50);
            set99[i].push(p99);
            stack.check_alive()?;
        }
        let mut s = bounded(
            "connection setup",
            Duration::from_secs(300),
            measure::setup_times(cold.addr, plan.setup_warmup, plan.setup_conns),
        )
        .await?;
        let (p50, p99) = p50_p99_us(&mut s);
        eprintln!(
            "[rep {rep}/{}] setup   no spare: p50 {p50:.1} us, p99 {p99:.1} us",
            plan.reps
        );
        cold50.push(p50);
        cold99.push(p99);
        cold.check_alive()?;
    }
    memory.main_end_appliance_bytes = sysinfo::rss_bytes(stack.appliance.pid)?;
    memory.main_end_tunnel_lite_bytes = sysinfo::rss_bytes(stack.tunnel_lite.pid)?;
    memory.main_peak_appliance_bytes = sysinfo::hwm_bytes(stack.appliance.pid)?;
    memory.main_peak_tunnel_lite_bytes = sysinfo::hwm_bytes(stack.tunnel_lite.pid)?;
    stack.stop().await;
    cold.stop().await;
    socat.proc.stop().await;

    // Idle sessions: a fresh stack per repetition, so "idle" means idle.
    for rep in 1..=plan.scale_reps {
        let t = Instant::now();
        let r = scale_rep(&bins, upstream.addr, plan.sessions, plan.sessions_parallel).await?;
        clock.add("idle sessions", t.elapsed().as_secs_f64());
        eprintln!(
            "[rep {rep}/{}] sessions   N = {}: appliance idle {:.1} MiB, {:.1} KiB/session; \
             tunnel-lite idle {:.1} MiB, {:.1} KiB/session",
            plan.scale_reps,
            r.sessions,
            r.idle_appliance_bytes as f64 / 1048576.0,
            r.appliance_bytes_per_session / 1024.0,
            r.idle_tunnel_lite_bytes as f64 / 1048576.0,
            r.tunnel_lite_bytes_per_session / 1024.0,
        );
        memory.scale.push(r);
    }
    let col = |f: fn(&ScaleRep) -> f64| median(&memory.scale.iter().map(f).collect::<Vec<_>>());
    memory.median_idle_appliance_bytes = col(|r| r.idle_appliance_bytes as f64);
    memory.median_idle_tunnel_lite_bytes = col(|r| r.idle_tunnel_lite_bytes as f64);
    memory.median_appliance_bytes_per_session = col(|r| r.appliance_bytes_per_session);
    memory.median_tunnel_lite_bytes_per_session = col(|r| r.tunnel_lite_bytes_per_session);
    let t = Instant::now();
    let active_report = active::run(&bins, upstream.addr, plan.active_sessions, plan.active_secs)
        .await
        .context("active sessions")?;
    clock.add("active sessions", t.elapsed().as_secs_f64());
    for s in &active_report.series {
        eprintln!(
            "active     {:>6}: {} sessions, p50 {:.0} us, p99 {:.0} us",
            s.setup, active_report.sessions, s.p50_us, s.p99_us
        );
    }
    let alloc_report = match alloc::bins(&workspace, &bins) {
        Some(counting) => {
            let t = Instant::now();
            let r = alloc::measure(&counting, upstream.addr, plan.quick).await?;
            clock.add("allocation counts", t.elapsed().as_secs_f64());
            for d in &r.directions {
                eprintln!(
                    "allocations {}: appliance {:.3}/chunk, tunnel-lite {:.3}/chunk",
                    d.direction, d.appliance_per_chunk, d.tunnel_lite_per_chunk
                );
            }
            Some(r)
        }
        None => {
            notes.push(format!(
                "Allocation counts skipped: the counting binaries are not built (`{}`).",
                alloc::BUILD
            ));
            None
        }
    };
    drop(upstream);

    let metrics = vec![
        Metric::new("bulk_up_gbps", "bulk up", "Gbit/s", true, &up),
        Metric::new("bulk_down_gbps", "bulk down", "Gbit/s", true, &down),
        Metric::new("rtt_p50_us", "round trip p50", "us", false, &rtt50),
        Metric::new("rtt_p99_us", "round trip p99", "us", false, &rtt99),
        Metric::new(
            "rtt_1cpu_p50_us",
            "round trip p50, all on one CPU",
            "us",
            false,
            &pin50,
        ),
        Metric::new(
            "rtt_1cpu_p99_us",
            "round trip p99, all on one CPU",
            "us",
            false,
            &pin99,
        ),
        Metric::new("setup_p50_us", "connection setup p50", "us", false, &set50),
        Metric::new("setup_p99_us", "connection setup p99", "us", false, &set99),
        // Direct and socat repeat their setup samples; the tunnel column is
        // tunnel-lite started with --no-spare.
        Metric::new(
            "setup_nospare_p50_us",
            "connection setup p50, tunnel without the spare connection",
            "us",
            false,
            &[set50[0].clone(), set50[1].clone(), cold50],
        ),
        Metric::new(
            "setup_nospare_p99_us",
            "connection setup p99, tunnel without the spare connection",
            "us",
            false,
            &[set99[0].clone(), set99[1].clone(), cold99],
        ),
    ];
    let mut machine = machine;
    machine.loadavg_end = sysinfo::loadavg();
    // The start reading is the other work on the machine; the end reading
    // also counts this run's own processes.
    let load_at_start = machine
        .loadavg_start
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if load_at_start > machine.nproc as f64 * 0.5 {
        notes.push(format!(
            "BUSY MACHINE: the 1-minute load average was {load_at_start:.2} on {} CPUs when this run \
             started ({} / {} / {} over 1, 5, 15 minutes). Other work shared the cores, so throughput \
             is lower and latency tails longer than on a quiet machine; compare runs only at similar load.",
            machine.nproc,
            machine.loadavg_start.split_whitespace().next().unwrap_or("?"),
            machine.loadavg_start.split_whitespace().nth(1).unwrap_or("?"),
            machine.loadavg_start.split_whitespace().nth(2).unwrap_or("?"),
        ));
    }
    let mut report = Report {
        date,
        mode: if plan.quick { "quick" } else { "full" },
        command: format!(
            "cargo build --release --bins && cargo run --release -p bench --{}",
            std::env::args()
                .skip(1)
                .map(|a| format!(" {a}"))
                .collect::<String>()
        ),
        duration_secs: 0.0,
        machine,
        calibration,
        versions,
        params: Params {
            reps: plan.reps,
            bulk_bytes: plan.bulk_bytes,
            rtt_warmup: plan.rtt_warmup,
            rtt_rounds: plan.rtt_rounds,
            setup_warmup: plan.setup_warmup,
            setup_conns: plan.setup_conns,
            sessions: plan.sessions,
            sessions_parallel: plan.sessions_parallel,
            scale_reps: plan.scale_reps,
        },
        setups: setup_infos,
        metrics,
        memory,
        alloc: alloc_report,
        active: Some(active_report),
        targets: Vec::new(),
        phase_secs: clock.0,
        notes,
        postgres: std::fs::read_to_string(bench_dir.join("POSTGRES.md"))
            .ok()
            .and_then(|md| pgsummary::excerpt(&md)),
    };
    report.targets = targets(&report);
    report.duration_secs = started.elapsed().as_secs_f64();

    for path in [&out_md, &out_json] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
    }
    std::fs::write(&out_md, report.to_markdown()).with_context(|| out_md.display().to_string())?;
    std::fs::write(&out_json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| out_json.display().to_string())?;
    eprintln!();
    for t in &report.targets {
        eprintln!(
            "{:4}  {}: {} (target {})",
            if t.pass { "PASS" } else { "MISS" },
            t.what,
            t.measured,
            t.target
        );
    }
    eprintln!(
        "bench: done in {:.0} s; wrote {} and {}",
        report.duration_secs,
        out_md.display(),
        out_json.display()
    );
    Ok(())
}

/// One repetition of the idle-sessions test on a fresh appliance + tunnel-lite.
async fn scale_rep(
    bins: &Bins,
    upstream: SocketAddr,
    n: usize,
    parallel: usize,
) -> Result<ScaleRep> {
    let mut stack = TunnelStack::start(bins, upstream, &unique_name("scale")).await?;
    let (ap, tp) = (stack.appliance.pid, stack.tunnel_lite.pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = (sysinfo::rss_bytes(ap)?, sysinfo::rss_bytes(tp)?);
    stack.verify().await?;
    let warm = measure::open_sessions(stack.addr, 10, 10).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = (sysinfo::rss_bytes(ap)?, sysinfo::rss_bytes(tp)?);
    let t = Instant::now();
    let open = bounded(
        "opening idle sessions",
        Duration::from_secs(600),
        measure::open_sessions(stack.addr, n, parallel),
    )
    .await?;
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.check_alive()?;
    let loaded = (sysinfo::rss_bytes(ap)?, sysinfo::rss_bytes(tp)?);
    drop(open);
    stack.stop().await;
    let per = |l: u64, b: u64| (l as f64 - b as f64) / n as f64;
    Ok(ScaleRep {
        sessions: n,
        idle_appliance_bytes: idle.0,
        idle_tunnel_lite_bytes: idle.1,
        base_appliance_bytes: base.0,
        base_tunnel_lite_bytes: base.1,
        loaded_appliance_bytes: loaded.0,
        loaded_tunnel_lite_bytes: loaded.1,
        appliance_bytes_per_session: per(loaded.0, base.0),
        tunnel_lite_bytes_per_session: per(loaded.1, base.1),
        open_secs,
    })
}

/// Direct round trips with the client (this process) and the upstream on
/// the same CPU, then on two CPUs: what a cross-CPU wake-up costs here.
async fn calibrate(
    plan: &Plan,
    upstream: SocketAddr,
    upstream_pid: u32,
    cpus: &[usize],
) -> Result<Calibration> {
    let me = std::process::id();
    let run = |client: usize, server: usize| async move {
        sysinfo::set_affinity(me, &cpus[client..=client])?;
        sysinfo::set_affinity(upstream_pid, &cpus[server..=server])?;
        let mut s = measure::ping_pong(upstream, plan.rtt_warmup, plan.rtt_rounds).await?;
        anyhow::Ok(p50_p99_us(&mut s))
    };
    let same = run(0, 0).await;
    let cross = run(0, 1).await;
    sysinfo::set_affinity(me, cpus)?;
    sysinfo::set_affinity(upstream_pid, cpus)?;
    let (same, cross) = (same?, cross?);
    eprintln!(
        "calibration: direct round trip p50 {:.1} us on one CPU, {:.1} us across two",
        same.0, cross.0
    );
    Ok(Calibration {
        same_cpu_p50_us: same.0,
        same_cpu_p99_us: same.1,
        cross_cpu_p50_us: cross.0,
        cross_cpu_p99_us: cross.1,
    })
}

/// Issue 8's targets next to the medians.
fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for (id, dir) in [("bulk_up_gbps", "up"), ("bulk_down_gbps", "down")] {
        let m = r.metric(id);
        let (d, s, t) = (
            m.median_of("direct"),
            m.median_of("socat"),
            m.median_of("tunnel"),
        );
        out.push(Target {
            what: format!("throughput {dir}, tunnel vs socat"),
            target: ">= 0.90x socat".into(),
            measured: format!(
                "{:.2}x socat ({t:.2} vs {s:.2} Gbit/s; direct {d:.2}, tunnel {:.2}x direct)",
                t / s,
                t / d
            ),
            pass: t / s >= 0.9,
        });
    }
    let added = |id: &str| {
        let m = r.metric(id);
        (
            m.median_of("tunnel") - m.median_of("direct"),
            m.median_of("direct"),
            m.median_of("tunnel"),
        )
    };
    let (a, d, t) = added("rtt_p50_us");
    out.push(Target {
        what: "round trip p50, added by the tunnel".into(),
        target: "<= 40 us".into(),
        measured: format!("+{a:.1} us ({t:.1} vs direct {d:.1} us)"),
        pass: a <= 40.0,
    });
    let (a, d, t) = added("rtt_1cpu_p50_us");
    out.push(Target {
        what: "round trip p50 added, every process on one CPU (diagnostic: no cross-CPU wake-ups)"
            .into(),
        target: "<= 40 us".into(),
        measured: format!("+{a:.1} us ({t:.1} vs direct {d:.1} us)"),
        pass: a <= 40.0,
    });
    for (id, what) in [
        ("setup_p50_us", "connection setup p50, added by the tunnel"),
        (
            "setup_p99_us",
            "connection setup p99, added by the tunnel (same bound applied to p99)",
        ),
        (
            "setup_nospare_p50_us",
            "connection setup p50 added, tunnel-lite --no-spare (diagnostic: a resumed TLS handshake per connection)",
        ),
        (
            "setup_nospare_p99_us",
            "connection setup p99 added, tunnel-lite --no-spare (diagnostic, as above)",
        ),
    ] {
        let (a, d, t) = added(id);
        out.push(Target {
            what: what.into(),
            target: "<= 1.5 ms".into(),
            measured: format!(
                "+{:.3} ms ({:.3} vs direct {:.3} ms)",
                a / 1e3,
                t / 1e3,
                d / 1e3
            ),
            pass: a <= 1500.0,
        });
    }
    let mem = &r.memory;
    out.push(Target {
        what: format!(
            "appliance memory per idle tunneled session (N = {}; issue: 10,000)",
            r.params.sessions
        ),
        target: "<= 20 KiB".into(),
        measured: format!("{:.1} KiB", mem.median_appliance_bytes_per_session / 1024.0),
        pass: mem.median_appliance_bytes_per_session <= 20.0 * 1024.0,
    });
    out.push(Target {
        what: "appliance idle RSS after start".into(),
        target: "<= 16 MiB".into(),
        measured: format!("{:.1} MiB", mem.median_idle_appliance_bytes / 1048576.0),
        pass: mem.median_idle_appliance_bytes <= 16.0 * 1048576.0,
    });
    out.push(Target {
        what: "tunnel-lite idle RSS after start".into(),
        target: "<= 8 MiB".into(),
        measured: format!("{:.1} MiB", mem.median_idle_tunnel_lite_bytes / 1048576.0),
        pass: mem.median_idle_tunnel_lite_bytes <= 8.0 * 1048576.0,
    });
    if let Some(a) = &r.active {
        let p99 = |name: &str| a.series.iter().find(|s| s.setup == name).map(|s| s.p99_us);
        if let (Some(d), Some(t)) = (p99("direct"), p99("tunnel")) {
            out.push(Target {
                what: format!(
                    "{} active sessions, one {}-byte request each per {} ms: p99 (issue: report it)",
                    a.sessions, a.request_bytes, a.period_ms
                ),
                target: "reported".into(),
                measured: format!("tunnel {t:.0} us vs direct {d:.0} us (+{:.0} us)", t - d),
                pass: true,
            });
        }
    }
    if let Some(a) = &r.alloc {
        for d in &a.directions {
            out.push(Target {
                what: format!(
                    "heap allocations per forwarded 16 KiB chunk, {}",
                    d.direction
                ),
                target: "0 (appliance and tunnel-lite)".into(),
                measured: format!(
                    "appliance {:.3}, tunnel-lite {:.3}",
                    d.appliance_per_chunk, d.tunnel_lite_per_chunk
                ),
                // Below one allocation per thousand chunks is timer and
                // housekeeping noise, not the data path.
                pass: d.appliance_per_chunk < 0.001 && d.tunnel_lite_per_chunk < 0.001,
            });
        }
    }
    out
}

fn socat_version(socat: &Path) -> String {
    std::process::Command::new(socat)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("socat version"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
