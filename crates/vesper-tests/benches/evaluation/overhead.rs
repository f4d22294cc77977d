//! Overhead: the nanoseconds a probe adds to each event in the probed kernel. The blaster
//! times a tight loop of getppid(2) with no probe, with Vesper's probe and with bpftrace's
//! on the same tracepoint: once keeping every call (filter true, one record each), once
//! keeping none (the filter's cost alone), and once counting every call by task name in an
//! in-kernel map (`@n[comm] = count()`, the same script for both). Each figure is the
//! median of several runs.

use serde_json::{Value, json};

use crate::Setup;
use crate::blast::{self, Bpftrace};
use crate::common::{Harness, VmSpec};
use crate::util::{median, table};

fn ns_per_call(n: u64, runs: usize) -> f64 {
    let xs: Vec<f64> = (0..runs).map(|_| blast::run_blaster(n, 0).1).collect();
    median(&xs)
}

pub fn run(setup: &Setup) -> Value {
    let (n, runs) = if setup.quick {
        (1_000_000, 3)
    } else {
        (5_000_000, 5)
    };
    let base = ns_per_call(n, runs);
    let h = Harness::start(&[VmSpec {
        name: "native1",
        agent: true,
        probes: &[],
    }]);
    h.wait_ready("native1");
    let mut measured = Vec::new();
    for (label, comm) in [("every call kept", "blaster"), ("no call kept", "nomatch")] {
        blast::load(&h, "native1", comm);
        let v = ns_per_call(n, runs);
        blast::unload(&h, "native1");
        let bt = Bpftrace::start(&blast::bpftrace_probe(comm));
        let b = ns_per_call(n, runs);
        drop(bt);
        measured.push((label, v, b));
    }
    // The counting map: the same script in both languages.
    let counting = "tracepoint:syscalls:sys_enter_getppid { @n[comm] = count(); }\n";
    let file = h.dir.path().join("count.vsp");
    std::fs::write(&file, counting).unwrap();
    h.vesper_ok(&["load", "native1", file.to_str().unwrap()]);
    h.wait_loaded("native1", "count");
    let v = ns_per_call(n, runs);
    let maps: Value =
        serde_json::from_str(h.vesper_ok(&["maps", "native1", "count", "--json"]).trim()).unwrap();
    let counted = maps[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"][0] == "blaster")
        .and_then(|e| e["value"].as_u64())
        .unwrap_or(0);
    // Every call counted, none lost: the map is checked, not just timed.
    assert!(
        counted >= n * runs as u64,
        "the counting map saw {counted} of {} calls",
        n * runs as u64
    );
    h.vesper_ok(&["unload", "native1", "count"]);
    let bt = Bpftrace::start(counting.trim());
    let b = ns_per_call(n, runs);
    drop(bt);
    measured.push(("counting map, @n[comm] = count()", v, b));
    drop(h);
    let rows: Vec<Vec<String>> = measured
        .iter()
        .map(|(label, v, b)| {
            vec![
                label.to_string(),
                format!("{:.0}", v - base),
                format!("{:.0}", b - base),
            ]
        })
        .collect();
    table(
        &format!(
            "overhead per getppid(2) event, ns added to a {base:.0} ns call (median of {runs} runs of {n} calls)"
        ),
        &["filter", "Vesper ns/event", "bpftrace ns/event"],
        &rows,
    );
    json!({
        "calls": n, "runs": runs, "baseline_ns": base,
        "rows": measured.iter().map(|(label, v, b)| json!({
            "filter": label, "vesper_ns": v - base, "bpftrace_ns": b - base,
        })).collect::<Vec<_>>(),
    })
}
