//! Human-readable output. Every string from a guest is shown with control characters
//! escaped: a guest must not be able to drive the operator's terminal.

use std::io::Write;

use serde_json::Value;

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
pub fn why(out: &mut impl Write, e: &Value) -> std::io::Result<()> {
    let v = &e["verdict"];
    let t0 = v["time_ms"].as_u64().unwrap_or(0);
    let resource = v["resource"]
        .as_str()
        .map(|r| format!(" (resource {})", clean(r)))
        .unwrap_or_default();
    writeln!(out, "{} {}{resource}", clock(t0), s(&v["vm"]))?;
    for ev in v["evidence"].as_array().into_iter().flatten() {
        writeln!(out, "  evidence  {}", record(ev))?;
    }
    writeln!(
        out,
        "  verdict   {}  [rule {}]",
        s(&v["cause"]),
        s(&v["rule"])
    )?;
    if e["pending"] == Value::Bool(true) {
        writeln!(out, "  action    running…")?;
    }
    if e["debounced"] == Value::Bool(true) {
        writeln!(
            out,
            "  action    none: the resource was already failed for this fault (debounced)"
        )?;
    }
    let actions = e["actions"].as_array().cloned().unwrap_or_default();
    if actions.is_empty()
        && e["pending"] != Value::Bool(true)
        && e["debounced"] != Value::Bool(true)
    {
        writeln!(
            out,
            "  action    none configured (no pacemaker, no hooks for this VM)"
        )?;
    }
    for a in &actions {
        let status = if a["ok"] == Value::Bool(true) {
            "ok"
        } else {
            "FAILED"
        };
        writeln!(
            out,
            "  action    {} {status} after {} ms ({} attempt(s)): {}",
            s(&a["kind"]),
            a["ms"],
            a["attempts"],
            s(&a["detail"])
        )?;
    }
    if let Some(c) = e["cluster"].as_str() {
        writeln!(out, "  cluster   {}", clean(c))?;
    }
    Ok(())
}

/// What Pacemaker holds about the VM's resource, from every node: on the node a VM
/// moved to, this is why it is there.
pub fn cluster(out: &mut impl Write, vm: &str, c: &Value) -> std::io::Result<()> {
    let rsc = s(&c["resource"]);
    if let Some(e) = c["error"].as_str() {
        return writeln!(out, "Pacemaker: could not ask about {rsc}: {}", clean(e));
    }
    let on: Vec<String> = c["running_on"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    let place = if on.is_empty() {
        "runs nowhere".to_string()
    } else {
        format!("runs on {}", on.join(", "))
    };
    writeln!(out, "Pacemaker now: {rsc} {place}")?;
    for cause in c["causes"].as_array().into_iter().flatten() {
        let node = s(&cause["node"]);
        writeln!(out, "  cause     on {node}: {}", s(&cause["cause"]))?;
        writeln!(
            out,
            "            full timeline on {node}: `vesper why {vm}` there (why.jsonl in its state_dir)"
        )?;
    }
    for f in c["failures"].as_array().into_iter().flatten() {
        let reason = s(&f["reason"]);
        writeln!(
            out,
            "  failed    {} on {} at {}: {}{}",
            s(&f["op"]),
            s(&f["node"]),
            s(&f["when"]),
            s(&f["status"]),
            if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            }
        )?;
    }
    for f in c["fencing"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  fenced    {} ({}) by {} at {}: {}",
            s(&f["target"]),
            s(&f["action"]),
            s(&f["by"]),
            s(&f["completed"]),
            s(&f["status"])
        )?;
    }
    for n in c["fail_counts"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  fail-count {} on {} (migration-threshold {})",
            s(&n["count"]),
            s(&n["node"]),
            s(&n["migration_threshold"])
        )?;
    }
    Ok(())
}

pub fn status(out: &mut impl Write, vms: &[Value]) -> std::io::Result<()> {
    if vms.is_empty() {
        return writeln!(out, "no VMs configured");
    }
    writeln!(
        out,
        "{:<12} {:<22} {:<24} {:>8} {:>10} {:>8}  probes",
        "VM", "STATE", "KERNEL", "HEARD", "RECORDS", "LOST"
    )?;
    for vm in vms {
        let probes = vm["probes"].as_array().cloned().unwrap_or_default();
        let received: u64 = probes.iter().filter_map(|p| p["received"].as_u64()).sum();
        let lost: u64 = probes
            .iter()
            .map(|p| {
                ["kernel_drops", "agent_drops", "transport_lost"]
                    .iter()
                    .filter_map(|k| p[*k].as_u64())
                    .sum::<u64>()
            })
            .sum();
        let state = match vm["guest"].as_str() {
            Some("running") | None => s(&vm["state"]),
            Some(g) => format!("{}/{g}", s(&vm["state"])),
        };
        let heard = vm["last_heard_ms"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let names: Vec<String> = probes
            .iter()
            .map(|p| format!("{}({})", s(&p["name"]), s(&p["phase"])))
            .collect();
        writeln!(
            out,
            "{:<12} {:<22} {:<24} {:>8} {:>10} {:>8}  {}",
            s(&vm["name"]),
            state,
            s(&vm["agent"]["kernel_release"]),
            heard,
            received,
            lost,
            if names.is_empty() {
                "-".into()
            } else {
                names.join(" ")
            }
        )?;
        if vm["state"] == "disconnected"
            && let Some(e) = vm["last_error"].as_str()
        {
            writeln!(out, "{:<12} last error: {}", "", clean(e))?;
        }
        if vm["state"] == "elsewhere" {
            writeln!(
                out,
                "{:<12} not on this node: no VM serves {} here (it runs on another host, or nowhere)",
                "",
                clean(&s(&vm["channel"]))
            )?;
        }
        if let Some(v) = vm["last_verdict"].as_object() {
            writeln!(
                out,
                "{:<12} last verdict {}: {} (vesper why {})",
                "",
                clock(v["time_ms"].as_u64().unwrap_or(0)),
                s(&v["cause"]),
                s(&vm["name"])
            )?;
        }
        if let Some(ms) = vm["rate_limited_ms"].as_u64().filter(|&ms| ms > 0) {
            writeln!(
                out,
                "{:<12} rate limited: reading paused {:.1}s in all (limit {} records/s, {} bytes/s)",
                "",
                ms as f64 / 1000.0,
                s(&vm["rate_limits"]["records_per_sec"]),
                s(&vm["rate_limits"]["bytes_per_sec"])
            )?;
        }
        let k = &vm["kernel_types"];
        match k["state"].as_str() {
            Some("known") => {
                let how = k["fetched_ms"]
                    .as_u64()
                    .map_or("from the cache".to_string(), |ms| {
                        format!("fetched in {:.2}s", ms as f64 / 1000.0)
                    });
                writeln!(
                    out,
                    "{:<12} kernel types: {} types ({:.1} MiB BTF), {} symbols, {how}",
                    "",
                    s(&k["types"]),
                    k["btf_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
                    s(&k["symbols"]),
                )?;
            }
            Some("failed") => writeln!(
                out,
                "{:<12} kernel types unavailable: {}",
                "",
                clean(&s(&k["error"]))
            )?,
            Some("receiving") => writeln!(
                out,
                "{:<12} kernel types: receiving ({} KiB so far)",
                "",
                k["received_bytes"].as_u64().unwrap_or(0) / 1024
            )?,
            _ => {}
        }
        if let Some(ms) = vm["unobserved_ms"].as_u64().filter(|&ms| ms > 0) {
            writeln!(
                out,
                "{:<12} unobserved: {:.1}s in {} gaps with no probe attached (vesper events {} --probe vesper)",
                "",
                ms as f64 / 1000.0,
                s(&vm["gaps"]),
                s(&vm["name"])
            )?;
        }
    }
    Ok(())
}

pub fn probes(out: &mut impl Write, vm: &Value) -> std::io::Result<()> {
    let probes = vm["probes"].as_array().cloned().unwrap_or_default();
    if probes.is_empty() {
        let desired: Vec<String> = vm["desired_probes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        return writeln!(
            out,
            "no probes loaded in {} (state {}; will load on connect: {})",
            s(&vm["name"]),
            s(&vm["state"]),
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
    for p in probes {
        writeln!(
            out,
            "{:<12} {:>4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>8}",
            s(&p["name"]),
            s(&p["probe_id"]),
            s(&p["phase"]),
            s(&p["received"]),
            s(&p["kernel_drops"]),
            s(&p["agent_drops"]),
            s(&p["transport_lost"]),
            s(&p["load_us"])
        )?;
    }
    Ok(())
}

/// A probe's maps as bpftrace prints them, one after another.
pub fn maps(v: &Value) -> anyhow::Result<String> {
    let dumps: Vec<vesper_probe::map_values::MapDump> = match v {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone())
            .map_err(|e| anyhow::anyhow!("vesperd sent maps this vesper cannot read: {e}"))?,
    };
    let mut out = String::new();
    for d in dumps {
        out.push_str(&d.to_text());
        out.push('\n');
    }
    Ok(out)
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
