//! actix-tether benchmarks against baselines and peer crates, side by side in one run.
//!
//! ```text
//! cargo run --release -p tether-bench -- [--quick] [--repeats N] [--only TEXT] [--out DIR] [--report FILE]
//! ```
//!
//! Method: each scenario (round trip or one-way streaming, at one message size) runs every
//! contender once per repeat, interleaved (paired repeats), and reports the median with the
//! min–max over repeats, plus ratios to a baseline and to the best peer measured in the same
//! run. Absolute numbers drift between runs on shared VMs; the ratios are what counts.
//!
//! Adding a contender: push a [`harness::Contender`] in [`contenders`]; any
//! `actix_tether::links::Link` needs only a pair factory, see [`harness::Contender::link`].

mod baselines;
mod harness;
mod ours;
mod paths;
mod peers;
mod pin;
mod report;
mod stream;

use std::path::PathBuf;
use std::time::Instant;

use harness::{Contender, Ctx};

/// Settings of one benchmark run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Paired repeats per scenario (the median is reported).
    pub repeats: usize,
    /// Bytes streamed per one-way measurement (messages = bytes / size, clamped).
    pub stream_bytes: usize,
    /// Lower bound on messages per one-way measurement (see
    /// [`harness::MIN_STREAM_MESSAGES`], the default).
    pub min_stream_messages: usize,
    /// Upper bound on messages per one-way measurement.
    pub max_stream_messages: usize,
    /// Round trips per latency measurement for small messages (fewer for 64 KiB and 1 MiB).
    pub round_trips: usize,
    /// Only contenders whose name contains one of these (empty: all).
    pub only: Vec<String>,
    /// Where the JSON and the SVG charts are written.
    pub out: PathBuf,
    /// Re-render the table and charts from this results.json instead of measuring.
    pub from: Option<PathBuf>,
}

impl Settings {
    /// Whether the contender named `name` is part of this run.
    pub fn selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

/// Every contender of the comparison. The integrator adds this crate's other transports
/// here (ShmLink per idle strategy, inproc, the actor path, StableSession).
fn contenders() -> Vec<Contender> {
    let mut v = baselines::contenders();
    v.extend(stream::contenders());
    v.extend(ours::contenders());
    v.extend(paths::contenders());
    v.extend(peers::contenders());
    v
}

fn main() {
    pin::init();
    let mut s = Settings {
        repeats: 7,
        stream_bytes: 64 << 20,
        min_stream_messages: harness::MIN_STREAM_MESSAGES,
        max_stream_messages: 40_000,
        round_trips: 2_000,
        only: Vec::new(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        from: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                s.repeats = 3;
                s.stream_bytes = 8 << 20;
                s.min_stream_messages = 100;
                s.max_stream_messages = 20_000;
                s.round_trips = 500;
            }
            "--repeats" => {
                s.repeats = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0)
                    .unwrap_or_else(|| usage("--repeats needs a positive number"));
            }
            "--only" => s.only.push(
                args.next()
                    .unwrap_or_else(|| usage("--only needs a name fragment")),
            ),
            "--out" => {
                s.out = args
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| usage("--out needs a directory"))
            }
            "--report" => {
                s.from = Some(
                    args.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--report needs a results.json")),
                )
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }

    if let Some(from) = &s.from {
        let report = report::Report::from_json(from).unwrap_or_else(|e| {
            eprintln!("error: reading {}: {e}", from.display());
            std::process::exit(1);
        });
        print!("{}", report.table());
        let dir = from.parent().unwrap_or(std::path::Path::new("."));
        if let Err(e) = report.chart_files(dir) {
            eprintln!("error: writing charts to {}: {e}", dir.display());
            std::process::exit(1);
        }
        return;
    }
    let header = header(&s);
    for h in &header {
        eprintln!("{h}");
    }
    let start = Instant::now();
    let ctx = Ctx::new();
    let measured = harness::run(&s, &ctx, &contenders());
    let report = report::Report::new(header, measured);
    print!("{}", report.table());
    println!("total time: {:.0} s", start.elapsed().as_secs_f64());
    match report.write_files(&s.out) {
        Ok(()) => println!(
            "raw figures: {}; table: {}; charts: {}, {}",
            s.out.join("results.json").display(),
            s.out.join("table.txt").display(),
            s.out.join("latency.svg").display(),
            s.out.join("throughput.svg").display()
        ),
        Err(e) => {
            eprintln!("error: writing results to {}: {e}", s.out.display());
            std::process::exit(1);
        }
    }
}

/// The machine and the settings, printed at the top of the table.
fn header(s: &Settings) -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    vec![
        format!(
            "machine: {cpu}, {cpus} CPUs; kernel {}; load average at start {}; {date}",
            read("/proc/sys/kernel/osrelease").trim(),
            read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        format!(
            "settings: {} paired repeats (median [min–max] over repeats); round trips per repeat: {} \
             (64 B, 4 KiB), {} (64 KiB), {} (1 MiB), after a tenth as many (10–200) warm-up ones; one-way: {} MiB, at \
             least {} and at most {} messages per repeat; {}",
            s.repeats,
            harness::round_trips(s, 64),
            harness::round_trips(s, 64 << 10),
            harness::round_trips(s, 1 << 20),
            s.stream_bytes >> 20,
            s.min_stream_messages,
            s.max_stream_messages,
            if cfg!(debug_assertions) {
                "DEBUG BUILD: figures are meaningless, use --release"
            } else {
                "release build"
            }
        ),
        "runtimes: (ct) = tokio current-thread, as an actix Arbiter runs; (mt) = tokio \
         multi-thread with 2 workers; thread-based contenders (spin, ipc-channel, iceoryx2) use \
         one OS thread per side"
            .to_string(),
    ]
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!(
        "usage: tether-bench [--quick] [--repeats N] [--only NAME_FRAGMENT]... [--out DIR] [--report FILE]\n\
         \x20 --quick     3 repeats, fewer round trips and messages (about 30 s)\n\
         \x20 --only X    only contenders whose name contains X (repeatable)\n\
         \x20 --out DIR   where results.json, latency.svg and throughput.svg go\n\
         \x20             (default: bench/results)\n\
         \x20 --report F  print the table and redraw the charts of an earlier results.json F\n\
         \x20             (charts go next to F); measures nothing"
    );
    std::process::exit(if err.is_empty() { 0 } else { 2 });
}
