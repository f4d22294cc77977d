//! Notification latency, the original system's headline: from the moment a fault is
//! injected to the moment Pacemaker records the resource's failure.
//!
//! - Use case I: the web service is killed with SIGTERM (by `pkill` natively, `killall` in
//!   the guest). Use case II: the service leaks until the OOM killer takes it; it holds all
//!   but 16 MiB of the memory it may use (a 64 MiB memory cgroup natively, the whole guest in
//!   the lab), so the leak exhausts it at once, as when a guest uses up its memory.
//! - Poller: Pacemaker's own 10 s monitor, an HTTP GET of the service (through the guest's
//!   forwarded port), the way ocf:heartbeat:apache checks; vesperd runs with no action.
//!   Vesper: the same cluster and the same monitor, and vesperd's built-in rules fail the
//!   resource the moment the kill is seen.
//! - "Recorded" is the timestamp of Pacemaker's own alert for the failed operation (a
//!   `<alert>` in the CIB appends each resource event to a file), on the same clock as the
//!   injection: no polling of ours enters the figure.
//! - Each trial waits for Pacemaker's recovery, then a fixed 1.5 s (beyond vesperd's
//!   debounce), then a random delay uniform in [0, 10 s), so faults land at random moments
//!   of the monitor's cycle.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::cluster::{Cluster, NODE};
use crate::common::{Harness, MemCgroup, VmSpec, bin, wait_until};
use crate::util::{Rng, stats, table, unix_now};
use crate::{Lab, Setup};

const MONITOR_INTERVAL_S: f64 = 10.0;
const OCF_DIR: &str = "/usr/lib/ocf/resource.d/vesper-bench";
const NATIVE_PORT: u16 = 18300;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    SigTerm,
    Oom,
}

#[derive(Clone, Copy, PartialEq)]
enum Arm {
    Poller,
    Vesper,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::SigTerm => "I: SIGTERM to httpd",
            Case::Oom => "II: OOM killer takes httpd",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Case::SigTerm => "sigterm",
            Case::Oom => "oom",
        }
    }
}

impl Arm {
    fn key(self) -> &'static str {
        match self {
            Arm::Poller => "poller_10s",
            Arm::Vesper => "vesper",
        }
    }
}

/// One place the service runs: natively on this host, or in the lab guest.
struct Env<'a> {
    key: &'static str,
    rsc: &'static str,
    url: String,
    start_cmd: String,
    stop_cmd: String,
    /// Who sends the SIGTERM of use case I (its comm).
    killer: &'static str,
    lab: Option<&'a Lab>,
    _cgroup: Option<MemCgroup>,
    _state: Option<tempfile::TempDir>,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Env<'_> {
    fn native() -> Env<'static> {
        let cg = MemCgroup::new("vesper-bench-web", 64);
        let state = tempfile::tempdir().unwrap();
        let pidfile = state.path().join("web.pid");
        let testkit = bin("vesper-testkit");
        Env {
            key: "native",
            rsc: "web-native",
            url: format!("http://127.0.0.1:{NATIVE_PORT}/"),
            start_cmd: format!(
                "setsid -f {} web --comm httpd --port {NATIVE_PORT} --cgroup {} --ballast 48 --pidfile {}",
                testkit.display(),
                cg.0.display(),
                pidfile.display()
            ),
            stop_cmd: format!(
                "p=$(cat {0} 2>/dev/null); [ -n \"$p\" ] && kill -KILL $p; while [ -n \"$p\" ] && kill -0 $p 2>/dev/null; do sleep 0.05; done; rm -f {0}",
                pidfile.display()
            ),
            killer: "pkill",
            lab: None,
            _cgroup: Some(cg),
            _state: Some(state),
        }
    }

    fn lab(lab: &Lab) -> Env<'_> {
        let exec = format!(
            "{} lab-exec {}",
            bin("vesper-testkit").display(),
            lab.dir.join("lab.sock").display()
        );
        Env {
            key: "lab",
            rsc: "web-lab",
            url: format!("http://127.0.0.1:{}/", lab.port),
            start_cmd: format!(
                "{exec} 'vesper-testkit web --comm httpd --bind 0.0.0.0 --port 80 --leave-free 16 >/dev/null 2>&1 &'"
            ),
            stop_cmd: format!("{exec} 'killall -KILL httpd; sleep 0.3; true'"),
            killer: "killall",
            lab: Some(lab),
            _cgroup: None,
            _state: None,
        }
    }

    fn primitive(&self) -> String {
        format!(
            "      <primitive id=\"{r}\" class=\"ocf\" provider=\"vesper-bench\" type=\"web\">
        <instance_attributes id=\"{r}-ia\">
          <nvpair id=\"{r}-url\" name=\"url\" value=\"{}\"/>
          <nvpair id=\"{r}-start\" name=\"start_cmd\" value=\"{}\"/>
          <nvpair id=\"{r}-stop\" name=\"stop_cmd\" value=\"{}\"/>
        </instance_attributes>
        <operations>
          <op id=\"{r}-mon\" name=\"monitor\" interval=\"10s\" timeout=\"20s\"/>
          <op id=\"{r}-start-op\" name=\"start\" interval=\"0\" timeout=\"60s\"/>
        </operations>
      </primitive>\n",
            xml_escape(&self.url),
            xml_escape(&self.start_cmd),
            xml_escape(&self.stop_cmd),
            r = self.rsc,
        )
    }

    /// vesperd for this environment; `act`: whether it may fail the resource.
    fn vesperd(&self, act: bool) -> (Harness, &'static str) {
        let extra = format!(
            "resource = \"{}\"\nwatch = [\"httpd\"]\ndebounce_ms = 1000\npacemaker = {act}\n",
            self.rsc
        );
        let daemon = format!("node = \"{NODE}\"");
        let (h, vm) = match self.lab {
            Some(lab) => (lab.vesperd(&[], &daemon, &extra), "lab"),
            None => {
                let h = Harness::start_with(
                    &[VmSpec {
                        name: "native1",
                        agent: true,
                        probes: &[],
                    }],
                    &daemon,
                    &extra,
                );
                h.wait_ready("native1");
                (h, "native1")
            }
        };
        for p in ["signal", "oom"] {
            h.wait_loaded(vm, p);
        }
        (h, vm)
    }

    fn inject(&self, case: Case) {
        match (case, self.lab) {
            (Case::SigTerm, None) => {
                let st = Command::new("pkill")
                    .args(["-TERM", "-x", "httpd"])
                    .status();
                assert!(st.is_ok_and(|s| s.success()), "pkill found no httpd");
            }
            (Case::SigTerm, Some(lab)) => {
                lab.exec("killall -TERM httpd");
            }
            (Case::Oom, _) => {
                let addr = self.url.trim_start_matches("http://").trim_end_matches('/');
                let mut s = TcpStream::connect(addr).expect("connect to the service");
                s.write_all(b"GET /leak HTTP/1.0\r\n\r\n").unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                assert!(
                    answer.contains("leaking"),
                    "the service did not start leaking: {answer:?}"
                );
            }
        }
    }

    fn healthy(&self) -> bool {
        Command::new("curl")
            .args(["-fs", "-o", "/dev/null", "--max-time", "2", &self.url])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn cause_matches(&self, case: Case, cause: &str) -> bool {
        match case {
            Case::SigTerm => {
                cause.starts_with("httpd ")
                    && cause.contains("killed by SIGTERM from")
                    && cause.contains(self.killer)
            }
            Case::Oom => cause.starts_with("OOM killer took httpd"),
        }
    }
}

/// Pacemaker's alerts, as the alert agent appended them.
struct Alerts {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// One resource event from the alert file.
#[derive(Debug, Clone)]
struct Alert {
    time: f64,
    rsc: String,
    task: String,
    rc: i64,
    status: i64,
    desc: String,
}

const ALERT_AGENT: &str = r#"#!/bin/sh
# Appends each Pacemaker resource alert to the recipient file, one line each.
[ "$CRM_alert_kind" = resource ] || exit 0
echo "$CRM_alert_timestamp_epoch $CRM_alert_timestamp_usec $CRM_alert_rsc $CRM_alert_task $CRM_alert_rc $CRM_alert_status $CRM_alert_desc" >> "$CRM_alert_recipient"
"#;

impl Alerts {
    fn new() -> Alerts {
        let dir = tempfile::tempdir().unwrap();
        // Pacemaker runs alert agents as hacluster.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let agent = dir.path().join("alert.sh");
        std::fs::write(&agent, ALERT_AGENT).unwrap();
        std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let file = dir.path().join("alerts.log");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        Alerts { file, _dir: dir }
    }

    fn xml(&self) -> String {
        format!(
            "    <alerts>\n      <alert id=\"bench\" path=\"{}\">\n        <recipient id=\"bench-to\" value=\"{}\"/>\n      </alert>\n    </alerts>\n",
            self.file.with_file_name("alert.sh").display(),
            self.file.display()
        )
    }

    /// Alerts after byte offset `from`.
    fn since(&self, from: usize) -> Vec<Alert> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.get(from..)
            .unwrap_or("")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(7, ' ').collect();
                let usec: f64 = f.get(1)?.parse().ok()?;
                Some(Alert {
                    time: f.first()?.parse::<f64>().ok()? + usec / 1e6,
                    rsc: f.get(2)?.to_string(),
                    task: f.get(3)?.to_string(),
                    rc: f.get(4)?.parse().ok()?,
                    status: f.get(5)?.parse().ok()?,
                    desc: f.get(6).unwrap_or(&"").to_string(),
                })
            })
            .collect()
    }

    fn len(&self) -> usize {
        std::fs::metadata(&self.file).map_or(0, |m| m.len() as usize)
    }

    /// Waits for the first alert after `from` that satisfies `f`.
    fn wait(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Alert) -> bool,
    ) -> Alert {
        let mut found = None;
        wait_until(
            timeout,
            || {
                found = self.since(from).into_iter().find(|a| f(a));
                found.is_some()
            },
            what,
        );
        found.unwrap()
    }
}

/// Installs the benchmark's OCF agent for the duration of the run.
struct OcfAgent;

impl OcfAgent {
    fn install() -> OcfAgent {
        std::fs::create_dir_all(OCF_DIR).unwrap();
        let dest = Path::new(OCF_DIR).join("web");
        std::fs::write(&dest, include_str!("web.ocf")).unwrap();
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        OcfAgent
    }
}

impl Drop for OcfAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(OCF_DIR);
    }
}

struct Trial {
    delay_s: f64,
    latency_ms: f64,
    verdict_ms: Option<f64>,
    /// Fault → the restarted service answering HTTP again (Pacemaker's recovery done).
    answering_ms: f64,
    detected_by: String,
    cause: String,
    identified: bool,
}

fn trials(
    cluster: &Cluster,
    env: &Env,
    alerts: &Alerts,
    (case, arm): (Case, Arm),
    n: usize,
    rng: &mut Rng,
) -> Vec<Trial> {
    let cause_attr = format!("vesper-cause-{}", env.rsc);
    let (h, vm) = env.vesperd(arm == Arm::Vesper);
    wait_until(
        Duration::from_secs(60),
        || env.healthy(),
        "the service to answer",
    );
    let mut out = Vec::new();
    for i in 0..n {
        cluster.delete_node_attr(&cause_attr);
        std::thread::sleep(Duration::from_millis(1500));
        let delay = rng.unit() * MONITOR_INTERVAL_S;
        std::thread::sleep(Duration::from_secs_f64(delay));
        let from = alerts.len();
        let t0 = unix_now();
        env.inject(case);
        let fail = alerts.wait(
            from,
            Duration::from_secs(60),
            "Pacemaker to record the failure",
            |a| {
                a.rsc == env.rsc
                    && a.rc != 0
                    && a.status == 0
                    && (a.task == "monitor" || a.task == "asyncmon")
            },
        );
        let latency_ms = (fail.time - t0) * 1000.0;
        let cause = match arm {
            Arm::Vesper => {
                let t = Instant::now();
                let mut c = None;
                while c.is_none() && t.elapsed() < Duration::from_secs(10) {
                    c = cluster.node_attr(&cause_attr).filter(|v| !v.is_empty());
                    std::thread::sleep(Duration::from_millis(50));
                }
                c.unwrap_or_default()
            }
            // What Pacemaker itself knows of the failure.
            Arm::Poller => format!("{} {}: {}", fail.task, fail.rc, fail.desc),
        };
        // Vesper's share: injection → verdict (the rest is Pacemaker's tools and controller).
        // The verdict must be this trial's, and the cluster's attribute must say its cause.
        // The verdict acted on: this trial's first that was not debounced. (One fault can
        // give several verdicts, the later ones debounced; the last of them is not the
        // moment Vesper knew.)
        let verdict = (arm == Arm::Vesper)
            .then(|| {
                h.vesper_ok(&["why", vm, "--json", "--last", "10"])
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|e| e["debounced"] != true)
                    .filter_map(|e| {
                        let ms = e["verdict"]["time_ms"].as_f64()? - t0 * 1000.0;
                        Some((ms, e["verdict"]["cause"].as_str()?.to_string()))
                    })
                    .filter(|(ms, _)| *ms >= 0.0)
                    .min_by(|a, b| a.0.total_cmp(&b.0))
            })
            .flatten();
        let verdict_ms = verdict.as_ref().map(|v| v.0);
        let identified = verdict
            .as_ref()
            .is_some_and(|(_, c)| *c == cause && env.cause_matches(case, c));
        alerts.wait(
            from,
            Duration::from_secs(120),
            "Pacemaker to restart the service",
            |a| a.rsc == env.rsc && a.task == "start" && a.rc == 0 && a.time > fail.time,
        );
        wait_until(
            Duration::from_secs(60),
            || env.healthy(),
            "the restarted service to answer",
        );
        let answering_ms = (unix_now() - t0) * 1000.0;
        eprintln!(
            "  {} {} {} trial {}/{n}: {latency_ms:.1} ms (verdict at {verdict_ms:.1?} ms; answering again at {answering_ms:.0} ms; injected after a random {delay:.2} s; {}; cause: {cause})",
            env.key,
            case.key(),
            arm.key(),
            i + 1,
            fail.task
        );
        out.push(Trial {
            delay_s: delay,
            latency_ms,
            verdict_ms,
            answering_ms,
            detected_by: fail.task,
            cause,
            identified,
        });
    }
    drop(h);
    out
}

pub fn run(setup: &Setup) -> Value {
    let n = if setup.quick { 3 } else { 20 };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Rng::seeded(seed);
    let _agent = OcfAgent::install();
    let mut envs = vec![Env::native()];
    if let Some(lab) = &setup.lab {
        // The guest's own busybox httpd gives way to the benchmark's service on port 80.
        lab.exec("killall httpd; true");
        envs.push(Env::lab(lab));
    }
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();
    if let Some(lab) = &setup.lab {
        // How long a command takes to reach the guest and come back: the lab's injection of
        // use case I (`killall`) travels this way, so it bounds the delivery delay.
        let rtt: Vec<f64> = (0..10)
            .map(|_| {
                let t = Instant::now();
                lab.exec("true");
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        results.insert("lab_command_rtt_ms".into(), stats(&rtt).json());
    }
    for env in &envs {
        let alerts = Alerts::new();
        let cluster = Cluster::start_with(&env.primitive(), &alerts.xml(), &[env.rsc])
            .expect("Pacemaker is installed (cargo xtask bench installs it)");
        let mut per_env = serde_json::Map::new();
        for case in [Case::SigTerm, Case::Oom] {
            let mut means = [0.0; 2];
            for (k, arm) in [Arm::Poller, Arm::Vesper].into_iter().enumerate() {
                let ts = trials(&cluster, env, &alerts, (case, arm), n, &mut rng);
                let lat: Vec<f64> = ts.iter().map(|t| t.latency_ms).collect();
                let s = stats(&lat);
                means[k] = s.mean;
                let identified = ts.iter().filter(|t| t.identified).count();
                let verdicts: Vec<f64> = ts.iter().filter_map(|t| t.verdict_ms).collect();
                let verdict_stats = (!verdicts.is_empty()).then(|| stats(&verdicts).json());
                let answering: Vec<f64> = ts.iter().map(|t| t.answering_ms).collect();
                rows.push(vec![
                    env.key.to_string(),
                    case.name().to_string(),
                    match arm {
                        Arm::Poller => "Pacemaker monitor, HTTP every 10 s".to_string(),
                        Arm::Vesper => "Vesper".to_string(),
                    },
                    s.n.to_string(),
                    format!("{:.1}", s.mean),
                    format!("{:.1}", s.p50),
                    format!("{:.1}", s.p99),
                    format!("{:.1}", s.max),
                    format!("{identified}/{}", ts.len()),
                ]);
                per_env.insert(
                    format!("{}_{}", case.key(), arm.key()),
                    json!({
                        "stats_ms": s.json(),
                        "verdict_stats_ms": verdict_stats,
                        "answering_stats_ms": stats(&answering).json(),
                        "identified": identified,
                        "trials": ts.iter().map(|t| json!({
                            "delay_s": t.delay_s, "latency_ms": t.latency_ms, "verdict_ms": t.verdict_ms,
                            "answering_ms": t.answering_ms,
                            "detected_by": t.detected_by, "cause": t.cause, "identified": t.identified,
                        })).collect::<Vec<_>>(),
                    }),
                );
            }
            per_env.insert(
                format!("{}_ratio", case.key()),
                json!(means[0] / means[1].max(1e-9)),
            );
        }
        drop(cluster);
        results.insert(env.key.into(), Value::Object(per_env));
    }
    table(
        &format!(
            "notification latency: fault injected → Pacemaker records the failure (ms), {n} trials each"
        ),
        &[
            "where",
            "use case",
            "detector",
            "n",
            "mean",
            "p50",
            "p99",
            "max",
            "cause identified",
        ],
        &rows,
    );
    results.insert("seed".into(), json!(seed));
    results.insert(
        "alert_clock_tick_ms".into(),
        json!(crate::util::alert_clock_tick_ms()),
    );
    results.insert("trials".into(), json!(n));
    results.insert("monitor_interval_s".into(), json!(MONITOR_INTERVAL_S));
    Value::Object(results)
}
