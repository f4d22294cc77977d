//! Plots of the results as standalone SVG (no plotting library: two chart shapes).

use std::fmt::Write as _;

use serde_json::Value;

const W: f64 = 760.0;
const LEFT: f64 = 250.0;
const RIGHT: f64 = 30.0;
const ROW: f64 = 34.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = 44.0;
const COLORS: [&str; 4] = ["#c0504d", "#1f77b4", "#d98c3a", "#2ca02c"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn frame(title: &str, rows: usize) -> (String, f64) {
    let h = TOP + ROW * rows as f64 + BOTTOM;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        W / 2.0,
        esc(title)
    );
    (s, h)
}

/// One row of dots per series on a log axis (each dot a trial, a bar at the mean).
pub fn strip_log(title: &str, unit: &str, series: &[(String, Vec<f64>)]) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = 10f64.powf(
        all.iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor(),
    );
    let hi = 10f64.powf(all.iter().copied().fold(0.0, f64::max).log10().ceil());
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (1.0, 10.0)
    };
    let x = |v: f64| {
        LEFT + (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * (W - LEFT - RIGHT)
    };
    let (mut s, h) = frame(title, series.len());
    let axis_y = h - BOTTOM + 6.0;
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        let _ = write!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{TOP}\" x2=\"{0:.1}\" y2=\"{axis_y}\" stroke=\"#ddd\"/>\n<text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">{2}</text>\n",
            x(decade),
            axis_y + 16.0,
            if decade >= 1.0 {
                format!("{decade:.0}")
            } else {
                format!("{decade}")
            }
        );
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} (log scale)</text>",
        (LEFT + W - RIGHT) / 2.0,
        h - 6.0,
        esc(unit)
    );
    for (i, (label, vals)) in series.iter().enumerate() {
        let y = TOP + ROW * (i as f64 + 0.5);
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            y + 4.0,
            esc(label)
        );
        for v in vals {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{c}\" fill-opacity=\"0.6\"/>",
                x(*v)
            );
        }
        if !vals.is_empty() {
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                x(mean),
                y - 11.0,
                y + 11.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Horizontal bars on a linear axis, each labelled with its value.
pub fn bars(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
    let width = |v: f64| v.max(0.0) / max * (W - LEFT - RIGHT - 80.0);
    let (mut s, h) = frame(title, rows.len());
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            LEFT - 8.0,
            y + ROW / 2.0 + 4.0,
            esc(label),
            y + 6.0,
            width(*v),
            ROW - 12.0,
            COLORS[i % COLORS.len()],
            LEFT + width(*v) + 6.0,
            y + ROW / 2.0 + 4.0,
            fmt_value(*v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (LEFT + W - RIGHT) / 2.0,
        h - 12.0,
        esc(unit)
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn latencies(v: &Value) -> Vec<f64> {
    v["trials"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["latency_ms"].as_f64()).collect())
        .unwrap_or_default()
}

/// (file name, SVG) for every plot the results allow.
pub fn plots(r: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for env in ["native", "lab"] {
        let l = &r["latency"][env];
        if l.is_null() {
            continue;
        }
        let series: Vec<(String, Vec<f64>)> = [
            ("sigterm_poller_10s", "I SIGTERM: 10 s HTTP monitor"),
            ("sigterm_vesper", "I SIGTERM: Vesper"),
            ("oom_poller_10s", "II OOM: 10 s HTTP monitor"),
            ("oom_vesper", "II OOM: Vesper"),
        ]
        .iter()
        .map(|(k, label)| (label.to_string(), latencies(&l[*k])))
        .collect();
        let title = format!(
            "Fault → Pacemaker records the failure ({}), one dot per trial, bar = mean",
            if env == "lab" { "QEMU guest" } else { "native" }
        );
        out.push((
            format!("latency-{env}.svg"),
            strip_log(&title, "milliseconds", &series),
        ));
    }
    let t = &r["throughput"];
    if !t.is_null() {
        let rows: Vec<(String, f64)> = [
            ("vesper_native", "Vesper, native"),
            ("bpftrace_native", "bpftrace -f json, native"),
            ("vesper_lab", "Vesper, QEMU guest (TCG)"),
        ]
        .iter()
        .filter_map(|(k, label)| Some((label.to_string(), t[*k]["records_per_s"].as_f64()?)))
        .collect();
        out.push((
            "throughput.svg".into(),
            bars(
                "Records per second delivered (getppid flood)",
                "records/s",
                &rows,
            ),
        ));
    }
    if let Some(rows) = r["overhead"]["rows"].as_array() {
        let mut bars_rows = Vec::new();
        for row in rows {
            let f = row["filter"].as_str().unwrap_or("");
            for (k, who) in [("vesper_ns", "Vesper"), ("bpftrace_ns", "bpftrace")] {
                if let Some(v) = row[k].as_f64() {
                    bars_rows.push((format!("{who}, {f}"), v));
                }
            }
        }
        out.push((
            "overhead.svg".into(),
            bars(
                "Nanoseconds added per getppid(2) event",
                "ns per event",
                &bars_rows,
            ),
        ));
    }
    out
}
