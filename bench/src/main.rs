//! actix-tether benchmarks: every figure is printed next to a baseline measured in the same
//! run, as a ratio. Run with
//!
//! ```text
//! cargo run --release -p tether-bench -- [--repeats N] [--quick]
//! ```
//!
//! Method: each scenario runs every contender once per repeat, interleaved (paired repeats),
//! and reports the median with the min–max over repeats. Absolute numbers drift between
//! runs on shared VMs; only the ratios within one run are meaningful.

mod report;
mod stream;

use std::time::Duration;

use report::Report;

/// Settings of one benchmark run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Paired repeats per scenario (the median is reported).
    pub repeats: usize,
    /// Bytes streamed per throughput measurement (message count = bytes / size, clamped).
    pub stream_bytes: usize,
    /// Round trips per latency measurement.
    pub round_trips: usize,
    /// Only this runtime flavor (default: both).
    pub flavor: Option<Flavor>,
}

/// The tokio runtime a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// One thread, as an actix Arbiter runs: no cross-thread wake-ups inside the process.
    CurrentThread,
    /// Two worker threads: tasks may run on either core.
    MultiThread,
}

impl Flavor {
    /// Short label used in scenario names.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "ct",
            Flavor::MultiThread => "mt",
        }
    }

    fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
        .expect("tokio runtime")
    }
}

impl Settings {
    fn flavors(&self) -> Vec<Flavor> {
        match self.flavor {
            Some(f) => vec![f],
            None => vec![Flavor::CurrentThread, Flavor::MultiThread],
        }
    }
}

impl Settings {
    /// Messages for a throughput measurement of `size`-byte messages.
    pub fn stream_messages(&self, size: usize) -> usize {
        (self.stream_bytes / size.max(1)).clamp(2_000, 400_000)
    }
}

fn main() {
    let mut settings = Settings {
        repeats: 7,
        stream_bytes: 64 << 20,
        round_trips: 5_000,
        flavor: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--flavor" => {
                settings.flavor = match args.next().as_deref() {
                    Some("ct") => Some(Flavor::CurrentThread),
                    Some("mt") => Some(Flavor::MultiThread),
                    _ => usage("--flavor needs ct or mt"),
                }
            }
            "--quick" => {
                settings.repeats = 3;
                settings.stream_bytes = 8 << 20;
                settings.round_trips = 1_000;
            }
            "--repeats" => {
                settings.repeats = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v > 0)
                    .unwrap_or_else(|| usage("--repeats needs a positive number"));
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }

    let mut report = Report::new(&settings);
    for flavor in settings.flavors() {
        let rt = flavor.runtime();
        rt.block_on(stream::run(&settings, flavor, &mut report));
    }
    report.print();
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: tether-bench [--repeats N] [--quick] [--flavor ct|mt]");
    std::process::exit(if err.is_empty() { 0 } else { 2 });
}

/// Median, min and max of a sample of durations.
pub fn summarize(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
