//! `vesper top`: a live view of every VM — session state, record and byte rates, drops in
//! the guest and on the host, rate limiting and the last verdict — from vesperd's status,
//! sampled every interval. Rates are the counters' change between two samples.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use vesper_api::{GuestState, ProbeStatus, State, VmStatus};

use crate::render::{clean, clock, lost, name_of};

/// Counters of one sample, per VM and per (VM, probe).
#[derive(Debug, Default, Clone)]
pub struct Sample {
    vm: HashMap<String, [u64; 4]>,
    probe: HashMap<(String, String), u64>,
}

/// Records dropped on the host: replayed or not matching their schema.
fn host_drops(p: &ProbeStatus) -> u64 {
    p.replayed + p.malformed
}

impl Sample {
    pub fn of(vms: &[VmStatus]) -> Self {
        let mut out = Sample::default();
        for vm in vms {
            let name = clean(&vm.name);
            let host = vm.probes.iter().map(host_drops).sum::<u64>() + vm.unknown_probe_records;
            out.vm.insert(
                name.clone(),
                [
                    vm.probes.iter().map(|p| p.received).sum(),
                    vm.bytes_received,
                    vm.probes.iter().map(lost).sum(),
                    host,
                ],
            );
            for p in &vm.probes {
                out.probe.insert((name.clone(), clean(&p.name)), p.received);
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
    vms: &[VmStatus],
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
        let name = clean(&vm.name);
        let c = cur.vm.get(&name).copied().unwrap_or_default();
        let p = prev.and_then(|p| p.vm.get(&name).copied());
        let state = match vm.guest {
            GuestState::Running => name_of(&vm.state),
            g => format!("{}/{}", name_of(&vm.state), name_of(&g)),
        };
        let kib = match p {
            Some(p) if secs > 0.0 => {
                format!("{:.1}", c[1].saturating_sub(p[1]) as f64 / 1024.0 / secs)
            }
            _ => "-".into(),
        };
        let limited = match vm.rate_limited_ms {
            0 => "-".into(),
            ms => format!("{:.1}s", ms as f64 / 1000.0),
        };
        let verdict = match &vm.last_verdict {
            Some(v) => format!("{} {}", &clock(v.time_ms)[..8], clean(&v.cause)),
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
        for probe in &vm.probes {
            let pname = clean(&probe.name);
            let before = prev.and_then(|p| p.probe.get(&(name.clone(), pname.clone())).copied());
            writeln!(
                out,
                "  {:<12} {:<14} {:>9} {:>9} {:>11} {:>10}",
                cut(&pname, 12),
                name_of(&probe.phase),
                rate(probe.received, before, secs),
                "",
                lost(probe),
                host_drops(probe),
            )?;
        }
        if let Some(e) = vm
            .last_error
            .as_deref()
            .filter(|_| vm.state == State::Disconnected)
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
    mut status: impl FnMut() -> anyhow::Result<Vec<VmStatus>>,
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

    /// A VM's status as vesperd sends it (the wire form: every field is required).
    fn vm(received: u64, bytes: u64, kdrops: u64) -> VmStatus {
        serde_json::from_value(json!({
            "name": "web1", "state": "ready", "guest": "running", "channel": "unix:/x",
            "resource": null, "agent": null, "connected_since_ms": 1, "last_heard_ms": 5,
            "connects": 1, "last_error": null, "desired_probes": ["signal"],
            "stored_records": 0, "stored_bytes": 0, "evicted_records": 0,
            "store_file_error": null, "store_file_dropped": 0,
            "rate_limits": {"records_per_sec": 0, "bytes_per_sec": 0},
            "rate_limited_pauses": 1, "gaps": 0, "unobserved_ms": 0,
            "kernel_types": {"state": "idle", "kernel_id": null, "types": null, "symbols": null,
                "btf_bytes": null, "symbol_bytes": null, "fetched_ms": null,
                "received_bytes": 0, "error": null},
            "bytes_received": bytes, "unknown_probe_records": 2, "rate_limited_ms": 1500,
            "last_verdict": {"time_ms": 3_723_000u64, "rule": "service-killed",
                "cause": "httpd killed\x1b[31m"},
            "probes": [{"name": "signal", "probe_id": 1, "phase": "loaded", "received": received,
                        "next_seq": received, "load_us": 10,
                        "kernel_drops": kdrops, "agent_drops": 0, "transport_lost": 1,
                        "replayed": 0, "malformed": 3}]
        }))
        .unwrap()
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
