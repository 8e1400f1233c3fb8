//! Turning raw samples into the stdout table, the JSON file and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::harness::{Kind, Measured, Role, SIZES};

/// Median, min and max over repeats of one figure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
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
}

/// Summary figures of one row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Round trip: p50 of each repeat, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<Spread>,
    /// Round trip: p99 of all repeats' samples pooled, in µs (min = max = median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<Spread>,
    /// Round trip: p99.9 of all repeats' samples pooled, in µs (min = max = median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<Spread>,
    /// One way: messages per second of each repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_s: Option<Spread>,
    /// One way: bytes per second of each repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_s: Option<Spread>,
    /// The ranking figure of each repeat, in repeat order (p50 µs or msg/s): repeats are
    /// paired across contenders, so ratios are compared repeat by repeat.
    #[serde(default)]
    pub per_repeat: Vec<f64>,
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
        per_repeat: Vec::new(),
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
            s.per_repeat = sorted.iter().map(|v| percentile(v, 0.50)).collect();
            s.p50_us = Spread::of(s.per_repeat.clone());
            // Tails pool every repeat's samples (a repeat alone has too few for p99.9); the
            // "spread" is then a single figure.
            let mut all: Vec<u64> = sorted.concat();
            all.sort_unstable();
            let pooled = |q| {
                (!all.is_empty()).then(|| {
                    let v = percentile(&all, q);
                    Spread {
                        median: v,
                        min: v,
                        max: v,
                    }
                })
            };
            s.p99_us = pooled(0.99);
            s.p999_us = pooled(0.999);
        }
        Kind::OneWay => {
            let rates: Vec<f64> = m
                .one_way_total_ns
                .iter()
                .map(|&ns| m.ops as f64 / (ns.max(1) as f64 / 1e9))
                .collect();
            s.bytes_per_s = Spread::of(rates.iter().map(|r| r * m.size as f64).collect());
            s.per_repeat = rates.clone();
            s.msgs_per_s = Spread::of(rates);
        }
    }
    s
}

/// Whether paired repeats `a[i]` vs `b[i]` rank the two rows: a two-sided sign test over
/// the pairs that differ, p < 0.05.
fn ranked(a: &[f64], b: &[f64]) -> bool {
    let (mut above, mut below) = (0u32, 0u32);
    for (x, y) in a.iter().zip(b) {
        if x > y {
            above += 1;
        } else if x < y {
            below += 1;
        }
    }
    let n = above + below;
    let k = above.min(below);
    // P(X <= k) for X ~ Binomial(n, 1/2), doubled.
    let mut c = 1f64;
    let mut tail = 0f64;
    for i in 0..=k {
        if i > 0 {
            c = c * f64::from(n - i + 1) / f64::from(i);
        }
        tail += c;
    }
    n > 0 && 2.0 * tail / 2f64.powi(n as i32) < 0.05
}

/// The figure rows are ranked by: p50 round trip (lower is better) or msg/s (higher).
fn key(s: &Summary) -> Option<Spread> {
    s.p50_us.or(s.msgs_per_s)
}

/// Machine, settings and every row, raw and summarized.
#[derive(Serialize, Deserialize)]
pub struct Report {
    /// Machine description and settings, as printed at the top.
    pub header: Vec<String>,
    /// Every row.
    pub rows: Vec<RowOut>,
}

/// One row of the JSON output.
#[derive(Serialize, Deserialize)]
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
    /// With a `class`, only peers of that class count (StreamLink unix (ct) against the
    /// stream peers over Unix on a current-thread runtime); without one, or when no peer
    /// has it, every peer does.
    fn best_peer(&self, kind: Kind, size: usize, class: Option<&str>) -> Option<&RowOut> {
        let better = |a: f64, b: f64| match kind {
            Kind::RoundTrip => a < b,
            Kind::OneWay => a > b,
        };
        let peers = |class: Option<&str>| -> Vec<&RowOut> {
            self.rows
                .iter()
                .filter(|r| {
                    r.measured.kind == kind
                        && r.measured.size == size
                        && r.measured.role == Role::Peer
                        && (class.is_none() || r.measured.class.as_deref() == class)
                        && key(&r.summary).is_some()
                })
                .collect()
        };
        let class = class.filter(|_| !peers(class).is_empty());
        let mut best: Option<&RowOut> = None;
        for r in peers(class) {
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

    /// `this ÷ other` of the medians, with '~' when the paired repeats do not rank the two:
    /// repeat i of every contender ran back to back, so drifts of the machine hit both
    /// alike; the ratio is taken repeat by repeat, and the order is only claimed when a
    /// two-sided sign test over those paired ratios gives p < 0.05 (all 5 of 5, 7 of 7,
    /// 8 of 9 repeats on the same side). With 3 repeats nothing can be ranked.
    fn ratio(this: &Summary, other: &Summary) -> String {
        match (key(this), key(other)) {
            (Some(a), Some(b)) => format!(
                "{:.2}×{}",
                a.median / b.median,
                if ranked(&this.per_repeat, &other.per_repeat) {
                    ""
                } else {
                    "~"
                }
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
                            "{:<34} {:>8} {:>24} {:>9} {:>9}  {:<36} vs best peer (of its class)",
                            "contender",
                            "role",
                            "p50 µs [min–max]",
                            "p99 µs*",
                            "p99.9 µs*",
                            "vs baseline (p50)",
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
                            "{:<34} {:>8} {:>24} {:>9} {:>9}  {:<36} vs best peer (of its class)",
                            "contender",
                            "role",
                            "msg/s [min–max]",
                            "bytes/s",
                            "",
                            "vs baseline (msg/s)",
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
                            s.p50_us
                                .map(|p| format!("{} [{}–{}]", us(p.median), us(p.min), us(p.max))),
                            s.p99_us.map(|p| us(p.median)),
                            s.p999_us.map(|p| us(p.median)),
                        ),
                        Kind::OneWay => (
                            s.msgs_per_s
                                .map(|p| format!("{} [{}–{}]", si(p.median), si(p.min), si(p.max))),
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
                    let best = self.best_peer(kind, size, m.class.as_deref());
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
            "best peer of its class: the peers of the same transport and runtime (stream \
             contenders: vox-stream over the same socket kind and runtime); rows without a class \
             take the best of all peers."
        );
        let _ = writeln!(
            t,
            "p50: median over repeats of each repeat's median, [min–max] over repeats. \
             *p99, p99.9: over all repeats' round trips pooled."
        );
        let _ = writeln!(
            t,
            "'~' after a ratio: too noisy to rank the two rows. Repeats are paired (every contender \
             ran once per repeat, back to back); an order is claimed only when the repeat-by-repeat \
             comparison passes a two-sided sign test at p < 0.05 (5 of 5, 7 of 7, 8 of 9 repeats)."
        );
        t
    }

    /// Reads a `results.json` written by an earlier run and summarizes it again (to re-render
    /// the table and the charts without measuring).
    pub fn from_json(path: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let r: Report = serde_json::from_slice(&std::fs::read(path)?)?;
        Ok(Report::new(
            r.header,
            r.rows.into_iter().map(|r| r.measured).collect(),
        ))
    }

    /// Writes `results.json`, `table.txt`, `latency.svg` and `throughput.svg` into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec(self)?)?;
        std::fs::write(dir.join("table.txt"), self.table())?;
        self.chart_files(dir)
    }

    /// Writes `latency.svg` and `throughput.svg` into `dir`.
    pub fn chart_files(&self, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
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
        // Ours first (strongest colors, top of the legend), then peers, then baselines.
        names.sort_by_key(|(_, role)| match role {
            Role::Ours => 0,
            Role::Peer => 1,
            Role::Baseline => 2,
        });
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

        let root = SVGBackend::new(path, (1280, 720)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(900);
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
        // Sizes are evenly spaced categories (they are powers of 16 apart anyway).
        let idx = |size: usize| SIZES.iter().position(|&s| s == size).unwrap_or(0) as f64;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.25f64..(SIZES.len() as f64 - 0.75), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("message size")
            .y_desc(ylabel)
            .x_labels(SIZES.len())
            .disable_x_mesh()
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < SIZES.len() {
                    fmt_size(SIZES[i as usize])
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| match kind {
                Kind::RoundTrip => us(*y),
                Kind::OneWay => format!("{}B", si(*y)),
            })
            .draw()?;

        legend_area.fill(&WHITE)?;
        let mut ly = 40i32;
        for (i, (name, role)) in names.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = self
                .rows
                .iter()
                .filter(|r| r.measured.kind == kind && r.measured.contender == *name)
                .filter_map(|r| value(r).map(|v| (idx(r.measured.size), v)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            if pts.is_empty() {
                continue;
            }
            let width = match role {
                Role::Ours => 3,
                Role::Peer => 2,
                Role::Baseline => 1,
            };
            chart.draw_series(LineSeries::new(
                pts.clone(),
                ShapeStyle::from(&color).stroke_width(width),
            ))?;
            let tag = match role {
                Role::Baseline => "baseline",
                Role::Ours => "ours",
                Role::Peer => "peer",
            };
            match role {
                Role::Peer => {
                    chart.draw_series(
                        pts.iter()
                            .map(|&p| TriangleMarker::new(p, 5, color.filled())),
                    )?;
                    legend_area.draw(&TriangleMarker::new((20, ly), 5, color.filled()))?;
                }
                Role::Baseline => {
                    chart.draw_series(pts.iter().map(|&p| Cross::new(p, 4, color)))?;
                    legend_area.draw(&Cross::new((20, ly), 4, color))?;
                }
                Role::Ours => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
                    legend_area.draw(&Circle::new((20, ly), 4, color.filled()))?;
                }
            }
            legend_area.draw(&PathElement::new(
                vec![(8, ly), (32, ly)],
                ShapeStyle::from(&color).stroke_width(width),
            ))?;
            legend_area.draw(&Text::new(
                format!("{name}  [{tag}]"),
                (40, ly - 7),
                ("sans-serif", 13),
            ))?;
            ly += 22;
        }
        root.present()?;
        Ok(())
    }
}

/// Tableau 20: distinguishable colors for up to 20 lines (then they repeat, with the
/// marker still telling the role apart).
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

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
