//! The evaluation that `cargo xtask bench` runs (after building the release binaries and,
//! unless `--quick`, booting the lab VM):
//!
//! 1. notification latency of both use cases, Pacemaker's 10 s polling monitor against
//!    Vesper, natively and in the lab guest (`latency`);
//! 2. throughput from the probed kernel into vesperd's store, against bpftrace (`throughput`);
//! 3. nanoseconds each probe adds per event, against bpftrace (`overhead`);
//! 4. memory and CPU of the agent and vesperd (`footprint`);
//! 5. one vesperd serving 500 VMs at 100 records/s each beside one real agent: memory
//!    per VM, CPU, the good VM's signal latency against it alone (`scale`);
//! 6. on a multi-node Pacemaker cluster, if VESPER_CLUSTER_DIR names one: both use cases
//!    in a VirtualDomain guest against VirtualDomain's 10 s monitor, node loss, live
//!    migration (`cluster`).
//!
//! Prints a table per measurement and writes every raw number to `--out FILE` (JSON) after
//! each section, so an interrupted run keeps what it measured. Nothing here is asserted:
//! the report compares against the targets.
//!
//! Options: `--quick` (few trials, short runs), `--only a,b` (sections by name),
//! `--out FILE`. The lab VM is taken from VESPER_LAB, VESPER_LAB_DIR and VESPER_LAB_PORT.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: a failed unwrap is a failed run
#![allow(missing_debug_implementations)] // a program's private types, printed by no one

mod blast;
mod cluster;
#[path = "../../tests/common/mod.rs"]
mod common;
mod footprint;
mod latency;
mod overhead;
mod scale;
mod throughput;
mod util;

use std::path::PathBuf;
use std::time::Duration;

use common::Harness;
use serde_json::Value;

/// The lab guest booted by `cargo xtask lab up` (its own vesperd stopped).
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl Lab {
    fn from_env() -> Option<Lab> {
        Some(Lab {
            name: std::env::var("VESPER_LAB").ok()?,
            dir: PathBuf::from(std::env::var("VESPER_LAB_DIR").ok()?),
            port: std::env::var("VESPER_LAB_PORT").ok()?.parse().ok()?,
        })
    }

    /// Runs a shell command in the guest; panics unless it exits 0.
    pub fn exec(&self, cmd: &str) -> String {
        let (out, rc) =
            vesper_tests::lab_port::exec(&self.dir.join("lab.sock"), cmd, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("lab exec {cmd:?}: {e}"));
        assert_eq!(rc, 0, "lab exec {cmd:?} exited {rc}: {out}");
        out
    }

    /// The `[[vm]]` section that makes a vesperd talk to this guest, with `probes` loaded
    /// on connect and `extra` lines.
    pub fn vm_section(&self, probes: &[&str], extra: &str) -> String {
        format!(
            "[[vm]]\nname = \"lab\"\nchannel = \"unix:{}\"\nqmp = \"unix:{}\"\nprobes = {probes:?}\n{extra}\n",
            self.dir.join("channel.sock").display(),
            self.dir.join("qmp.sock").display()
        )
    }

    /// A vesperd for this guest; returns once the agent is connected.
    pub fn vesperd(&self, probes: &[&str], daemon_extra: &str, vm_extra: &str) -> Harness {
        let h = Harness::start_vesperd(daemon_extra, &self.vm_section(probes, vm_extra));
        h.wait_ready("lab");
        h
    }
}

pub struct Setup {
    pub quick: bool,
    pub lab: Option<Lab>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = PathBuf::from(opt("--out").unwrap_or_else(|| "evaluation.json".into()));
    let only: Option<Vec<String>> =
        opt("--only").map(|s| s.split(',').map(str::to_string).collect());
    let setup = Setup {
        quick: args.iter().any(|a| a == "--quick"),
        lab: Lab::from_env(),
    };
    if !common::need_root("the evaluation") {
        std::process::exit(1);
    }
    if setup.lab.is_none() {
        eprintln!("note: no lab VM (VESPER_LAB unset): measuring natively only");
    }
    type Section = fn(&Setup) -> Value;
    let sections: [(&str, Section); 6] = [
        ("footprint", footprint::run),
        ("overhead", overhead::run),
        ("throughput", throughput::run),
        ("latency", latency::run),
        ("scale", scale::run),
        ("cluster", cluster::run),
    ];
    let mut results = serde_json::Map::new();
    results.insert("quick".into(), Value::Bool(setup.quick));
    for (name, run) in sections {
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == name)) {
            continue;
        }
        eprintln!("==> {name}");
        let v = run(&setup);
        if v.is_null() {
            continue; // not measured here (the cluster section without a cluster)
        }
        results.insert(name.into(), v);
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&Value::Object(results.clone())).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    }
}
