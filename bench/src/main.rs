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
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut report = Report::new(&settings);
    rt.block_on(stream::run(&settings, &mut report));
    report.print();
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: tether-bench [--repeats N] [--quick]");
    std::process::exit(if err.is_empty() { 0 } else { 2 });
}

/// Median, min and max of a sample of durations.
pub fn summarize(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
