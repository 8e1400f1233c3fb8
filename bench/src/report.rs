//! Turning raw samples into the stdout table, the JSON file and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::harness::{Kind, Measured, Role, SIZES};

/// Median, min and max over repeats of one figure.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median over repeats.
    pub median: f64,
    /// Smallest repeat.
    pub min: f64,
    /// Largest repeat.
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// Whether the min–max ranges of `self` and `o` overlap: too noisy to rank.
    fn overlaps(&self, o: &Spread) -> bool {
        self.min <= o.max && o.min <= self.max
    }
}

/// Summary figures of one row.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Round trip: p50 of each repeat, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<Spread>,
    /// Round trip: p99 of each repeat, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<Spread>,
    /// Round trip: p99.9 of each repeat, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<Spread>,
    /// One way: messages per second of each repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_s: Option<Spread>,
    /// One way: bytes per second of each repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_s: Option<Spread>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// Computes the summary of one row.
pub fn summarize(m: &Measured) -> Summary {
    let mut s = Summary {
        p50_us: None,
        p99_us: None,
        p999_us: None,
        msgs_per_s: None,
        bytes_per_s: None,
    };
    match m.kind {
        Kind::RoundTrip => {
            let sorted: Vec<Vec<u64>> = m
                .round_trip_ns
                .iter()
                .filter(|v| !v.is_empty())
                .map(|v| {
                    let mut v = v.clone();
                    v.sort_unstable();
                    v
                })
                .collect();
            let pct = |q| Spread::of(sorted.iter().map(|v| percentile(v, q)).collect());
            s.p50_us = pct(0.50);
            s.p99_us = pct(0.99);
            s.p999_us = pct(0.999);
        }
        Kind::OneWay => {
            let rates: Vec<f64> = m
                .one_way_total_ns
                .iter()
                .map(|&ns| m.ops as f64 / (ns.max(1) as f64 / 1e9))
                .collect();
            s.bytes_per_s = Spread::of(rates.iter().map(|r| r * m.size as f64).collect());
            s.msgs_per_s = Spread::of(rates);
        }
    }
    s
}

/// The figure rows are ranked by: p50 round trip (lower is better) or msg/s (higher).
fn key(s: &Summary) -> Option<Spread> {
    s.p50_us.or(s.msgs_per_s)
}

/// Machine, settings and every row, raw and summarized.
#[derive(Serialize)]
pub struct Report {
    /// Machine description and settings, as printed at the top.
    pub header: Vec<String>,
    /// Every row.
    pub rows: Vec<RowOut>,
}

/// One row of the JSON output.
#[derive(Serialize)]
pub struct RowOut {
    /// The raw samples.
    #[serde(flatten)]
    pub measured: Measured,
    /// Medians and ranges derived from them.
    pub summary: Summary,
}

impl Report {
    /// Summarizes every measured row.
    pub fn new(header: Vec<String>, measured: Vec<Measured>) -> Self {
        let rows = measured
            .into_iter()
            .map(|m| RowOut {
                summary: summarize(&m),
                measured: m,
            })
            .collect();
        Report { header, rows }
    }

    fn find(&self, kind: Kind, size: usize, name: &str) -> Option<&RowOut> {
        self.rows.iter().find(|r| {
            r.measured.kind == kind && r.measured.size == size && r.measured.contender == name
        })
    }

    /// The peer with the best median in this scenario and size.
    fn best_peer(&self, kind: Kind, size: usize) -> Option<&RowOut> {
        let better = |a: f64, b: f64| match kind {
            Kind::RoundTrip => a < b,
            Kind::OneWay => a > b,
        };
        let mut best: Option<&RowOut> = None;
        for r in self.rows.iter().filter(|r| {
            r.measured.kind == kind && r.measured.size == size && r.measured.role == Role::Peer
        }) {
            let Some(k) = key(&r.summary) else { continue };
            if best
                .and_then(|b| key(&b.summary))
                .is_none_or(|bk| better(k.median, bk.median))
            {
                best = Some(r);
            }
        }
        best
    }

    /// `this ÷ other` of the medians, with '~' when the ranges overlap.
    fn ratio(this: &Summary, other: &Summary) -> String {
        match (key(this), key(other)) {
            (Some(a), Some(b)) => format!(
                "{:.2}×{}",
                a.median / b.median,
                if a.overlaps(&b) { "~" } else { "" }
            ),
            _ => "-".into(),
        }
    }

    /// The full table as text (what is printed to stdout and pasted into BENCHMARKS.md).
    pub fn table(&self) -> String {
        let mut t = String::new();
        for h in &self.header {
            let _ = writeln!(t, "{h}");
        }
        for kind in [Kind::RoundTrip, Kind::OneWay] {
            for &size in &SIZES {
                let rows: Vec<&RowOut> = self
                    .rows
                    .iter()
                    .filter(|r| r.measured.kind == kind && r.measured.size == size)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let best = self.best_peer(kind, size);
                let _ = writeln!(t);
                match kind {
                    Kind::RoundTrip => {
                        let _ = writeln!(
                            t,
                            "== round trip, {} ({} round trips per repeat) ==",
                            fmt_size(size),
                            rows[0].measured.ops
                        );
                        let _ = writeln!(
                            t,
                            "{:<34} {:>8} {:>24} {:>9} {:>9}  {:<36} {}",
                            "contender",
                            "role",
                            "p50 µs [min–max]",
                            "p99 µs",
                            "p99.9 µs",
                            "vs baseline (p50)",
                            "vs best peer"
                        );
                    }
                    Kind::OneWay => {
                        let _ = writeln!(
                            t,
                            "== one-way streaming, {} ({} messages per repeat) ==",
                            fmt_size(size),
                            rows[0].measured.ops
                        );
                        let _ = writeln!(
                            t,
                            "{:<34} {:>8} {:>24} {:>9} {:>9}  {:<36} {}",
                            "contender",
                            "role",
                            "msg/s [min–max]",
                            "bytes/s",
                            "",
                            "vs baseline (msg/s)",
                            "vs best peer"
                        );
                    }
                }
                for r in rows {
                    let m = &r.measured;
                    let s = &r.summary;
                    let role = match m.role {
                        Role::Baseline => "baseline",
                        Role::Ours => "ours",
                        Role::Peer => "peer",
                    };
                    if let Some(err) = &m.failed {
                        if key(s).is_none() {
                            let _ = writeln!(t, "{:<34} {:>8} FAILED: {err}", m.contender, role);
                            continue;
                        }
                    }
                    let (fig, b, c) = match kind {
                        Kind::RoundTrip => (
                            s.p50_us.map(|p| {
                                format!("{} [{}–{}]", us(p.median), us(p.min), us(p.max))
                            }),
                            s.p99_us.map(|p| us(p.median)),
                            s.p999_us.map(|p| us(p.median)),
                        ),
                        Kind::OneWay => (
                            s.msgs_per_s.map(|p| {
                                format!("{} [{}–{}]", si(p.median), si(p.min), si(p.max))
                            }),
                            s.bytes_per_s.map(|p| format!("{}B", si(p.median))),
                            None,
                        ),
                    };
                    let vs_base = match &m.baseline {
                        Some(name) => match self.find(kind, size, name) {
                            Some(base) => {
                                format!("{} {}", Self::ratio(s, &base.summary), name)
                            }
                            None => "-".into(),
                        },
                        None => String::new(),
                    };
                    let vs_peer = match best {
                        Some(p) if m.role != Role::Baseline => {
                            if std::ptr::eq(p, r) {
                                "best peer".into()
                            } else {
                                format!("{} {}", Self::ratio(s, &p.summary), p.measured.contender)
                            }
                        }
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        t,
                        "{:<34} {:>8} {:>24} {:>9} {:>9}  {:<36} {}",
                        m.contender,
                        role,
                        fig.unwrap_or_else(|| "-".into()),
                        b.unwrap_or_default(),
                        c.unwrap_or_default(),
                        vs_base,
                        vs_peer
                    );
                }
            }
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "ratios: this row's median ÷ the other's median. Round trip: p50 in µs, lower is better \
             (0.50× = twice as fast). One way: msg/s, higher is better (2.00× = twice the rate)."
        );
        let _ = writeln!(
            t,
            "'~' after a ratio: the two rows' min–max ranges over the repeats overlap, so this run \
             cannot rank them."
        );
        t
    }

    /// Writes `results.json`, `latency.svg` and `throughput.svg` into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(self)?)?;
        self.chart(&dir.join("latency.svg"), Kind::RoundTrip)?;
        self.chart(&dir.join("throughput.svg"), Kind::OneWay)?;
        Ok(())
    }

    /// One line per contender across message sizes, log–log: p50 round trip in µs, or
    /// one-way bytes/s.
    fn chart(&self, path: &Path, kind: Kind) -> Result<(), Box<dyn std::error::Error>> {
        let mut names: Vec<(&str, Role)> = Vec::new();
        for r in self.rows.iter().filter(|r| r.measured.kind == kind) {
            if !names.iter().any(|(n, _)| *n == r.measured.contender) {
                names.push((&r.measured.contender, r.measured.role));
            }
        }
        let value = |r: &RowOut| match kind {
            Kind::RoundTrip => r.summary.p50_us.map(|s| s.median),
            Kind::OneWay => r.summary.bytes_per_s.map(|s| s.median),
        };
        let vals: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.measured.kind == kind)
            .filter_map(value)
            .filter(|v| *v > 0.0)
            .collect();
        if vals.is_empty() {
            return Ok(());
        }
        let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().cloned().fold(0.0, f64::max);
        let (lo, hi) = (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        );

        let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, ylabel) = match kind {
            Kind::RoundTrip => (
                "Round-trip latency, p50 (median of repeats; lower is better)",
                "µs per round trip (log)",
            ),
            Kind::OneWay => (
                "One-way streaming throughput (median of repeats; higher is better)",
                "bytes/s (log)",
            ),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d((48f64..1.4e6f64).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("message size (log)")
            .y_desc(ylabel)
            .x_labels(8)
            .x_label_formatter(&|x| {
                let n = x.round() as usize;
                if SIZES.contains(&n) {
                    fmt_size(n)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| match kind {
                Kind::RoundTrip => us(*y),
                Kind::OneWay => format!("{}B", si(*y)),
            })
            .draw()?;

        for (i, (name, role)) in names.iter().enumerate() {
            let color = Palette99::pick(i * 7).to_rgba();
            let pts: Vec<(f64, f64)> = self
                .rows
                .iter()
                .filter(|r| r.measured.kind == kind && r.measured.contender == *name)
                .filter_map(|r| value(r).map(|v| (r.measured.size as f64, v)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            if pts.is_empty() {
                continue;
            }
            let width = match role {
                Role::Ours => 3,
                _ => 1,
            };
            let style = ShapeStyle::from(&color).stroke_width(width);
            let series = chart.draw_series(LineSeries::new(pts.clone(), style))?;
            let label = format!(
                "{name}{}",
                match role {
                    Role::Baseline => " [baseline]",
                    Role::Ours => " [ours]",
                    Role::Peer => " [peer]",
                }
            );
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
            });
            match role {
                Role::Peer => {
                    chart.draw_series(
                        pts.iter()
                            .map(|&p| TriangleMarker::new(p, 5, color.filled())),
                    )?;
                }
                Role::Baseline => {
                    chart.draw_series(pts.iter().map(|&p| Cross::new(p, 4, color)))?;
                }
                Role::Ours => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// Microseconds with sensible precision.
pub fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A rate with an SI suffix.
pub fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A message size (64B, 4KiB, 1MiB).
pub fn fmt_size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}
