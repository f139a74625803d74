//! The run's record: what was measured (raw per-repetition values, medians,
//! ratios), on what machine and build, with which commands; rendered as
//! `RESULTS.md` (tables for people) and `results.json` (the same data).

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::median;
use crate::sysinfo::Machine;

pub const SETUPS: [&str; 3] = ["direct", "socat", "tunnel"];

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub mode: &'static str,
    pub command: String,
    pub duration_secs: f64,
    pub machine: Machine,
    /// Direct 1-byte round trip with client and upstream on one CPU and on two.
    pub calibration: Option<Calibration>,
    pub versions: Versions,
    pub params: Params,
    pub setups: Vec<SetupInfo>,
    pub metrics: Vec<Metric>,
    pub memory: Memory,
    /// Allocations per forwarded chunk (count-alloc build), when built.
    pub alloc: Option<crate::alloc::AllocReport>,
    /// Many sessions sending small requests at once.
    pub active: Option<crate::active::ActiveReport>,
    pub targets: Vec<Target>,
    /// Wall time per phase and setup, summed over repetitions.
    pub phase_secs: Vec<Phase>,
    pub notes: Vec<String>,
    /// POSTGRES.md's target table and profile (bench/pg.sh's results), when present.
    #[serde(skip)]
    pub postgres: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Calibration {
    pub same_cpu_p50_us: f64,
    pub same_cpu_p99_us: f64,
    pub cross_cpu_p50_us: f64,
    pub cross_cpu_p99_us: f64,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub rustc: String,
    pub git_commit: String,
    pub appliance: String,
    pub tunnel_lite: String,
    pub socat: String,
    pub appliance_path: String,
    pub tunnel_lite_path: String,
    pub stale_binaries: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Params {
    pub reps: usize,
    pub bulk_bytes: u64,
    pub rtt_warmup: usize,
    pub rtt_rounds: usize,
    pub setup_warmup: usize,
    pub setup_conns: usize,
    pub sessions: usize,
    pub sessions_parallel: usize,
    pub scale_reps: usize,
}

#[derive(Debug, Serialize)]
pub struct SetupInfo {
    pub name: &'static str,
    pub path: String,
    pub commands: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Metric {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub by_setup: Vec<SetupSeries>,
}

#[derive(Debug, Serialize)]
pub struct SetupSeries {
    pub setup: &'static str,
    /// One value per repetition, in run order.
    pub samples: Vec<f64>,
    pub median: f64,
    /// median / direct's median.
    pub ratio_to_direct: f64,
    /// median - direct's median (for times; throughput leaves it 0).
    pub added_vs_direct: f64,
}

impl Metric {
    pub fn new(
        id: &'static str,
        title: &'static str,
        unit: &'static str,
        higher_is_better: bool,
        samples: &[Vec<f64>; 3],
    ) -> Metric {
        let direct = median(&samples[0]);
        let by_setup = SETUPS
            .iter()
            .zip(samples.iter())
            .map(|(setup, s)| {
                let m = median(s);
                SetupSeries {
                    setup,
                    samples: s.clone(),
                    median: m,
                    ratio_to_direct: m / direct,
                    added_vs_direct: if higher_is_better { 0.0 } else { m - direct },
                }
            })
            .collect();
        Metric {
            id,
            title,
            unit,
            higher_is_better,
            by_setup,
        }
    }

    pub fn median_of(&self, setup: &str) -> f64 {
        self.by_setup
            .iter()
            .find(|s| s.setup == setup)
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Serialize, Default)]
pub struct Memory {
    /// The benchmark stack's processes right after start (no tunnel opened yet).
    pub main_idle_appliance_bytes: u64,
    pub main_idle_tunnel_lite_bytes: u64,
    /// The same processes after every throughput/latency/setup repetition.
    pub main_end_appliance_bytes: u64,
    pub main_end_tunnel_lite_bytes: u64,
    pub main_peak_appliance_bytes: u64,
    pub main_peak_tunnel_lite_bytes: u64,
    /// Fresh stacks, one per repetition, holding N idle sessions.
    pub scale: Vec<ScaleRep>,
    pub median_idle_appliance_bytes: f64,
    pub median_idle_tunnel_lite_bytes: f64,
    pub median_appliance_bytes_per_session: f64,
    pub median_tunnel_lite_bytes_per_session: f64,
}

#[derive(Debug, Serialize, Clone)]
pub struct ScaleRep {
    pub sessions: usize,
    /// Right after start: tunnel-lite listening, no tunnel opened yet.
    pub idle_appliance_bytes: u64,
    pub idle_tunnel_lite_bytes: u64,
    /// After a warm-up of a few sessions opened and closed.
    pub base_appliance_bytes: u64,
    pub base_tunnel_lite_bytes: u64,
    /// With `sessions` idle tunneled sessions open.
    pub loaded_appliance_bytes: u64,
    pub loaded_tunnel_lite_bytes: u64,
    pub appliance_bytes_per_session: f64,
    pub tunnel_lite_bytes_per_session: f64,
    pub open_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub phase: String,
    pub secs: f64,
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

fn num(v: f64, unit: &str) -> String {
    match unit {
        "Gbit/s" => format!("{v:.2}"),
        _ if v.abs() >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

impl Report {
    pub fn metric(&self, id: &str) -> &Metric {
        self.metrics
            .iter()
            .find(|m| m.id == id)
            .expect("metric exists")
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Benchmark results: the tunnel data path\n");
        let _ = writeln!(
            w,
            "Written by `bench` ({} mode) on {}; run time {:.0} s. Regenerate with the command below; \
             see [README.md](README.md) for what each number means.\n",
            self.mode, self.date, self.duration_secs
        );
        let _ = writeln!(w, "```\n{}\n```\n", self.command);
        let _ = writeln!(
            w,
            "Other results, each from its own command: the PostgreSQL gateway in \
             [POSTGRES.md](POSTGRES.md) (`bench/pg.sh`), the static binaries' sizes and idle \
             memory against their budgets in [STATIC.md](STATIC.md) (`scripts/build-static`), \
             profiles and before/after figures in [PROFILE.md](PROFILE.md). `bench/all` runs \
             this harness, pg.sh and the HTTP and SSH gateway benchmarks in one go.\n"
        );
        for n in &self.notes {
            let _ = writeln!(w, "> {n}\n");
        }

        let _ = writeln!(w, "## Targets (issue 8)\n");
        let _ = writeln!(w, "| what | target | measured | |\n|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                w,
                "| {} | {} | {} | **{}** |",
                t.what,
                t.target,
                t.measured,
                if t.pass { "PASS" } else { "MISS" }
            );
        }
        let missed: Vec<&Target> = self.targets.iter().filter(|t| !t.pass).collect();
        if missed.is_empty() {
            let _ = writeln!(w, "\nEvery target is met.\n");
        } else {
            let _ = writeln!(
                w,
                "\n{} of {} targets missed; the numbers are as measured (no product code was tuned for this run).\n",
                missed.len(),
                self.targets.len()
            );
        }

        let _ = writeln!(
            w,
            "## Data path: medians of {} interleaved repetitions\n",
            self.params.reps
        );
        let _ = writeln!(
            w,
            "Setups ran in the order direct, socat, tunnel within each repetition of each measurement. \
             `x direct` is the setup's median over direct's; `+ direct` is the difference.\n"
        );
        let _ = writeln!(
            w,
            "| measurement | direct | socat | tunnel | socat x direct | tunnel x direct | tunnel x socat | tunnel + direct |\n|---|---|---|---|---|---|---|---|"
        );
        for m in &self.metrics {
            let d = m.median_of("direct");
            let s = m.median_of("socat");
            let t = m.median_of("tunnel");
            let added = if m.higher_is_better {
                "".to_string()
            } else {
                format!("+{} {}", num(t - d, m.unit), m.unit)
            };
            let _ = writeln!(
                w,
                "| {} ({}) | {} | {} | {} | {:.2}x | {:.2}x | {:.2}x | {} |",
                m.title,
                m.unit,
                num(d, m.unit),
                num(s, m.unit),
                num(t, m.unit),
                s / d,
                t / d,
                t / s,
                added
            );
        }
        let _ = writeln!(w, "\nPer repetition (run order):\n");
        let _ = writeln!(
            w,
            "| measurement | setup | values | median |\n|---|---|---|---|"
        );
        for m in &self.metrics {
            for s in &m.by_setup {
                let vals: Vec<String> = s.samples.iter().map(|v| num(*v, m.unit)).collect();
                let _ = writeln!(
                    w,
                    "| {} ({}) | {} | {} | {} |",
                    m.title,
                    m.unit,
                    s.setup,
                    vals.join(", "),
                    num(s.median, m.unit)
                );
            }
        }

        let mem = &self.memory;
        let _ = writeln!(w, "\n## Memory (RSS, /proc/PID/status VmRSS)\n");
        let _ = writeln!(
            w,
            "| reading | appliance | tunnel-lite |\n|---|---|---|\n\
             | idle after start, median of {} fresh starts | {} | {} |\n\
             | benchmark stack, idle after start | {} | {} |\n\
             | benchmark stack, after all data-path repetitions | {} | {} |\n\
             | benchmark stack, peak (VmHWM) | {} | {} |\n\
             | per idle tunneled session (median, N = {}) | {} | {} |",
            mem.scale.len(),
            mib(mem.median_idle_appliance_bytes),
            mib(mem.median_idle_tunnel_lite_bytes),
            mib(mem.main_idle_appliance_bytes as f64),
            mib(mem.main_idle_tunnel_lite_bytes as f64),
            mib(mem.main_end_appliance_bytes as f64),
            mib(mem.main_end_tunnel_lite_bytes as f64),
            mib(mem.main_peak_appliance_bytes as f64),
            mib(mem.main_peak_tunnel_lite_bytes as f64),
            self.params.sessions,
            kib(mem.median_appliance_bytes_per_session),
            kib(mem.median_tunnel_lite_bytes_per_session),
        );
        let _ = writeln!(
            w,
            "\nEach repetition of the sessions test starts a fresh appliance and tunnel-lite, reads the idle RSS, \
             opens and closes 10 warm-up sessions, reads the base RSS, opens N sessions ({} at a time, each proven \
             by one echo) and reads the RSS again: per session = (loaded - base) / N.\n",
            self.params.sessions_parallel
        );
        let _ = writeln!(
            w,
            "| rep | N | appliance idle / base / loaded | per session | tunnel-lite idle / base / loaded | per session | open time |\n|---|---|---|---|---|---|---|"
        );
        for (i, r) in mem.scale.iter().enumerate() {
            let _ = writeln!(
                w,
                "| {} | {} | {} / {} / {} | {} | {} / {} / {} | {} | {:.1} s |",
                i + 1,
                r.sessions,
                mib(r.idle_appliance_bytes as f64),
                mib(r.base_appliance_bytes as f64),
                mib(r.loaded_appliance_bytes as f64),
                kib(r.appliance_bytes_per_session),
                mib(r.idle_tunnel_lite_bytes as f64),
                mib(r.base_tunnel_lite_bytes as f64),
                mib(r.loaded_tunnel_lite_bytes as f64),
                kib(r.tunnel_lite_bytes_per_session),
                r.open_secs
            );
        }

        w.push_str(&crate::active::markdown(self.active.as_ref()));
        w.push_str("\nProfiles, fixes and before/after figures: [PROFILE.md](PROFILE.md).\n");
        w.push_str(&crate::alloc::markdown(self.alloc.as_ref()));
        let _ = writeln!(w, "\n## Machine and build\n");
        let m = &self.machine;
        let v = &self.versions;
        let _ = writeln!(
            w,
            "| | |\n|---|---|\n\
             | date (UTC) | {} |\n| CPU | {} |\n| nproc | {} |\n| memory | {} MiB |\n| kernel | {} |\n| OS | {} |\n\
             | load average (1, 5, 15 min) at start / at end, the latter including this run | {} / {} |\n| open-files limit | {} |\n\
             | rustc | {} |\n| workspace commit | {} |\n| appliance | {} (`{}`) |\n| tunnel-lite | {} (`{}`) |\n| socat | {} |",
            self.date,
            m.cpu_model,
            m.nproc,
            m.mem_total_mib,
            m.kernel,
            m.os,
            m.loadavg_start,
            m.loadavg_end,
            m.open_files_limit,
            v.rustc,
            v.git_commit,
            v.appliance,
            v.appliance_path,
            v.tunnel_lite,
            v.tunnel_lite_path,
            v.socat
        );
        if let Some(c) = &self.calibration {
            let _ = writeln!(
                w,
                "| direct 1-byte round trip, client and upstream on one CPU | p50 {:.1} us, p99 {:.1} us |\n\
                 | direct 1-byte round trip, client and upstream on two CPUs | p50 {:.1} us, p99 {:.1} us |",
                c.same_cpu_p50_us, c.same_cpu_p99_us, c.cross_cpu_p50_us, c.cross_cpu_p99_us
            );
        }
        for s in &v.stale_binaries {
            let _ = writeln!(w, "\n**Stale build**: {s}.");
        }

        let p = &self.params;
        let _ = writeln!(w, "\n## Parameters\n");
        let _ = writeln!(
            w,
            "- repetitions: {} (interleaved: each measurement runs direct, socat, tunnel, then the next repetition)\n\
             - bulk: {} bytes ({:.2} GB) each way per setup and repetition, 256 KiB writes/reads, one connection\n\
             - round trip: 1 byte written, 1 byte read back, TCP_NODELAY; {} warm-up then {} recorded round trips on one connection\n\
             - connection setup: connect + 1-byte echo round trip, then close; {} warm-up then {} recorded connections, one after another\n\
             - idle sessions: N = {}, {} repetitions with fresh processes",
            p.reps,
            p.bulk_bytes,
            p.bulk_bytes as f64 / 1e9,
            p.rtt_warmup,
            p.rtt_rounds,
            p.setup_warmup,
            p.setup_conns,
            p.sessions,
            p.scale_reps
        );

        let _ = writeln!(w, "\n## Setups and exact commands\n");
        for s in &self.setups {
            let _ = writeln!(w, "**{}**: {}\n", s.name, s.path);
            if !s.commands.is_empty() {
                let _ = writeln!(w, "```\n{}\n```\n", s.commands.join("\n"));
            }
        }

        let _ = writeln!(w, "## Where the time went\n");
        let _ = writeln!(
            w,
            "The whole run took {:.0} s against a budget of about 10 minutes on 2 cores{}\n",
            self.duration_secs,
            if self.mode == "full" && self.duration_secs < 600.0 {
                ", so the default sizes (2 GB each way, 20,000 round trips, 500 connections, N = 1,000) are kept."
            } else {
                "."
            }
        );
        let _ = writeln!(w, "| phase | seconds |\n|---|---|");
        for ph in &self.phase_secs {
            let _ = writeln!(w, "| {} | {:.1} |", ph.phase, ph.secs);
        }
        if let Some(pg) = &self.postgres {
            let _ = writeln!(
                w,
                "\n## PostgreSQL gateway: targets and what stands in the way\n\n\
                 Copied from [POSTGRES.md](POSTGRES.md) (`bench/pg.sh`, run separately: it needs \
                 PostgreSQL, PgBouncer and pgbench; its date and full tables are there).\n\n{}",
                pg.trim_end()
            );
        }
        md
    }
}
