//! A bounded soak test (`cargo xtask soak`, at most 10 minutes; not part of the default run):
//! a steady flood from one VM's probe, a hostile agent flooding beside it, and restarts of
//! the agent and of vesperd, cycle after cycle. After every cycle: vesperd is alive, its
//! memory stays under a bound, and every record of the cycle is accounted for (received,
//! or counted as dropped in the kernel or the agent, or lost in transit).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PROBE: &str =
    "tracepoint:syscalls:sys_enter_getppid /comm == \"soaker\"/ { emit { p = pid } }\n";
/// vesperd's resident memory must stay under this (the stores are bounded at 64 MiB each).
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// The probe's counters: received, kernel drops, agent drops, lost in transit, malformed.
fn counters(h: &Harness) -> [u64; 5] {
    let p = h.vm_status("steady")["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "soak").cloned())
        .unwrap_or_default();
    [
        "received",
        "kernel_drops",
        "agent_drops",
        "transport_lost",
        "malformed",
    ]
    .map(|k| p[k].as_u64().unwrap_or(0))
}

/// Loads the probe, unless vesperd already reloads it by itself (after an agent restart it
/// does; a restarted vesperd knows only its configuration's probes).
fn load(h: &Harness) {
    let desired = h.vm_status("steady")["desired_probes"].clone();
    if desired
        .as_array()
        .is_some_and(|d| d.iter().any(|p| p == "soak"))
    {
        h.wait_loaded("steady", "soak");
        return;
    }
    let file = h.dir.path().join("soak.vsp");
    std::fs::write(&file, PROBE).unwrap();
    h.vesper_ok(&["load", "steady", file.to_str().unwrap()]);
    h.wait_loaded("steady", "soak");
}

fn restart_agent(h: &mut Harness) {
    let mut old = h.agents.pop().unwrap();
    let _ = old.child.kill();
    let _ = old.child.wait();
    let sock = h.agent_socket("steady");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(bin("vesper-agent"))
        .arg("--channel")
        .arg(format!("unix-listen:{}", sock.display()))
        .stderr(std::fs::File::create(h.dir.path().join("agent-steady-again.log")).unwrap())
        .spawn()
        .unwrap();
    h.agents.push(Proc {
        child,
        name: "agent steady".into(),
    });
}

fn restart_vesperd(h: &mut Harness) {
    drop(h.vesperd.take());
    let child = Command::new(bin("vesperd"))
        .arg("--config")
        .arg(h.dir.path().join("vesper.toml"))
        .stderr(std::fs::File::create(h.dir.path().join("vesperd-again.log")).unwrap())
        .spawn()
        .unwrap();
    h.vesperd = Some(Proc {
        child,
        name: "vesperd".into(),
    });
    wait_until(
        Duration::from_secs(10),
        || h.vesper(&["status"]).status.success(),
        "the restarted vesperd to answer",
    );
}

#[test]
#[ignore = "a soak test of minutes: run it with `cargo xtask soak`"]
fn soak_floods_and_restarts_keep_vesperd_bounded_and_every_record_accounted() {
    assert!(
        need_root("soak"),
        "the soak test loads BPF programs: run it as root"
    );
    let secs: u64 = std::env::var("VESPER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .min(600);
    let mut h = Harness::start(&[
        VmSpec {
            name: "steady",
            agent: true,
            probes: &[],
        },
        VmSpec {
            name: "flooder",
            agent: false,
            probes: &[],
        },
    ]);
    let _flooder = Proc {
        child: Command::new(bin("vesper-testkit"))
            .args([
                "hostile-agent",
                h.agent_socket("flooder").to_str().unwrap(),
                "flood",
            ])
            .spawn()
            .unwrap(),
        name: "hostile flood".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut cycles, mut produced_total, mut received_total, mut peak_rss) =
        (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        h.wait_ready("steady");
        load(&h);
        let before = counters(&h);
        let out = Command::new(bin("vesper-testkit"))
            .args([
                "blaster", "--comm", "soaker", "--count", "200000", "--rate", "50000",
            ])
            .output()
            .unwrap();
        let produced: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("blaster output");
        let mut after = before;
        wait_until(
            Duration::from_secs(30),
            || {
                after = counters(&h);
                (0..5).map(|i| after[i] - before[i]).sum::<u64>() >= produced
            },
            "every record of the cycle accounted for",
        );
        let accounted: u64 = (0..5).map(|i| after[i] - before[i]).sum();
        assert_eq!(
            accounted, produced,
            "cycle {cycles}: {before:?} → {after:?}"
        );
        let vesperd = h.vesperd.as_mut().unwrap();
        assert!(
            vesperd.child.try_wait().unwrap().is_none(),
            "vesperd is alive after cycle {cycles}"
        );
        let rss = rss_kib(vesperd.child.id());
        peak_rss = peak_rss.max(rss);
        assert!(rss < RSS_BOUND_KIB, "cycle {cycles}: vesperd at {rss} KiB");
        let flooded = h.vm_status("flooder")["unknown_probe_records"]
            .as_u64()
            .unwrap_or(0);
        eprintln!(
            "cycle {cycles}: {produced} produced, {} received, {} dropped in the kernel; vesperd {rss} KiB; flooder {flooded} counted",
            after[0] - before[0],
            after[1] - before[1]
        );
        produced_total += produced;
        received_total += after[0] - before[0];
        cycles += 1;
        if cycles % 2 == 1 {
            restart_agent(&mut h);
        } else {
            restart_vesperd(&mut h);
        }
    }
    eprintln!(
        "soak: {cycles} cycles in {secs} s, {produced_total} records produced, {received_total} received, the rest counted; vesperd peak RSS {peak_rss} KiB"
    );
    assert!(cycles >= 2, "at least one restart of each kind");
}
