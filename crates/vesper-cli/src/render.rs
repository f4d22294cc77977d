//! Human-readable output. Every string from a guest is shown with control characters
//! escaped: a guest must not be able to drive the operator's terminal.

use std::io::Write;

use serde_json::Value;
use vesper_api::{ClusterReport, GuestState, ProbeStatus, State, VmStatus, WhyEntry};
use vesper_probe::map_values::MapDump;

/// Guest text, safe for a terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(t) => clean(t),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// HH:MM:SS.mmm (UTC) of a unix time in milliseconds.
pub(crate) fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

pub fn record(v: &Value) -> String {
    if let Some(n) = v.get("lagged") {
        return format!("(this view fell behind: {n} records not shown; they are in the store)");
    }
    let head = format!(
        "{} {} {} #{}",
        clock(v["host_ms"].as_u64().unwrap_or(0)),
        s(&v["vm"]),
        s(&v["probe"]),
        v["seq"]
    );
    // An interval probe's print(@map): the map as bpftrace prints it, under the header.
    if v.get("entries").is_some() && v.get("map").is_some() && v.get("kind").is_some() {
        let dump: Result<vesper_probe::map_values::MapDump, _> =
            serde_json::from_value(json_map(v));
        if let Ok(d) = dump {
            return format!("{head}\n{}", d.to_text().trim_end());
        }
    }
    match v["probe"].as_str() {
        Some("signal") => format!(
            "{head} {} ({}) from {} (pid {}, uid {}) to {} (pid {}): {}",
            s(&v["sig_name"]),
            v["sig"],
            s(&v["sender_comm"]),
            v["sender_pid"],
            v["sender_uid"],
            s(&v["target_comm"]),
            v["target_pid"],
            signal_result(&v["result"])
        ),
        _ => {
            let mut line = head;
            for (k, val) in v.as_object().into_iter().flatten() {
                if !["vm", "probe", "seq", "host_ms", "ts_ns"].contains(&k.as_str()) {
                    line.push_str(&format!(" {k}={}", s(val)));
                }
            }
            line
        }
    }
}

/// A map record's fields as a [`vesper_probe::map_values::MapDump`] reads them.
fn json_map(v: &Value) -> Value {
    serde_json::json!({
        "name": v["map"],
        "kind": v["kind"],
        "total": v["total"],
        "entries": v["entries"],
    })
}

/// The kernel's `enum trace_signal_result` (include/trace/events/signal.h).
fn signal_result(v: &Value) -> String {
    match v.as_i64() {
        Some(0) => "delivered".into(),
        Some(1) => "ignored".into(),
        Some(2) => "already pending".into(),
        Some(3) => "queue overflow".into(),
        Some(4) => "delivered without info".into(),
        _ => format!("result {v}"),
    }
}

/// One why-log entry as a timeline: evidence, verdict, actions, cluster reaction.
pub fn why(out: &mut impl Write, e: &WhyEntry) -> std::io::Result<()> {
    let v = &e.verdict;
    let resource = v
        .resource
        .as_deref()
        .map(|r| format!(" (resource {})", clean(r)))
        .unwrap_or_default();
    writeln!(out, "{} {}{resource}", clock(v.time_ms), clean(&v.vm))?;
    for ev in &v.evidence {
        writeln!(out, "  evidence  {}", record(ev))?;
    }
    writeln!(
        out,
        "  verdict   {}  [rule {}]",
        clean(&v.cause),
        clean(&v.rule)
    )?;
    if e.pending {
        writeln!(out, "  action    running…")?;
    }
    if e.debounced {
        writeln!(
            out,
            "  action    none: the resource was already failed for this fault (debounced)"
        )?;
    }
    if e.actions.is_empty() && !e.pending && !e.debounced {
        writeln!(
            out,
            "  action    none configured (no pacemaker, no hooks for this VM)"
        )?;
    }
    for a in &e.actions {
        let status = if a.ok { "ok" } else { "FAILED" };
        writeln!(
            out,
            "  action    {} {status} after {} ms ({} attempt(s)): {}",
            clean(&a.kind),
            a.ms,
            a.attempts,
            clean(&a.detail)
        )?;
    }
    if let Some(c) = &e.cluster {
        writeln!(out, "  cluster   {}", clean(c))?;
    }
    Ok(())
}

/// What Pacemaker holds about the VM's resource, from every node: on the node a VM
/// moved to, this is why it is there.
pub fn cluster(out: &mut impl Write, vm: &str, c: &ClusterReport) -> std::io::Result<()> {
    let c = match c {
        ClusterReport::Unreadable { resource, error } => {
            return writeln!(
                out,
                "Pacemaker: could not ask about {}: {}",
                clean(resource),
                clean(error)
            );
        }
        ClusterReport::View(v) => v,
    };
    let rsc = clean(&c.resource);
    let place = if c.running_on.is_empty() {
        "runs nowhere".to_string()
    } else {
        let on: Vec<String> = c.running_on.iter().map(|n| clean(n)).collect();
        format!("runs on {}", on.join(", "))
    };
    writeln!(out, "Pacemaker now: {rsc} {place}")?;
    for cause in &c.causes {
        let node = clean(&cause.node);
        writeln!(out, "  cause     on {node}: {}", clean(&cause.cause))?;
        writeln!(
            out,
            "            full timeline on {node}: `vesper why {vm}` there (why.jsonl in its state_dir)"
        )?;
    }
    for f in &c.failures {
        writeln!(
            out,
            "  failed    {} on {} at {}: {}{}",
            clean(&f.op),
            clean(&f.node),
            clean(&f.when),
            clean(&f.status),
            if f.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", clean(&f.reason))
            }
        )?;
    }
    for f in &c.fencing {
        writeln!(
            out,
            "  fenced    {} ({}) by {} at {}: {}",
            clean(&f.target),
            clean(&f.action),
            clean(&f.by),
            clean(&f.completed),
            clean(&f.status)
        )?;
    }
    for n in &c.fail_counts {
        writeln!(
            out,
            "  fail-count {} on {} (migration-threshold {})",
            clean(&n.count),
            clean(&n.node),
            clean(&n.migration_threshold)
        )?;
    }
    Ok(())
}

/// A state's wire name ("ready", "panicked").
pub(crate) fn name_of(s: &impl serde::Serialize) -> String {
    match serde_json::to_value(s) {
        Ok(Value::String(n)) => n,
        _ => "?".into(),
    }
}

/// Records lost on the way, of every kind.
pub(crate) fn lost(p: &ProbeStatus) -> u64 {
    p.kernel_drops + p.agent_drops + p.transport_lost
}

pub fn status(out: &mut impl Write, vms: &[VmStatus]) -> std::io::Result<()> {
    if vms.is_empty() {
        return writeln!(out, "no VMs configured");
    }
    writeln!(
        out,
        "{:<12} {:<22} {:<24} {:>8} {:>10} {:>8}  probes",
        "VM", "STATE", "KERNEL", "HEARD", "RECORDS", "LOST"
    )?;
    for vm in vms {
        let received: u64 = vm.probes.iter().map(|p| p.received).sum();
        let lost: u64 = vm.probes.iter().map(lost).sum();
        let state = match vm.guest {
            GuestState::Running => name_of(&vm.state),
            g => format!("{}/{}", name_of(&vm.state), name_of(&g)),
        };
        let heard = vm
            .last_heard_ms
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let names: Vec<String> = vm
            .probes
            .iter()
            .map(|p| format!("{}({})", clean(&p.name), name_of(&p.phase)))
            .collect();
        let kernel = vm
            .agent
            .as_ref()
            .map_or("-".into(), |a| clean(&a.kernel_release));
        writeln!(
            out,
            "{:<12} {:<22} {:<24} {:>8} {:>10} {:>8}  {}",
            clean(&vm.name),
            state,
            kernel,
            heard,
            received,
            lost,
            if names.is_empty() {
                "-".into()
            } else {
                names.join(" ")
            }
        )?;
        status_notes(out, vm)?;
    }
    Ok(())
}

/// The lines under a VM's row: what is wrong or worth knowing.
fn status_notes(out: &mut impl Write, vm: &VmStatus) -> std::io::Result<()> {
    if vm.state == State::Disconnected
        && let Some(e) = &vm.last_error
    {
        writeln!(out, "{:<12} last error: {}", "", clean(e))?;
    }
    if vm.state == State::Elsewhere {
        writeln!(
            out,
            "{:<12} not on this node: no VM serves {} here (it runs on another host, or nowhere)",
            "",
            clean(&vm.channel)
        )?;
    }
    if let Some(v) = &vm.last_verdict {
        writeln!(
            out,
            "{:<12} last verdict {}: {} (vesper why {})",
            "",
            clock(v.time_ms),
            clean(&v.cause),
            clean(&vm.name)
        )?;
    }
    if vm.rate_limited_ms > 0 {
        writeln!(
            out,
            "{:<12} rate limited: reading paused {:.1}s in all (limit {} records/s, {} bytes/s)",
            "",
            vm.rate_limited_ms as f64 / 1000.0,
            vm.rate_limits.records_per_sec,
            vm.rate_limits.bytes_per_sec
        )?;
    }
    if vm.store_file_dropped > 0 {
        writeln!(
            out,
            "{:<12} record file: {} records not written (the disk fell behind; they are in memory)",
            "", vm.store_file_dropped
        )?;
    }
    let k = &vm.kernel_types;
    match k.state.as_str() {
        "known" => {
            let how = k.fetched_ms.map_or("from the cache".to_string(), |ms| {
                format!("fetched in {:.2}s", ms as f64 / 1000.0)
            });
            let shown = |n: Option<usize>| n.map_or("-".into(), |n| n.to_string());
            writeln!(
                out,
                "{:<12} kernel types: {} types ({:.1} MiB BTF), {} symbols, {how}",
                "",
                shown(k.types),
                k.btf_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
                shown(k.symbols),
            )?;
        }
        "failed" => writeln!(
            out,
            "{:<12} kernel types unavailable: {}",
            "",
            clean(k.error.as_deref().unwrap_or("-"))
        )?,
        "receiving" => writeln!(
            out,
            "{:<12} kernel types: receiving ({} KiB so far)",
            "",
            k.received_bytes / 1024
        )?,
        _ => {}
    }
    if vm.unobserved_ms > 0 {
        writeln!(
            out,
            "{:<12} unobserved: {:.1}s in {} gaps with no probe attached (vesper events {} --probe vesper)",
            "",
            vm.unobserved_ms as f64 / 1000.0,
            vm.gaps,
            clean(&vm.name)
        )?;
    }
    Ok(())
}

pub fn probes(out: &mut impl Write, vm: &VmStatus) -> std::io::Result<()> {
    if vm.probes.is_empty() {
        let desired: Vec<String> = vm.desired_probes.iter().map(|d| clean(d)).collect();
        return writeln!(
            out,
            "no probes loaded in {} (state {}; will load on connect: {})",
            clean(&vm.name),
            name_of(&vm.state),
            if desired.is_empty() {
                "none".into()
            } else {
                desired.join(", ")
            }
        );
    }
    writeln!(
        out,
        "{:<12} {:>4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "PROBE", "ID", "PHASE", "RECEIVED", "KDROPS", "ADROPS", "LOST", "LOAD_US"
    )?;
    for p in &vm.probes {
        writeln!(
            out,
            "{:<12} {:>4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>8}",
            clean(&p.name),
            p.probe_id,
            name_of(&p.phase),
            p.received,
            p.kernel_drops,
            p.agent_drops,
            p.transport_lost,
            p.load_us.map_or("-".into(), |us| us.to_string())
        )?;
    }
    Ok(())
}

/// A probe's maps as bpftrace prints them, one after another.
pub fn maps(dumps: &[MapDump]) -> String {
    let mut out = String::new();
    for d in dumps {
        out.push_str(&d.to_text());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signal_record_reads_like_a_sentence() {
        let v = json!({"vm":"web1","probe":"signal","seq":3,"ts_ns":1,"sig":15,"sig_name":"SIGTERM",
            "sender_pid":812,"sender_uid":0,"sender_comm":"pkill","target_pid":212,"target_comm":"httpd","result":0,"host_ms":3_723_004});
        assert_eq!(
            record(&v),
            "01:02:03.004 web1 signal #3 SIGTERM (15) from pkill (pid 812, uid 0) to httpd (pid 212): delivered"
        );
    }

    #[test]
    fn guest_strings_cannot_carry_escape_sequences() {
        assert_eq!(clean("ht\x1b[2Jtpd\n"), "ht?[2Jtpd?");
    }
}
