//! Collecting figures and printing them as a table with ratios to a baseline.

use std::time::Duration;

use crate::{summarize, Settings};

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One-way streaming: messages per second (higher is better).
    Throughput,
    /// Request/response: time per round trip (lower is better).
    RoundTrip,
}

/// One contender's result in one scenario.
pub struct Row {
    pub scenario: String,
    pub size: usize,
    pub contender: String,
    pub kind: Kind,
    /// Per repeat: time for `ops` operations.
    pub samples: Vec<Duration>,
    pub ops: usize,
    /// Name of the contender in the same scenario and size this row is compared to.
    pub baseline: Option<String>,
}

pub struct Report {
    header: String,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(s: &Settings) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        Report {
            header: format!(
                "machine: {} CPUs, {}; runtimes: ct = tokio current-thread (as an actix Arbiter), mt = tokio multi-thread with 2 workers; repeats: {} (median [min–max]); stream bytes per run: {} MiB; round trips per run: {}",
                cpus,
                std::env::consts::ARCH,
                s.repeats,
                s.stream_bytes >> 20,
                s.round_trips
            ),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    fn value(row: &Row, d: Duration) -> f64 {
        match row.kind {
            Kind::Throughput => row.ops as f64 / d.as_secs_f64(),
            Kind::RoundTrip => d.as_secs_f64() * 1e6 / row.ops as f64,
        }
    }

    fn median_value(&self, row: &Row) -> f64 {
        let (med, _, _) = summarize(row.samples.clone());
        Self::value(row, med)
    }

    pub fn print(&self) {
        println!("{}", self.header);
        println!(
            "{:<28} {:>7}  {:<34} {:>26}  {:>8}  vs",
            "scenario", "size", "contender", "median [min–max]", "ratio"
        );
        for row in &self.rows {
            let (med, lo, hi) = summarize(row.samples.clone());
            let (m, a, b) = (
                Self::value(row, med),
                Self::value(row, lo),
                Self::value(row, hi),
            );
            // For throughput the fastest run (lo duration) is the max value.
            let (lo_v, hi_v) = if a < b { (a, b) } else { (b, a) };
            let fig = match row.kind {
                Kind::Throughput => {
                    format!("{} msg/s [{}–{}]", si(m), si(lo_v), si(hi_v))
                }
                Kind::RoundTrip => format!("{m:.1} µs [{lo_v:.1}–{hi_v:.1}]"),
            };
            let (ratio, vs) =
                match &row.baseline {
                    Some(b) => match self.rows.iter().find(|r| {
                        &r.contender == b && r.scenario == row.scenario && r.size == row.size
                    }) {
                        Some(base) => {
                            let bv = self.median_value(base);
                            let noisy = overlaps(self, row, base);
                            (
                                format!("{:.2}×{}", m / bv, if noisy { "~" } else { "" }),
                                b.clone(),
                            )
                        }
                        None => ("-".into(), String::new()),
                    },
                    None => ("1.00×".into(), "(baseline)".into()),
                };
            println!(
                "{:<28} {:>7}  {:<34} {:>26}  {:>8}  {}",
                row.scenario,
                size(row.size),
                row.contender,
                fig,
                ratio,
                vs
            );
        }
        println!("ratio: this row's median ÷ the baseline's median (msg/s for throughput, µs for round trips: lower is better there).");
        println!("'~' marks rows whose min–max range overlaps the baseline's: too noisy to rank.");
    }
}

fn overlaps(_r: &Report, a: &Row, b: &Row) -> bool {
    let (_, alo, ahi) = summarize(a.samples.clone());
    let (_, blo, bhi) = summarize(b.samples.clone());
    let (a0, a1) = (
        alo.as_secs_f64() / a.ops as f64,
        ahi.as_secs_f64() / a.ops as f64,
    );
    let (b0, b1) = (
        blo.as_secs_f64() / b.ops as f64,
        bhi.as_secs_f64() / b.ops as f64,
    );
    a0 <= b1 && b0 <= a1
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}
