//! A probe's ring buffer is as big as its script says (`config = { ring_kib = N }`), and
//! what a small one cannot hold in a burst is dropped in the guest and counted: the host's
//! per-probe counters account for every event (received + dropped = the burst). Its module
//! is `burst` in `lab.rs`: it runs before the destructive `lab_` tests.

use std::time::Duration;

use serde_json::Value;

use super::{Lab, lab};
use crate::common::wait_until;

/// getppid(2) calls the burst makes: far more than a 4 KiB ring holds (~100 records).
const BURST: u64 = 20_000;

impl Lab {
    /// The host's counters of probe `name` (`vesper probes VM --json`).
    fn probe_counters(&self, name: &str) -> Value {
        self.vesper_ok(&["probes", &self.name, "--json"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("probe {name} is not listed"))
    }
}

/// One burst into a probe with a `ring_kib` ring: (received, kernel drops, agent drops).
fn burst(lab: &Lab, ring_kib: u32) -> (u64, u64, u64) {
    let name = format!("burst{ring_kib}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.vsp"));
    std::fs::write(
        &file,
        format!(
            "config = {{ ring_kib = {ring_kib} }}\n\
             tracepoint:syscalls:sys_enter_getppid /comm == \"{name}\"/ {{ emit {{ p = pid }} }}\n"
        ),
    )
    .unwrap();
    lab.load(file.to_str().unwrap());
    // The blaster calls getppid as fast as it can, in one go.
    let out = lab.exec_ok(&format!(
        "vesper-testkit blaster --comm {name} --count {BURST}"
    ));
    let calls: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(calls, BURST, "{out}");
    let mut c = Value::Null;
    let n = |c: &Value, k: &str| c[k].as_u64().unwrap_or(0);
    wait_until(
        Duration::from_secs(60),
        || {
            c = lab.probe_counters(&name);
            n(&c, "received") + n(&c, "kernel_drops") + n(&c, "agent_drops") >= BURST
        },
        &format!("{name}: every event of the burst received or counted as dropped"),
    );
    // Nothing more arrives than happened, and nothing is lost on the way to the host.
    std::thread::sleep(Duration::from_secs(2));
    c = lab.probe_counters(&name);
    let (received, kernel, agent) = (
        n(&c, "received"),
        n(&c, "kernel_drops"),
        n(&c, "agent_drops"),
    );
    assert_eq!(received + kernel + agent, BURST, "{c}");
    assert_eq!(n(&c, "transport_lost"), 0, "{c}");
    lab.vesper_ok(&["unload", &lab.name, &name]);
    (received, kernel, agent)
}

#[test]
fn burst_0_a_small_ring_drops_a_burst_and_counts_it_a_bigger_one_drops_less() {
    let Some(lab) = lab("burst_0_ring_sizes") else {
        return;
    };
    let mut rows = Vec::new();
    for ring_kib in [4, 64, 1024] {
        let (received, kernel, agent) = burst(&lab, ring_kib);
        eprintln!(
            "ring {ring_kib:>5} KiB: burst {BURST}, received {received}, dropped in the kernel {kernel}, by the agent {agent}"
        );
        rows.push((ring_kib, kernel));
    }
    let drops = |kib| rows.iter().find(|r| r.0 == kib).unwrap().1;
    assert!(drops(4) > 0, "a 4 KiB ring held the whole burst: {rows:?}");
    assert!(
        drops(1024) < drops(4),
        "a bigger ring dropped as much: {rows:?}"
    );
}
