//! Vesper in a real QEMU guest over virtio-serial: both use cases of the original system,
//! a kprobe, a broken guest userspace, a guest panic and a silent agent, and the guest
//! kernel's own types reaching the host.
//!
//! The VM is booted once by `cargo xtask test` (`lab up`), which sets VESPER_LAB to its
//! name; tests run in name order on one thread, the destructive ones last.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
#[path = "lab/kernels.rs"]
mod kernels;
// `burst::` sorts before the destructive `lab_` tests (tests run in name order).
#[path = "lab/ring.rs"]
mod burst;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{bin, wait_until};
use serde_json::Value;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Lab {
    name: String,
    dir: PathBuf,
}

fn lab(test: &str) -> Option<Lab> {
    match std::env::var("VESPER_LAB") {
        Ok(name) => {
            let dir = PathBuf::from(std::env::var("VESPER_LAB_DIR").expect("VESPER_LAB_DIR"));
            Some(Lab { name, dir })
        }
        Err(_) if std::env::var_os("VESPER_REQUIRE_LAB").is_some() => {
            panic!("{test}: VESPER_LAB is not set")
        }
        Err(_) => {
            eprintln!("SKIP {test}: needs the lab VM; run `cargo xtask test` (it boots one)");
            None
        }
    }
}

impl Lab {
    /// The guest kernel's types and symbols once they have arrived (or failed: an error).
    fn kernel_types(&self) -> Value {
        let mut k = Value::Null;
        wait_until(
            Duration::from_secs(120),
            || {
                k = self.status()["kernel_types"].clone();
                k["state"] == "known" || k["state"] == "failed"
            },
            "the guest kernel's types",
        );
        assert_eq!(k["state"], "known", "{k}");
        k
    }
    /// The release of the kernel `lab up` booted (it writes it beside the VM).
    fn booted_release(&self) -> String {
        let f = self.dir.join("kernel-release");
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    }
    fn vesper(&self, args: &[&str]) -> Output {
        Command::new(bin("vesper"))
            .env("VESPER_SOCKET", self.dir.join("vesper.sock"))
            .args(args)
            .output()
            .unwrap()
    }
    fn vesper_ok(&self, args: &[&str]) -> String {
        let o = self.vesper(args);
        assert!(
            o.status.success(),
            "vesper {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn load(&self, probe: &str) {
        let out = self.vesper(&["load", &self.name, probe]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("already loaded"),
            "load {probe}: {err}"
        );
    }
    fn events(&self, probe: &str) -> Vec<Value> {
        self.vesper_ok(&["events", &self.name, "--probe", probe, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    fn status(&self) -> Value {
        serde_json::from_str(
            self.vesper_ok(&["status", "--json"])
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap()
    }
    /// Runs a command in the guest over the lab port.
    fn exec(&self, cmd: &str, timeout: Duration) -> Result<(String, i32), String> {
        vesper_tests::lab_port::exec(&self.dir.join("lab.sock"), cmd, timeout)
            .map_err(|e| e.to_string())
    }
    fn exec_ok(&self, cmd: &str) -> String {
        let (out, rc) = self
            .exec(cmd, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("lab exec {cmd:?}: {e}"));
        assert_eq!(rc, 0, "lab exec {cmd:?} exited {rc}: {out}");
        out
    }
    fn wait_record(&self, probe: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        common::wait_record(what, || self.events(probe), f)
    }
    /// The why-log has a verdict by `rule` whose cause starts with `cause`.
    fn expect_verdict(&self, rule: &str, cause: &str) {
        let found = || {
            self.vesper_ok(&["why", &self.name, "--json", "--last", "50"])
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .any(|e| {
                    e["verdict"]["rule"] == rule
                        && e["verdict"]["cause"]
                            .as_str()
                            .is_some_and(|c| c.starts_with(cause))
                })
        };
        wait_until(Duration::from_secs(20), found, &format!("a {rule} verdict"));
    }
    fn httpd_pid(&self) -> u64 {
        self.exec_ok("pidof httpd || (httpd -h /www -p 80 && sleep 0.2 && pidof httpd)")
            .trim()
            .parse()
            .unwrap()
    }
    fn http_get(&self) -> String {
        let port = std::env::var("VESPER_LAB_PORT").unwrap_or_else(|_| "18080".into());
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }
}

/// The guest kernel's BTF and text symbols reach the host and parse there: what the compiler
/// reads struct layouts from. Runs first (name order); lab_8's reboot checks the cache.
#[test]
fn lab_0_the_guest_kernels_types_reach_the_host() {
    let Some(lab) = lab("lab_0_guest_kernel_types") else {
        return;
    };
    let k = lab.kernel_types();
    let id = k["kernel_id"].as_str().unwrap();
    eprintln!(
        "guest kernel {id}: {} types from {} bytes of BTF, {} text symbols from {} bytes, fetched in {} ms",
        k["types"], k["btf_bytes"], k["symbols"], k["symbol_bytes"], k["fetched_ms"]
    );
    // A Debian kernel: a GNU build id, tens of thousands of types and symbols.
    assert_eq!(id.len(), 40, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(k["types"].as_u64().unwrap() > 20_000, "{k}");
    assert!(k["symbols"].as_u64().unwrap() > 10_000, "{k}");
    // Cached on disk as the guest sent it: the size the agent announced.
    let btf = lab.dir.join("state/kernels").join(id).join("btf");
    let len = std::fs::metadata(&btf)
        .unwrap_or_else(|e| panic!("{}: {e}", btf.display()))
        .len();
    assert_eq!(Some(len), k["btf_bytes"].as_u64());
    let human = lab.vesper_ok(&["status"]);
    assert!(human.contains("kernel types: "), "{human}");

    // Offline: a kernel-info file carries the BTF, and a script with casts builds from it.
    let tool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools/oomkill.vsp");
    let info = lab.vesper_ok(&["kernel-info", &lab.name, "--for", tool.to_str().unwrap()]);
    assert!(info.contains("\"types\""), "no BTF in the kernel-info file");
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.json");
    std::fs::write(&k, &info).unwrap();
    let obj = dir.path().join("oomkill.o");
    let built = Command::new(bin("vesper"))
        .args(["build", tool.to_str().unwrap(), "--kernel-info"])
        .arg(&k)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(std::fs::metadata(&obj).unwrap().len() > 0);
}

#[test]
fn lab_1_use_case_i_sigterm_to_httpd_is_explained_on_the_host() {
    let Some(lab) = lab("lab_1_use_case_i") else {
        return;
    };
    assert!(
        lab.http_get().contains("vesper lab guest"),
        "httpd reachable through the forwarded port"
    );
    lab.load("signal");
    let pid = lab.httpd_pid();
    let t = Instant::now();
    lab.exec_ok(&format!("/bin/kill -TERM {pid}"));
    let r = lab.wait_record("signal", "SIGTERM to httpd", |r| {
        r["target_pid"] == pid && r["sig"] == 15
    });
    eprintln!(
        "use case I: record on the host {:?} after the kill command was sent",
        t.elapsed()
    );
    assert_eq!(r["sig_name"], "SIGTERM");
    assert_eq!(r["sender_comm"], "kill");
    assert_eq!(r["target_comm"], "httpd");
    assert!(r["sender_pid"].as_u64().unwrap() > 1);
    let st = lab.status();
    assert_eq!(
        st["agent"]["kernel_release"],
        lab.booted_release().as_str(),
        "compiled for and running in the guest kernel"
    );
    lab.httpd_pid();
}

#[test]
fn lab_2_kprobe_example_runs_in_the_guest() {
    let Some(lab) = lab("lab_2_kprobe") else {
        return;
    };
    let example =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/kprobe-signal.vsp");
    lab.load(example.to_str().unwrap());
    let pid = lab.httpd_pid();
    lab.exec_ok(&format!("/bin/kill -TERM {pid}"));
    let r = lab.wait_record("kprobe-signal", "kprobe record for SIGTERM", |r| {
        r["sig"] == 15 && r["sender_comm"] == "kill"
    });
    assert_eq!(r["sig_name"], "SIGTERM");
    lab.wait_record("kprobe-signal", "kretprobe record", |r| {
        r.get("ret").is_some()
    });
    lab.vesper_ok(&["unload", &lab.name, "kprobe-signal"]);
    lab.httpd_pid();
    // A function the guest cannot probe is refused at compile time, named with the kernel.
    let bad = std::env::temp_dir().join(format!("nosuchfn-{}.vsp", std::process::id()));
    std::fs::write(
        &bad,
        "kprobe:vesper_no_such_function { emit { p = pid } }\n",
    )
    .unwrap();
    let o = lab.vesper(&["load", &lab.name, bad.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "function vesper_no_such_function cannot be probed on kernel {}",
            lab.booted_release()
        )),
        "{err}"
    );
}

#[test]
fn lab_3_use_case_ii_oom_killer_victim_and_memory() {
    let Some(lab) = lab("lab_3_use_case_ii") else {
        return;
    };
    lab.load("oom");
    // The oomkill.bt port reads the same victim through struct oom_control (the guest's BTF).
    let tool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools/oomkill.vsp");
    lab.load(tool.to_str().unwrap());
    let _ = lab.exec("memhog 1024", Duration::from_secs(120));
    let r = lab.wait_record("oom", "OOM victim", |r| r["victim_comm"] == "memhog");
    let port = lab.wait_record("oomkill", "oomkill.vsp's victim", |p| {
        p["victim_comm"] == "memhog"
    });
    eprintln!("oomkill.vsp: {port}");
    assert_eq!(port["victim_pid"], r["victim_pid"], "{port} vs {r}");
    // The guest has 256 MiB: the kernel's page count for the OOM decision is of that order.
    let pages = port["pages"].as_u64().unwrap();
    assert!((16_384..=131_072).contains(&pages), "{port}");
    let anon = r["anon_rss_kb"].as_u64().unwrap();
    eprintln!("use case II: {r}");
    assert!(
        anon > 64 * 1024,
        "memhog held {anon} kB when killed; expected most of the guest's 256 MiB"
    );
    assert!(r["total_vm_kb"].as_u64().unwrap() >= anon);
    assert!(r["victim_pid"].as_u64().unwrap() > 1);
    // The agent is exempt and alive.
    assert_eq!(lab.status()["state"], "ready");
}

#[test]
fn lab_4_probes_still_deliver_with_tmp_full_and_every_other_process_killed() {
    let Some(lab) = lab("lab_4_broken_userspace") else {
        return;
    };
    lab.load("signal");
    let _ = lab.exec(
        "dd if=/dev/zero of=/tmp/fill bs=1M 2>/dev/null; df /tmp | tail -1",
        Duration::from_secs(60),
    );
    let pid = lab.httpd_pid();
    lab.exec_ok(&format!("/bin/kill -TERM {pid}"));
    lab.wait_record("signal", "SIGTERM with /tmp full", |r| {
        r["target_pid"] == pid && r["sig"] == 15
    });
    // Kill every process but init and the agent (this ends the lab port's own shell too).
    lab.httpd_pid();
    let agent = lab.exec_ok("pidof vesper-agent").trim().to_string();
    let cmd = format!(
        "for p in /proc/[0-9]*; do p=${{p#/proc/}}; [ $p = 1 ] || [ $p = {agent} ] || [ $p = $$ ] || kill -9 $p; done; kill -9 $$"
    );
    let _ = lab.exec(&cmd, Duration::from_secs(5));
    let r = lab.wait_record("signal", "SIGKILLs of the massacre", |r| {
        r["sig"] == 9 && r["target_comm"] == "httpd"
    });
    assert_eq!(r["sig_name"], "SIGKILL");
    // Still streaming afterwards: a fresh signal from a fresh shell (init restarts the lab port).
    wait_until(
        Duration::from_secs(30),
        || lab.exec("true", Duration::from_secs(3)).is_ok(),
        "lab port back",
    );
    let pid = lab.httpd_pid();
    lab.exec_ok(&format!("/bin/kill -USR1 {pid}"));
    lab.wait_record("signal", "a signal after the massacre", |r| {
        r["target_pid"] == pid && r["sig"] == 10
    });
    lab.exec_ok("rm -f /tmp/fill");
    assert_eq!(lab.status()["state"], "ready");
}

#[test]
fn lab_5_a_silent_agent_is_unresponsive_after_deadtime_and_recovers() {
    let Some(lab) = lab("lab_5_silent_agent") else {
        return;
    };
    // Freeze the agent: the channel stays open but nothing comes (deadtime is 3 s in the lab).
    let t = Instant::now();
    lab.exec_ok("kill -STOP $(pidof vesper-agent)");
    wait_until(
        Duration::from_secs(15),
        || lab.status()["state"] == "unresponsive",
        "unresponsive after deadtime",
    );
    eprintln!(
        "unresponsive reported {:?} after the agent froze",
        t.elapsed()
    );
    assert!(
        lab.events("vesper")
            .iter()
            .any(|r| r["event"] == "agent_unresponsive")
    );
    lab.expect_verdict("agent-silent", "agent in ");
    lab.exec_ok("kill -CONT $(pidof vesper-agent)");
    wait_until(
        Duration::from_secs(15),
        || lab.status()["state"] == "ready",
        "ready again",
    );
    assert!(
        lab.events("vesper")
            .iter()
            .any(|r| r["event"] == "agent_responsive")
    );
}

/// Use cases I and II end to end: the guest fault becomes exactly one failure of the VM's
/// resource in a real Pacemaker, with the cause where the operator looks. First, with no
/// cluster, the action fails, is retried with backoff and is reported.
#[test]
fn lab_6_guest_faults_fail_the_resource_in_pacemaker_with_the_cause() {
    let Some(lab) = lab("lab_6_pacemaker") else {
        return;
    };
    let rsc = lab.name.clone();
    lab.load("signal");
    lab.load("oom");
    let why = || -> Vec<Value> {
        lab.vesper_ok(&["why", &rsc, "--json", "--last", "50"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Earlier tests' verdicts are past the 1 s debounce.
    std::thread::sleep(Duration::from_millis(1200));
    let pid = lab.httpd_pid();
    lab.exec_ok(&format!("/bin/kill -TERM {pid}"));
    let cause = format!("httpd (pid {pid}) killed by SIGTERM from kill (pid ");
    let mut failed = None;
    wait_until(
        Duration::from_secs(30),
        || {
            failed = why().into_iter().find(|e| {
                e["verdict"]["cause"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&cause)
                    && !e["actions"].as_array().unwrap().is_empty()
            });
            failed.is_some()
        },
        "the verdict's failed action to be reported",
    );
    let a = &failed.unwrap()["actions"][0];
    assert_eq!(a["kind"], "pacemaker");
    assert_eq!(a["ok"], false, "no cluster is running yet: {a}");
    assert_eq!(a["attempts"], 4, "tried once, retried three times: {a}");
    assert!(
        a["ms"].as_u64().unwrap() >= 6200,
        "backoff 0.2 s, 1 s, 5 s: {a}"
    );

    let Some(cluster) = Cluster::start(&[rsc.as_str()]) else {
        return;
    };
    // Use case I.
    let mark = cluster.mark(&rsc);
    let since = now_ms();
    let pid = lab.httpd_pid();
    let t = Instant::now();
    lab.exec_ok(&format!("/bin/kill -TERM {pid}"));
    let acted = |rule: &str, since: u64| {
        why().iter().any(|e| {
            e["verdict"]["rule"] == rule
                && e["verdict"]["time_ms"].as_u64().unwrap_or(0) >= since
                && e["actions"][0]["ok"] == true
        })
    };
    let seen = cluster.expect_one_failure(&rsc, &mark, "httpd killed in the guest", || {
        acted("service-killed", since)
    });
    eprintln!(
        "use case I: kill sent to failure recorded in {} ms",
        (seen - t).as_millis()
    );
    let attr = format!("vesper-cause-{rsc}");
    let cause = cluster.node_attr(&attr).unwrap();
    assert!(
        cause.starts_with(&format!(
            "httpd (pid {pid}) killed by SIGTERM from kill (pid "
        )),
        "{cause}"
    );
    assert!(cluster.crm_mon().contains(&attr));
    let text = lab.vesper_ok(&["why", &rsc, "--last", "1"]);
    assert!(
        text.contains("action    pacemaker ok") && text.contains(&cause),
        "{text}"
    );

    // Use case II.
    std::thread::sleep(Duration::from_millis(1200));
    let mark = cluster.mark(&rsc);
    let since = now_ms();
    let t = Instant::now();
    let _ = lab.exec("memhog 1024", Duration::from_secs(120));
    let seen = cluster.expect_one_failure(
        &rsc,
        &mark,
        "memhog taken by the guest's OOM killer",
        || acted("service-oom", since),
    );
    eprintln!(
        "use case II: memhog started to failure recorded in {} ms (includes filling memory)",
        (seen - t).as_millis()
    );
    let cause = cluster.node_attr(&attr).unwrap();
    assert!(cause.starts_with("OOM killer took memhog (pid "), "{cause}");
    let last = why().pop().unwrap();
    assert_eq!(last["verdict"]["rule"], "service-oom", "{last}");
    assert_eq!(last["actions"][0]["ok"], true, "{last}");
    lab.httpd_pid();
}

/// A guest reboot: the host sees the reset through QMP, the new boot's agent connects on
/// the same port, gets its probes again, and the time without them is reported as loss.
#[test]
fn lab_8_a_rebooted_guest_gets_its_probes_again() {
    let Some(lab) = lab("lab_8_guest_reboot") else {
        return;
    };
    lab.load("signal");
    wait_until(
        Duration::from_secs(15),
        || {
            lab.status()["probes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "signal" && p["phase"] == "loaded")
        },
        "signal loaded",
    );
    let before = lab.status();
    let boot = before["agent"]["boot_id"].clone();
    let gaps = before["gaps"].as_u64().unwrap();
    let silent_before = lab
        .events("vesper")
        .iter()
        .filter(|r| r["event"] == "agent_unresponsive")
        .count();
    let t = Instant::now();
    // -f: straight to reboot(2), as a crashed userspace or a watchdog would.
    let _ = lab.exec("reboot -f", Duration::from_secs(3));
    let mut after = Value::Null;
    wait_until(
        Duration::from_secs(120),
        || {
            after = lab.status();
            after["agent"]["boot_id"] != boot
                && after["probes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "signal" && p["phase"] == "loaded")
        },
        "the new boot's agent with its probes",
    );
    let took = t.elapsed();
    eprintln!("reboot: probes attached in the new boot {took:?} after `reboot -f`");
    // The same kernel booted again: its types come from the cache, not the wire.
    wait_until(
        Duration::from_secs(30),
        || lab.status()["kernel_types"]["state"] == "known",
        "the new boot's kernel types",
    );
    let k = lab.status()["kernel_types"].clone();
    assert!(
        k["fetched_ms"].is_null(),
        "fetched again after a reboot: {k}"
    );
    assert_eq!(after["gaps"].as_u64().unwrap(), gaps + 1, "{after}");
    let host = lab.events("vesper");
    assert!(host.iter().any(|r| r["event"] == "guest_reset"), "{host:?}");
    // A reboot is not a silent agent: the new boot gets boot_timeout_ms to connect.
    assert_eq!(
        host.iter()
            .filter(|r| r["event"] == "agent_unresponsive")
            .count(),
        silent_before,
        "{host:?}"
    );
    let gap = host
        .iter()
        .rev()
        .find(|r| r["event"] == "unobserved")
        .unwrap_or_else(|| panic!("no gap reported: {host:?}"));
    eprintln!("reboot: {}", gap["detail"]);
    let detail = gap["detail"].as_str().unwrap();
    assert!(detail.contains("(the guest was reset)"), "{detail}");
    // The gap runs from the reset to the probes' load in the new boot.
    let gap_ms =
        after["unobserved_ms"].as_u64().unwrap() - before["unobserved_ms"].as_u64().unwrap();
    assert!(
        gap_ms >= 1000 && gap_ms <= took.as_millis() as u64 + 1000,
        "gap {gap_ms} ms for a reboot of {took:?}"
    );
    // The new boot's events arrive.
    let out = lab.exec_ok("sleep 30 & p=$!; kill -USR1 $p; echo $p");
    let pid: u64 = out.trim().parse().unwrap();
    lab.wait_record("signal", "SIGUSR1 in the new boot", |r| {
        r["target_pid"] == pid && r["sig"] == 10
    });
    lab.httpd_pid();
}

#[test]
fn lab_9_guest_panic_reaches_the_host_through_qmp() {
    let Some(lab) = lab("lab_9_guest_panic") else {
        return;
    };
    let _ = lab.exec("echo c > /proc/sysrq-trigger", Duration::from_secs(3));
    let t = Instant::now();
    wait_until(
        Duration::from_secs(15),
        || lab.status()["guest"] == "panicked",
        "QMP GUEST_PANICKED in status",
    );
    eprintln!("panic visible in vesper status after {:?}", t.elapsed());
    let ev = lab.events("vesper");
    assert!(ev.iter().any(|r| r["event"] == "guest_panicked"), "{ev:?}");
    // QEMU ends a panicked guest (-no-reboot): the agent's channel goes away.
    wait_until(
        Duration::from_secs(15),
        || lab.status()["state"] != "ready",
        "the agent's session is no longer ready",
    );
    let human = lab.vesper_ok(&["status"]);
    assert!(human.contains("/panicked"), "{human}");
    lab.expect_verdict(
        "guest-panic",
        &format!("guest kernel of {} panicked", lab.name),
    );
}
