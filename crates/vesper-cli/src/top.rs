//! `vesper top`: a live view of every VM — session state, record and byte rates, drops in
//! the guest and on the host, rate limiting and the last verdict — from vesperd's status,
//! sampled every interval. Rates are the counters' change between two samples.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::render::{clean, clock, s};

/// Counters of one sample, per VM and per (VM, probe).
#[derive(Debug, Default, Clone)]
pub struct Sample {
    vm: HashMap<String, [u64; 4]>,
    probe: HashMap<(String, String), u64>,
}

const GUEST_DROPS: [&str; 3] = ["kernel_drops", "agent_drops", "transport_lost"];
const HOST_DROPS: [&str; 2] = ["replayed", "malformed"];

fn sum(probes: &[Value], keys: &[&str]) -> u64 {
    probes
        .iter()
        .flat_map(|p| keys.iter().filter_map(move |k| p[*k].as_u64()))
        .sum()
}

impl Sample {
    pub fn of(vms: &[Value]) -> Self {
        let mut out = Sample::default();
        for vm in vms {
            let name = s(&vm["name"]);
            let probes = vm["probes"].as_array().cloned().unwrap_or_default();
            let host =
                sum(&probes, &HOST_DROPS) + vm["unknown_probe_records"].as_u64().unwrap_or(0);
            out.vm.insert(
                name.clone(),
                [
                    sum(&probes, &["received"]),
                    vm["bytes_received"].as_u64().unwrap_or(0),
                    sum(&probes, &GUEST_DROPS),
                    host,
                ],
            );
            for p in &probes {
                out.probe.insert(
                    (name.clone(), s(&p["name"])),
                    p["received"].as_u64().unwrap_or(0),
                );
            }
        }
        out
    }
}

fn rate(now: u64, before: Option<u64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!("{:.0}", now.saturating_sub(b) as f64 / secs),
        _ => "-".into(),
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// One frame: `vms` now, rates against `prev` taken `secs` earlier.
pub fn frame(
    out: &mut impl Write,
    vms: &[Value],
    prev: Option<&Sample>,
    secs: f64,
    now_ms: u64,
) -> std::io::Result<()> {
    let cur = Sample::of(vms);
    writeln!(
        out,
        "vesper top — {} VM{} — {} UTC — rates over {secs:.1} s",
        vms.len(),
        if vms.len() == 1 { "" } else { "s" },
        &clock(now_ms)[..8]
    )?;
    writeln!(
        out,
        "{:<14} {:<14} {:>9} {:>9} {:>11} {:>10} {:>8}  LAST VERDICT",
        "VM", "STATE", "REC/S", "KiB/S", "GUEST DROP", "HOST DROP", "LIMITED"
    )?;
    for vm in vms {
        let name = s(&vm["name"]);
        let c = cur.vm.get(&name).copied().unwrap_or_default();
        let p = prev.and_then(|p| p.vm.get(&name).copied());
        let state = match vm["guest"].as_str() {
            Some("running") | None => s(&vm["state"]),
            Some(g) => format!("{}/{g}", s(&vm["state"])),
        };
        let kib = match p {
            Some(p) if secs > 0.0 => {
                format!("{:.1}", c[1].saturating_sub(p[1]) as f64 / 1024.0 / secs)
            }
            _ => "-".into(),
        };
        let limited = match vm["rate_limited_ms"].as_u64() {
            Some(ms) if ms > 0 => format!("{:.1}s", ms as f64 / 1000.0),
            _ => "-".into(),
        };
        let verdict = match vm["last_verdict"].as_object() {
            Some(v) => format!(
                "{} {}",
                &clock(v["time_ms"].as_u64().unwrap_or(0))[..8],
                s(&v["cause"])
            ),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<14} {:<14} {:>9} {:>9} {:>11} {:>10} {:>8}  {}",
            cut(&name, 14),
            cut(&state, 14),
            rate(c[0], p.map(|p| p[0]), secs),
            kib,
            c[2],
            c[3],
            limited,
            cut(&verdict, 60)
        )?;
        for probe in vm["probes"].as_array().into_iter().flatten() {
            let pname = s(&probe["name"]);
            let received = probe["received"].as_u64().unwrap_or(0);
            let before = prev.and_then(|p| p.probe.get(&(name.clone(), pname.clone())).copied());
            writeln!(
                out,
                "  {:<12} {:<14} {:>9} {:>9} {:>11} {:>10}",
                cut(&pname, 12),
                s(&probe["phase"]),
                rate(received, before, secs),
                "",
                sum(std::slice::from_ref(probe), &GUEST_DROPS),
                sum(std::slice::from_ref(probe), &HOST_DROPS),
            )?;
        }
        if let Some(e) = vm["last_error"]
            .as_str()
            .filter(|_| vm["state"] == "disconnected")
        {
            writeln!(out, "  {}", cut(&clean(e), 100))?;
        }
    }
    Ok(())
}

/// Redraws every `interval` until interrupted; `frames` bounds the frames drawn (after the
/// first sample, which only sets the baseline for rates).
pub fn run(
    out: &mut impl Write,
    mut status: impl FnMut() -> anyhow::Result<Vec<Value>>,
    interval: Duration,
    frames: Option<u64>,
    terminal: bool,
) -> anyhow::Result<()> {
    let mut prev = (Sample::of(&status()?), Instant::now());
    let mut drawn = 0;
    while frames.is_none_or(|f| drawn < f) {
        std::thread::sleep(interval);
        let vms = status()?;
        let secs = prev.1.elapsed().as_secs_f64();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if terminal {
            // Home and clear: redraw in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        frame(out, &vms, Some(&prev.0), secs, now_ms)?;
        if !terminal {
            writeln!(out)?;
        }
        out.flush()?;
        prev = (Sample::of(&vms), Instant::now());
        drawn += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn vm(received: u64, bytes: u64, kdrops: u64) -> Value {
        json!({
            "name": "web1", "state": "ready", "guest": "running",
            "bytes_received": bytes, "unknown_probe_records": 2, "rate_limited_ms": 1500,
            "last_verdict": {"time_ms": 3_723_000u64, "cause": "httpd killed\x1b[31m"},
            "probes": [{"name": "signal", "phase": "loaded", "received": received,
                        "kernel_drops": kdrops, "agent_drops": 0, "transport_lost": 1,
                        "replayed": 0, "malformed": 3}]
        })
    }

    #[test]
    fn rates_are_the_change_over_the_interval_and_guest_text_is_cleaned() {
        let before = Sample::of(&[vm(1000, 10_240, 0)]);
        let mut out = Vec::new();
        frame(
            &mut out,
            &[vm(3000, 30_720, 5)],
            Some(&before),
            2.0,
            3_723_000,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(2).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols[..7],
            ["web1", "ready", "1000", "10.0", "6", "5", "1.5s"],
            "{text}"
        );
        assert!(row.ends_with("01:02:03 httpd killed?[31m"), "{row}");
        let probe: Vec<&str> = text.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(probe, ["signal", "loaded", "1000", "6", "3"], "{text}");
    }

    #[test]
    fn the_first_sample_has_no_rates() {
        let mut out = Vec::new();
        frame(&mut out, &[vm(1000, 0, 0)], None, 0.0, 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let cols: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(cols[2..4], ["-", "-"], "{text}");
    }
}
