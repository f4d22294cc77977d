//! Overhead: the nanoseconds a probe adds to each event in the probed kernel. The blaster
//! times a tight loop of getppid(2) with no probe, with Vesper's probe and with bpftrace's
//! on the same tracepoint: once keeping every call (filter true, one record each) and once
//! keeping none (the filter's cost alone). Each figure is the median of several runs.

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
