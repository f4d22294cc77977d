//! The evaluation on a real multi-node Pacemaker cluster (`vesper_tests::cluster`, brought
//! up by `cargo xtask bench`, attached through VESPER_CLUSTER_DIR): the lab guest `web1` as
//! the VirtualDomain `vm-web1`, a vesperd on every node.
//!
//! 1. Use cases I (SIGTERM to the guest's httpd) and II (OOM: `memhog` exhausts the 256 MiB
//!    guest; httpd is made the OOM killer's first choice, so that the service the poller
//!    checks is the one lost), two arms each: vesperd fails the resource (Vesper), or
//!    VirtualDomain's own 10 s monitor runs `guest-http-check` through `monitor_scripts`
//!    with every vesperd stopped (poller). Per trial: fault → Pacemaker's record of the
//!    failure (the timestamp of Pacemaker's own alert, written by an `<alert>` agent on
//!    whichever node recorded it; one machine, one clock), and fault → httpd answering
//!    again (curl through every running node, every 100 ms).
//! 2. Node loss: the VM's host killed; kill → VM watched on the peer, kill → answering.
//! 3. Live migration: the time without probes, the guest's boot id, and every record of a
//!    steady signal stream accounted for on both nodes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vesper_tests::cluster::{Cluster, VM_RESOURCE};

use crate::Setup;
use crate::common::bin;
use crate::util::{Rng, stats, table, unix_now};

#[path = "cluster_move.rs"]
mod cluster_move;

const VM: &str = "web1";
const TOOL: Duration = Duration::from_secs(20);
const MONITOR_INTERVAL_S: f64 = 10.0;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> f64 {
    unix_now() * 1000.0
}

/// Polls `ok` every `every` until it holds (true) or `timeout` passes (false).
fn poll(timeout: Duration, every: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if ok() {
            return true;
        }
        std::thread::sleep(every);
    }
    false
}

fn must(what: &str, ok: bool) {
    assert!(ok, "timed out waiting for {what}");
}

struct Lab {
    c: Cluster,
    vesper: PathBuf,
}

impl Lab {
    fn running(&self) -> Vec<String> {
        self.c
            .node_names()
            .into_iter()
            .filter(|n| self.c.is_running(n))
            .collect()
    }

    /// A command on a running node; its output (panics unless it exits 0).
    fn on(&self, node: Option<&str>, cmd: &str) -> String {
        let node = node.map_or_else(|| self.running()[0].clone(), str::to_string);
        let (out, rc) = self.c.exec(&node, cmd, TOOL).unwrap();
        assert_eq!(rc, 0, "`{cmd}` on {node}: {out}");
        out
    }

    fn guest(&self, cmd: &str) -> String {
        let (out, rc) = self.c.guest(VM, cmd, TOOL).unwrap();
        assert_eq!(rc, 0, "`{cmd}` in the guest: {out}");
        out
    }

    fn watched(&self) -> Option<String> {
        self.c.watched_on(&self.vesper, VM)
    }

    /// The running node through which httpd answers, if any.
    fn answering(&self) -> Option<String> {
        self.running().into_iter().find(|n| self.c.http_answers(n))
    }

    fn vesper_json(&self, node: &str, args: &[&str]) -> Vec<Value> {
        self.c
            .vesper(&self.vesper, node, args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn cleanup(&self) {
        self.on(
            None,
            &format!("crm_resource --cleanup --resource {VM_RESOURCE}"),
        );
        self.on(
            None,
            &format!("crm_resource --clear --resource {VM_RESOURCE}"),
        );
    }

    /// After a cleanup: the VM runs, (if `watched`) its host's vesperd has its probes
    /// attached, and httpd answers. Returns the host.
    fn settle(&self, watched: bool) -> String {
        let mut host = None;
        must(
            "the VM running, watched and answering",
            poll(Duration::from_secs(180), Duration::from_millis(300), || {
                host = if watched {
                    self.watched()
                } else {
                    self.c.locate(VM_RESOURCE)
                };
                host.as_ref().is_some_and(|h| self.c.http_answers(h))
            }),
        );
        host.unwrap()
    }

    fn set_vesperd(&self, on: bool) {
        for n in self.running() {
            let nd = self.c.dir().join(&n);
            let cmd = if on {
                // As the node's init starts it (xtask/lab/cluster-node), detached.
                format!(
                    "pgrep -x vesperd >/dev/null || setsid {} --config /etc/vesper/vesper.toml </dev/null >>{} 2>&1 &",
                    self.vesper.with_file_name("vesperd").display(),
                    nd.join("vesperd.log").display()
                )
            } else {
                "pkill -x vesperd; while pgrep -x vesperd >/dev/null; do sleep 0.1; done".into()
            };
            self.on(Some(&n), &cmd);
        }
    }
}

/// Pacemaker's resource alerts, appended by an `<alert>` agent on every node (under /tmp,
/// which the nodes share with the host).
struct Alerts {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

const ALERT_AGENT: &str = r#"#!/bin/sh
# One line per Pacemaker resource alert, on whichever node raised it.
[ "$CRM_alert_kind" = resource ] || exit 0
echo "$CRM_alert_timestamp_epoch $CRM_alert_timestamp_usec $CRM_alert_node $CRM_alert_rsc $CRM_alert_task $CRM_alert_interval $CRM_alert_rc $CRM_alert_status" >> "$CRM_alert_recipient"
"#;

struct Alert {
    time: f64,
    node: String,
    task: String,
}

impl Alerts {
    fn install(lab: &Lab) -> Alerts {
        use std::os::unix::fs::PermissionsExt;
        // Under the lab's directory: every node sees it at the same path, including nodes in
        // a root file system of their own (with a private /tmp).
        let dir = tempfile::tempdir_in(lab.c.dir()).unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
        // Pacemaker runs alert agents as hacluster.
        mode(dir.path(), 0o777).unwrap();
        let agent = dir.path().join("alert.sh");
        std::fs::write(&agent, ALERT_AGENT).unwrap();
        mode(&agent, 0o755).unwrap();
        let file = dir.path().join("alerts.log");
        std::fs::write(&file, "").unwrap();
        mode(&file, 0o666).unwrap();
        lab.on(
            None,
            &format!(
                "cibadmin --create --scope configuration --xml-text '<alerts><alert id=\"vesper-bench\" path=\"{}\"><recipient id=\"vesper-bench-to\" value=\"{}\"/></alert></alerts>'",
                agent.display(),
                file.display()
            ),
        );
        Alerts { file, _dir: dir }
    }

    fn len(&self) -> usize {
        std::fs::metadata(&self.file).map_or(0, |m| m.len() as usize)
    }

    /// The first failure of the VM's resource after byte `from`: a failed recurring
    /// monitor, or the failure `crm_resource --fail` injects (asyncmon). Probes (interval
    /// 0) of the other nodes report "not running" too: not failures.
    fn failure(&self, from: usize) -> Option<Alert> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.get(from..)?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let [sec, usec, node, rsc, task, interval, rc, status] = f[..] else {
                return None;
            };
            let failed = rsc == VM_RESOURCE
                && rc != "0"
                && status == "0"
                && (task == "asyncmon" || (task == "monitor" && interval != "0"));
            failed.then_some(())?;
            Some(Alert {
                time: sec.parse::<f64>().ok()? + usec.parse::<f64>().ok()? / 1e6,
                node: node.into(),
                task: task.into(),
            })
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    SigTerm,
    Oom,
}

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::SigTerm => "sigterm",
            Case::Oom => "oom",
        }
    }
    fn inject(self) -> &'static str {
        match self {
            Case::SigTerm => "/bin/kill -TERM $(pidof httpd)",
            // The OOM killer's first victim is httpd, then memhog itself.
            Case::Oom => {
                "for p in $(pidof httpd); do echo 1000 >/proc/$p/oom_score_adj; done; memhog 1024"
            }
        }
    }
    fn cause(self) -> &'static str {
        match self {
            Case::SigTerm => "killed by SIGTERM",
            Case::Oom => "OOM killer took httpd",
        }
    }
}

fn fault_trials(
    lab: &Lab,
    alerts: &Alerts,
    case: Case,
    vesper: bool,
    n: usize,
    rng: &mut Rng,
) -> Value {
    let arm = if vesper { "vesper" } else { "poller_10s" };
    let mut trials = Vec::new();
    for i in 0..n {
        lab.cleanup();
        std::thread::sleep(Duration::from_millis(1500));
        let host = lab.settle(vesper);
        let delay = rng.unit() * MONITOR_INTERVAL_S;
        std::thread::sleep(Duration::from_secs_f64(delay));
        let from = alerts.len();
        let t0 = unix_now();
        // The guest's exit status is the fault's (memhog is killed), and the VM may be
        // stopped under the command.
        let _ = lab.c.guest(VM, case.inject(), TOOL);
        let mut fail = None;
        must(
            "Pacemaker to record the failure",
            poll(Duration::from_secs(90), Duration::from_millis(20), || {
                fail = alerts.failure(from);
                fail.is_some()
            }),
        );
        let fail = fail.unwrap();
        let recorded_ms = (fail.time - t0) * 1000.0;
        let mut on = None;
        must(
            "httpd to answer again",
            poll(Duration::from_secs(240), Duration::from_millis(100), || {
                on = lab.answering();
                on.is_some()
            }),
        );
        let answering_ms = (unix_now() - t0) * 1000.0;
        // This trial's verdict on the VM's host with the case's cause (in use case II a
        // second one follows when memhog is taken too).
        let verdicts = lab.vesper_json(&host, &["why", VM, "--json", "--last", "5"]);
        // The one acted on: the earliest not debounced (later ones of the same fault are).
        let verdict = verdicts
            .iter()
            .filter(|e| e["verdict"]["time_ms"].as_f64() >= Some(t0 * 1000.0))
            .filter(|e| e["debounced"] != true)
            .filter(|e| {
                e["verdict"]["cause"]
                    .as_str()
                    .is_some_and(|c| c.contains(case.cause()))
            })
            .min_by(|a, b| {
                let t = |e: &&Value| e["verdict"]["time_ms"].as_f64().unwrap_or(f64::MAX);
                t(a).total_cmp(&t(b))
            });
        let verdict_ms =
            verdict.and_then(|e| Some(e["verdict"]["time_ms"].as_f64()? - t0 * 1000.0));
        let cause = verdict
            .and_then(|e| e["verdict"]["cause"].as_str())
            .unwrap_or("")
            .to_string();
        let identified = cause.contains(case.cause());
        eprintln!(
            "  {} {arm} {}/{n}: recorded {recorded_ms:.0} ms ({} on {}), answering {answering_ms:.0} ms on {}; delay {delay:.2} s; cause: {cause:?}",
            case.key(),
            i + 1,
            fail.task,
            fail.node,
            on.as_deref().unwrap_or("?")
        );
        trials.push(json!({
            "delay_s": delay, "recorded_ms": recorded_ms, "answering_ms": answering_ms,
            "verdict_ms": verdict_ms, "detected_by": fail.task, "recorded_on": fail.node,
            "host": host, "answering_on": on, "cause": cause, "identified": identified,
        }));
    }
    let col = |k: &str| -> Vec<f64> { trials.iter().filter_map(|t| t[k].as_f64()).collect() };
    json!({
        "recorded_ms": stats(&col("recorded_ms")).json(),
        "answering_ms": stats(&col("answering_ms")).json(),
        "identified": trials.iter().filter(|t| t["identified"] == true).count(),
        "trials": trials,
    })
}

fn node_loss(lab: &Lab, n: usize) -> Value {
    let mut trials = Vec::new();
    for i in 0..n {
        lab.cleanup();
        let host = lab.settle(true);
        let t = Instant::now();
        lab.c.kill(&host);
        let mut peer = None;
        must(
            "the VM watched on a peer",
            poll(Duration::from_secs(240), Duration::from_millis(100), || {
                peer = lab.watched().filter(|p| *p != host);
                peer.is_some()
            }),
        );
        let watched_ms = t.elapsed().as_secs_f64() * 1000.0;
        let peer = peer.unwrap();
        must(
            "httpd answering on the peer",
            poll(Duration::from_secs(120), Duration::from_millis(100), || {
                lab.c.http_answers(&peer)
            }),
        );
        let answering_ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "  node loss {}/{n}: {host} killed; watched on {peer} after {watched_ms:.0} ms, answering after {answering_ms:.0} ms",
            i + 1
        );
        lab.c.boot(&host).unwrap();
        trials.push(json!({"killed": host, "peer": peer, "watched_ms": watched_ms, "answering_ms": answering_ms}));
    }
    let col = |k: &str| -> Vec<f64> { trials.iter().filter_map(|t| t[k].as_f64()).collect() };
    json!({
        "watched_ms": stats(&col("watched_ms")).json(),
        "answering_ms": stats(&col("answering_ms")).json(),
        "trials": trials,
    })
}

fn row(what: &str, s: &Value) -> Vec<String> {
    let f = |k: &str| s[k].as_f64().map_or("–".into(), |v| format!("{v:.0}"));
    vec![what.into(), f("n"), f("mean"), f("p50"), f("min"), f("max")]
}

pub fn run(_setup: &Setup) -> Value {
    let Some(dir) = std::env::var_os("VESPER_CLUSTER_DIR") else {
        eprintln!("note: no cluster (VESPER_CLUSTER_DIR unset): the cluster section is skipped");
        return Value::Null;
    };
    let lab = Lab {
        c: Cluster::attach(Path::new(&dir)).expect("attach to the cluster"),
        vesper: bin("vesper"),
    };
    let n = env_count("VESPER_CLUSTER_TRIALS", 5);
    let n_loss = env_count("VESPER_CLUSTER_NODE_LOSS_TRIALS", 3);
    let seed = (unix_now() * 1e6) as u64;
    let mut rng = Rng::seeded(seed);
    let alerts = Alerts::install(&lab);
    let mut out = serde_json::Map::new();
    // Copied into the lab's directory, which every node sees at its own path.
    let check = lab.c.dir().join("guest-http-check");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/evaluation/guest-http-check"),
        &check,
    )
    .unwrap();
    let mut rows = Vec::new();
    for vesper in [true, false] {
        if !vesper {
            // The poller arm: Pacemaker alone, its monitor asking httpd.
            lab.set_vesperd(false);
            lab.on(
                None,
                &format!(
                    "crm_resource --resource {VM_RESOURCE} --set-parameter monitor_scripts --parameter-value {}",
                    check.display()
                ),
            );
        }
        for case in [Case::SigTerm, Case::Oom] {
            let arm = if vesper { "vesper" } else { "poller_10s" };
            let v = fault_trials(&lab, &alerts, case, vesper, n, &mut rng);
            rows.push(row(
                &format!("{} {arm}: recorded", case.key()),
                &v["recorded_ms"],
            ));
            rows.push(row(
                &format!("{} {arm}: answering", case.key()),
                &v["answering_ms"],
            ));
            out.insert(format!("{}_{arm}", case.key()), v);
        }
        if !vesper {
            lab.on(
                None,
                &format!(
                    "crm_resource --resource {VM_RESOURCE} --delete-parameter monitor_scripts"
                ),
            );
            lab.set_vesperd(true);
        }
    }
    for case in ["sigterm", "oom"] {
        let mean = |arm: &str, k: &str| {
            out[&format!("{case}_{arm}")][k]["mean"]
                .as_f64()
                .unwrap_or(0.0)
        };
        let ratio = |k: &str| mean("poller_10s", k) / mean("vesper", k).max(1e-9);
        out.insert(
            format!("{case}_ratio"),
            json!({"recorded": ratio("recorded_ms"), "answering": ratio("answering_ms")}),
        );
    }
    let loss = node_loss(&lab, n_loss);
    rows.push(row("node loss: watched on the peer", &loss["watched_ms"]));
    rows.push(row(
        "node loss: answering on the peer",
        &loss["answering_ms"],
    ));
    out.insert("node_loss".into(), loss);
    let mig = cluster_move::migration(&lab, n);
    rows.push(row(
        "live migration: watched on the destination",
        &mig["move_ms"],
    ));
    rows.push(row("live migration: no probe attached", &mig["gap_ms"]));
    out.insert("migration".into(), mig);
    lab.cleanup();
    let _ = lab.c.exec(
        &lab.running()[0],
        "cibadmin --delete --xml-text '<alert id=\"vesper-bench\"/>'",
        TOOL,
    );
    table(
        "cluster: from the fault (ms)",
        &["what", "n", "mean", "p50", "min", "max"],
        &rows,
    );
    out.insert("seed".into(), json!(seed));
    out.insert("trials".into(), json!(n));
    out.insert("node_loss_trials".into(), json!(n_loss));
    out.insert("nodes".into(), json!(lab.c.node_names().len()));
    out.insert("fencing".into(), json!(lab.c.fencing()));
    out.insert("failure_record".into(), json!("pacemaker alert timestamp"));
    Value::Object(out)
}
