//! Failover through a real single-node Pacemaker: a guest fault becomes exactly one
//! resource failure, Pacemaker recovers the resource, and the cause is visible through the
//! cluster's tools and `vesper why`.
//!
//! One test function: the cluster and its CIB are global to the host.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, NODE};
use common::{Harness, MemCgroup, VmSpec, bin, mortal_victim, need_root, send_signals};
use serde_json::Value;

/// The VM, and the Pacemaker resource it backs.
const VM: &str = "guest1";
const RSC: &str = "web1";

fn why_json(h: &Harness) -> Vec<Value> {
    h.vesper_ok(&["why", RSC, "--json", "--last", "20"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// vesperd has finished the actions of a verdict by `rule`.
fn actions_done(h: &Harness, rule: &str) -> bool {
    why_json(h).iter().any(|e| {
        e["verdict"]["rule"] == rule && e["actions"].as_array().is_some_and(|a| !a.is_empty())
    })
}

/// Runs examples/pacemaker/vesper-monitor the way VirtualDomain does: no arguments, the
/// resource in OCF_RESOURCE_INSTANCE, vesper on PATH.
fn monitor_script(h: &Harness) -> (Option<i32>, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/pacemaker/vesper-monitor");
    let path = format!(
        "{}:{}",
        bin("vesper").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(script)
        .env("OCF_RESOURCE_INSTANCE", RSC)
        .env("VESPER_SOCKET", h.socket())
        .env("PATH", path)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn guest_faults_become_one_explained_pacemaker_failure_each() {
    if !need_root("guest_faults_become_one_explained_pacemaker_failure_each") {
        return;
    }
    let Some(cluster) = Cluster::start(&[RSC]) else {
        return;
    };
    // A hook that fails once, then records every verdict: the retry is part of the test.
    let hooks = tempfile::tempdir().unwrap();
    let hook = hooks.path().join("hook.sh");
    let record = hooks.path().join("verdicts.jsonl");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e {d}/failed-once ]; then touch {d}/failed-once; echo first call fails >&2; exit 3; fi\ncat >> {r}\necho >> {r}\n",
            d = hooks.path().display(),
            r = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let h = Harness::start_with(
        &[VmSpec {
            name: VM,
            agent: true,
            probes: &["signal", "oom"],
        }],
        &format!("node = \"{NODE}\""),
        &format!(
            "resource = \"{RSC}\"\nwatch = [\"httpd\", \"postgres\"]\ndebounce_ms = 2000\nhooks = [\"{}\"]",
            hook.display()
        ),
    );
    h.wait_loaded(VM, "signal");
    h.wait_loaded(VM, "oom");
    let out = h.vesper(&["check", VM]);
    assert_eq!(out.status.code(), Some(0), "healthy before any fault");
    assert_eq!(
        monitor_script(&h).0,
        Some(0),
        "the shipped monitor script agrees"
    );

    // Fault 1: pkill takes three httpd processes at once. One fault, one failure.
    let mark = cluster.mark(RSC);
    let base = mark.failcount;
    let victims: Vec<_> = (0..3).map(|_| mortal_victim("httpd")).collect();
    let t0 = Instant::now();
    for (_, pid) in &victims {
        send_signals("pkill", *pid, libc::SIGTERM, 1);
    }
    let seen = cluster.expect_one_failure(RSC, &mark, "three httpd killed by pkill", || {
        actions_done(&h, "service-killed")
    });
    eprintln!(
        "SIGTERM to failure recorded: {} ms",
        (seen - t0).as_millis()
    );

    let cause = cluster
        .node_attr(&format!("vesper-cause-{RSC}"))
        .expect("cause attribute");
    assert!(
        cause.starts_with("httpd (pid ") && cause.contains("killed by SIGTERM from pkill (pid "),
        "cause attribute: {cause}"
    );
    let mon = cluster.crm_mon();
    assert!(
        mon.contains(&format!("vesper-cause-{RSC}")) && mon.contains("killed by SIGTERM"),
        "crm_mon -A shows the cause: {mon}"
    );
    let entries = why_json(&h);
    let acted: Vec<&Value> = entries.iter().filter(|e| e["debounced"] == false).collect();
    assert_eq!(acted.len(), 1, "one verdict acted on: {entries:?}");
    assert_eq!(entries.len(), 3, "three kills, three verdicts: {entries:?}");
    let e = acted[0];
    assert_eq!(e["verdict"]["rule"], "service-killed");
    assert_eq!(e["verdict"]["evidence"][0]["probe"], "signal");
    let cause_text = e["verdict"]["cause"].as_str().unwrap();
    assert!(
        victims
            .iter()
            .any(|(_, p)| cause_text.starts_with(&format!("httpd (pid {p})"))),
        "{e}"
    );
    let pm = e["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "pacemaker")
        .expect("pacemaker action");
    assert_eq!(pm["ok"], true, "{pm}");
    assert!(
        !pm["detail"].as_str().unwrap().contains("lowered first"),
        "no migration-threshold: the failure goes in at once: {pm}"
    );
    let hook_action = e["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"].as_str().unwrap().starts_with("exec"))
        .expect("exec action");
    assert_eq!(hook_action["ok"], true, "{hook_action}");
    assert_eq!(
        hook_action["attempts"], 2,
        "the hook failed once and was retried"
    );
    assert!(
        e["cluster"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("fail-count {} on {NODE}", base + 1)),
        "the fail-count read back: {e}"
    );
    let text = h.vesper_ok(&["why", RSC]);
    eprintln!("vesper why {RSC}:\n{text}");
    for part in [
        "evidence",
        "verdict",
        "action    pacemaker ok",
        "cluster",
        "SIGTERM",
    ] {
        assert!(text.contains(part), "vesper why lacks {part:?}:\n{text}");
    }
    let check = h.vesper(&["check", VM]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "OCF_ERR_GENERIC while the verdict stands"
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("killed by SIGTERM"));

    // Fault 2, after the debounce window: the OOM killer takes postgres.
    std::thread::sleep(Duration::from_millis(2200));
    let mark = cluster.mark(RSC);
    let cg = MemCgroup::new(&format!("vesper-pcmk-{}", std::process::id()), 32);
    cg.run_memhog("postgres");
    cluster.expect_one_failure(RSC, &mark, "postgres taken by the OOM killer", || {
        actions_done(&h, "service-oom")
    });
    assert_eq!(mark.failcount, base + 1);
    let cause = cluster.node_attr(&format!("vesper-cause-{RSC}")).unwrap();
    assert!(
        cause.starts_with("OOM killer took postgres (pid "),
        "cause attribute: {cause}"
    );
    let last = why_json(&h).pop().unwrap();
    assert_eq!(last["verdict"]["rule"], "service-oom", "{last}");
    assert_eq!(last["verdict"]["evidence"][0]["victim_comm"], "postgres");
    let hooked = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        hooked.lines().filter(|l| !l.is_empty()).count(),
        2,
        "the hook saw both acted-on verdicts: {hooked}"
    );
    assert!(hooked.contains("OOM killer took postgres"));

    // Fault 3: with a finite migration-threshold the scheduler acts on the count, so the
    // counter is lowered before the failure; still exactly one failure.
    let set = Command::new("crm_resource")
        .args([
            "--resource",
            RSC,
            "--meta",
            "--set-parameter",
            "migration-threshold",
        ])
        .args(["--parameter-value", "5"])
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    std::thread::sleep(Duration::from_millis(2200));
    let mark = cluster.mark(RSC);
    let (_victim, pid) = mortal_victim("httpd");
    send_signals("pkill", pid, libc::SIGTERM, 1);
    cluster.expect_one_failure(RSC, &mark, "httpd killed, migration-threshold set", || {
        why_json(&h).last().is_some_and(|e| {
            e["verdict"]["cause"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("httpd (pid {pid})")))
                && e["actions"].as_array().is_some_and(|a| !a.is_empty())
        })
    });
    let last = why_json(&h).pop().unwrap();
    let pm = last["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "pacemaker")
        .expect("pacemaker action")
        .clone();
    assert!(
        pm["ok"] == true && pm["detail"].as_str().unwrap().contains("lowered first"),
        "{pm}"
    );

    // The CLI's OCF codes outside the happy path.
    let unknown = h.vesper(&["check", "no-such-vm"]);
    assert_eq!(unknown.status.code(), Some(6), "OCF_ERR_CONFIGURED");
    let unreachable = Command::new(bin("vesper"))
        .env("VESPER_SOCKET", h.dir.path().join("nothing-here.sock"))
        .args(["check", VM])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(0),
        "a dead monitor never fails a healthy VM"
    );
    drop(h);

    // Mistakes: a resource, and a node name, that the cluster does not have. Each is
    // refused with the fix, the verdict is kept, and nothing is failed.
    for (daemon, vm_extra, says) in [
        (
            format!("node = \"{NODE}\""),
            "resource = \"no-such-rsc\"",
            "Pacemaker has no resource no-such-rsc",
        ),
        (
            "node = \"no-such-node\"".to_string(),
            "resource = \"web1\"",
            "Pacemaker has no node no-such-node",
        ),
    ] {
        let h = Harness::start_with(
            &[VmSpec {
                name: VM,
                agent: true,
                probes: &["signal"],
            }],
            &daemon,
            &format!("{vm_extra}\nwatch = [\"httpd\"]"),
        );
        h.wait_loaded(VM, "signal");
        let mark = cluster.mark(RSC);
        let (_victim, pid) = mortal_victim("httpd");
        send_signals("pkill", pid, libc::SIGTERM, 1);
        common::wait_until(
            Duration::from_secs(20),
            || {
                h.vesper_ok(&["why", VM, "--json"])
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|e| {
                        e["pending"] == false
                            && e["actions"].as_array().is_some_and(|a| !a.is_empty())
                    })
            },
            "the verdict's actions",
        );
        let entry: Value =
            serde_json::from_str(h.vesper_ok(&["why", VM, "--json"]).lines().last().unwrap())
                .unwrap();
        assert!(
            entry["verdict"]["cause"]
                .as_str()
                .unwrap()
                .contains("killed by SIGTERM"),
            "the verdict is kept: {entry}"
        );
        let pm = &entry["actions"][0];
        let detail = pm["detail"].as_str().unwrap();
        assert!(
            pm["ok"] == false && detail.contains(says) && detail.contains("vesper.toml"),
            "{says}, with the fix: {pm}"
        );
        assert!(h.vesperd_log().contains(says), "one line in the log too");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            cluster.mark(RSC).failcount,
            mark.failcount,
            "nothing was failed"
        );
    }
}
