//! Throughput: records per second from the probed kernel into vesperd's store, with every
//! record accounted for (received, dropped in the kernel or the agent, lost in transit),
//! natively and through the lab guest's virtio-serial port; bpftrace on the same
//! tracepoint, printing JSON to a pipe, measured in the same run.

use std::time::Instant;

use serde_json::{Value, json};

use crate::blast::{self, Accounting, Bpftrace};
use crate::common::{Harness, VmSpec};
use crate::util::{TICKS_PER_S, cpu_ticks, table};
use crate::{Lab, Setup};

fn row(what: &str, a: &Accounting) -> Vec<String> {
    vec![
        what.to_string(),
        a.produced.to_string(),
        a.received.to_string(),
        a.kernel_drops.to_string(),
        (a.agent_drops + a.transport_lost + a.malformed).to_string(),
        a.unaccounted().to_string(),
        format!("{:.2}", a.seconds),
        format!("{:.0}", a.rate()),
    ]
}

/// The pipeline's ceiling is measured: the default per-VM rate limit is lifted.
const UNLIMITED: &str = "records_per_sec = 0\nbytes_per_sec = 0";

fn native(n: u64) -> Accounting {
    let h = Harness::start_with(
        &[VmSpec {
            name: "native1",
            agent: true,
            probes: &[],
        }],
        UNLIMITED,
        "",
    );
    h.wait_ready("native1");
    blast::load(&h, "native1", "blaster");
    let before = blast::before(&h, "native1");
    let (agent, vesperd) = (
        h.agents[0].child.id(),
        h.vesperd.as_ref().unwrap().child.id(),
    );
    let cpu0 = (cpu_ticks(agent), cpu_ticks(vesperd));
    let start = Instant::now();
    let (calls, _) = blast::run_blaster(n, 0);
    let a = blast::account(&h, "native1", calls, before, start);
    // CPU time per record received, to show which side limits the rate.
    let per_record = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e9 / a.received.max(1) as f64;
    eprintln!(
        "  CPU per record: agent {:.0} ns, vesperd {:.0} ns",
        per_record(cpu_ticks(agent) - cpu0.0),
        per_record(cpu_ticks(vesperd) - cpu0.1)
    );
    a
}

fn bpftrace(n: u64) -> Accounting {
    let bt = Bpftrace::start(&blast::bpftrace_probe("blaster"));
    let start = Instant::now();
    let (calls, _) = blast::run_blaster(n, 0);
    bt.account(calls, start)
}

fn lab(lab: &Lab, n: u64) -> Accounting {
    let h = lab.vesperd(&[], UNLIMITED, "");
    blast::load(&h, "lab", "blaster");
    let before = blast::before(&h, "lab");
    let start = Instant::now();
    let out = lab.exec(&format!(
        "vesper-testkit blaster --comm blaster --count {n}"
    ));
    let (calls, _) = blast::parse_blaster(&out);
    blast::account(&h, "lab", calls, before, start)
}

pub fn run(setup: &Setup) -> Value {
    let n = if setup.quick { 1_000_000 } else { 5_000_000 };
    let n_lab = if setup.quick { 20_000 } else { 200_000 };
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    let v = native(n);
    rows.push(row(
        "Vesper, native (agent → unix socket → vesperd store)",
        &v,
    ));
    out.insert("vesper_native".into(), v.json());
    let b = bpftrace(n);
    rows.push(row("bpftrace -f json, native (→ pipe)", &b));
    out.insert("bpftrace_native".into(), b.json());
    if let Some(l) = &setup.lab {
        let a = lab(l, n_lab);
        rows.push(row(
            "Vesper, lab guest (TCG) → virtio-serial → vesperd store",
            &a,
        ));
        out.insert("vesper_lab".into(), a.json());
    }
    table(
        "throughput: getppid(2) as fast as one thread can call it, every call a record",
        &[
            "path",
            "produced",
            "received",
            "dropped in kernel",
            "dropped after",
            "unaccounted",
            "s",
            "records/s",
        ],
        &rows,
    );
    json!(out)
}
