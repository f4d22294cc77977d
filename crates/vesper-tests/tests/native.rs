//! The walking skeleton on the real kernel: agent (on the host, over a unix socket),
//! vesperd and the CLI, with the built-in `signal` probe.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;

const SIGTERM: i32 = 15;
const SIGUSR1: i32 = 10;

/// Tests that flood the kernel with signals, or account for every lost record, run one at
/// a time: every agent on this host sees every signal, so one test's flood fills another
/// test's ring buffers (64 KiB unless a script asks for more) and shows up as its losses.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn sigterm_from_stopper_to_victim_is_shown_within_a_second_and_stops_after_unload() {
    if !need_root("sigterm_from_stopper_to_victim") {
        return;
    }
    let h = Harness::single(&[]);
    let loaded = h.vesper_ok(&["load", "host1", "signal"]);
    assert!(loaded.starts_with("signal loaded in host1"), "{loaded}");
    let (_victim, victim_pid) = victim("victim");
    let (_f, rx) = h.follow("host1");
    std::thread::sleep(Duration::from_millis(200)); // follower subscribed

    let sent = Instant::now();
    let stopper_pid = send_signals("stopper", victim_pid, SIGTERM, 1);
    let (arrived, rec) = loop {
        let (t, v) = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("no record within 2 s");
        if v["sender_comm"] == "stopper" && v["target_pid"] == victim_pid {
            break (t, v);
        }
    };
    let latency = arrived - sent;
    eprintln!("signal -> vesper events latency: {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    assert_eq!(rec["vm"], "host1");
    assert_eq!(rec["probe"], "signal");
    assert!(rec["seq"].is_u64() && rec["ts_ns"].as_u64().unwrap() > 0);
    assert_eq!(rec["sig"], SIGTERM);
    assert_eq!(rec["sig_name"], "SIGTERM");
    assert_eq!(rec["sender_pid"], stopper_pid);
    assert_eq!(rec["target_pid"], victim_pid);
    assert_eq!(rec["target_comm"], "victim");
    assert!(rec["result"].is_i64());

    let human = h.vesper_ok(&["events", "host1", "--probe", "signal"]);
    let line = human
        .lines()
        .find(|l| l.contains("stopper"))
        .expect("human line");
    assert!(
        line.contains(&format!("SIGTERM (15) from stopper (pid {stopper_pid}")),
        "{line}"
    );
    assert!(
        line.contains(&format!("to victim (pid {victim_pid})")),
        "{line}"
    );

    h.vesper_ok(&["unload", "host1", "signal"]);
    send_signals("stopper", victim_pid, SIGTERM, 1);
    std::thread::sleep(Duration::from_millis(500));
    // (The sender's exit also sends SIGCHLD to its parent: match the target too.)
    let from_stopper = h
        .events_json("host1", "signal")
        .iter()
        .filter(|r| r["sender_comm"] == "stopper" && r["target_pid"] == victim_pid)
        .count();
    assert_eq!(from_stopper, 1, "a signal after unload produced a record");
}

#[test]
fn burst_of_10000_signals_arrives_complete_or_the_loss_is_reported_exactly() {
    if !need_root("burst_of_10000_signals") {
        return;
    }
    let _alone = one_at_a_time();
    let h = Harness::single(&["signal"]);
    h.wait_loaded("host1", "signal");
    let (_victim, victim_pid) = victim("burstee");
    let before = h.lost("host1");
    let t = Instant::now();
    send_signals("burster", victim_pid, SIGUSR1, 10_000);
    let (got, loss) = h.wait_accounted("burster", victim_pid, SIGUSR1, 10_000, before);
    eprintln!(
        "burst: {got} received, {loss} reported lost, in {:?}",
        t.elapsed()
    );
    assert!(got <= 10_000);
    if loss == 0 {
        assert_eq!(
            got, 10_000,
            "nothing reported lost, so every record must be there"
        );
    }
    let p = &h.vm_status("host1")["probes"][0];
    assert_eq!(p["replayed"], 0);
    assert_eq!(p["malformed"], 0);
}

#[test]
fn user_mistakes_get_one_line_and_exit_status_1() {
    if !need_root("user_mistakes") {
        return;
    }
    let h = Harness::single(&[]);
    for (args, expect) in [
        (
            &["load", "web9", "signal"][..],
            "vesper: unknown VM \"web9\" (configured: host1)\n",
        ),
        (
            &["load", "host1", "sigal"][..],
            "vesper: unknown built-in probe \"sigal\" (built-in probes: signal, oom, exit, fork, reclaim, hung; or give a .vsp or .o file)\n",
        ),
        (
            &["unload", "host1", "signal"][..],
            "vesper: probe \"signal\" is not loaded in host1\n",
        ),
        (
            &["events", "nope"][..],
            "vesper: unknown VM \"nope\" (configured: host1)\n",
        ),
    ] {
        let o = h.vesper(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), expect, "{args:?}");
    }
    // No daemon at all: one line that says what to do.
    let o = std::process::Command::new(bin("vesper"))
        .env("VESPER_SOCKET", "/nonexistent/v.sock")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is vesperd running?"), "{err}");
}

#[test]
fn invalid_config_names_the_file_the_key_and_the_reason() {
    let (_dir, cfg, err) =
        vesperd_refuses(|_| "[[vm]]\nname = \"web1\"\nchannel = \"tcp:1234\"\n".into());
    assert!(
        err.contains(&format!("{}: key `vm[0].channel`", cfg.display())),
        "{err}"
    );
    assert!(err.contains("unix:/path/to/vm.sock"), "{err}");
}

#[test]
fn a_stalled_host_makes_the_kernel_drop_and_count_never_wait() {
    if !need_root("a_stalled_host") {
        return;
    }
    let _alone = one_at_a_time();
    let h = Harness::single(&["signal"]);
    h.wait_loaded("host1", "signal");
    let (_victim, pid) = victim("stalled");
    let vesperd = h.vesperd.as_ref().unwrap().child.id() as i32;
    // SAFETY: kill(2) with a pid we started; no memory is involved.
    assert_eq!(unsafe { libc::kill(vesperd, libc::SIGSTOP) }, 0);
    let n = 200_000;
    let t = Instant::now();
    send_signals("flooder", pid, SIGUSR1, n);
    let took = t.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(vesperd, libc::SIGCONT) }, 0);
    eprintln!("{n} signals sent in {took:?} with the host stopped");
    let (got, dropped) = h.wait_accounted("flooder", pid, SIGUSR1, n.into(), 0);
    eprintln!("received {got}, dropped and counted {dropped}");
    assert!(
        dropped > 0,
        "a 1 MiB ring cannot hold {n} records: drops must have been counted"
    );
    assert!(got <= u64::from(n) && got > 0);
    assert_eq!(h.vm_status("host1")["probes"][0]["malformed"], 0);
}

#[test]
fn after_vesperd_restarts_the_agent_reconnects_and_probes_are_reloaded() {
    if !need_root("after_vesperd_restarts") {
        return;
    }
    let mut h = Harness::single(&["signal"]);
    h.wait_loaded("host1", "signal");
    let first = h.vesperd.take();
    drop(first); // kills vesperd: the agent sees its host go away and unloads
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::File::create(h.dir.path().join("vesperd-2.log")).unwrap();
    let child = std::process::Command::new(bin("vesperd"))
        .arg("--config")
        .arg(h.dir.path().join("vesper.toml"))
        .stderr(log)
        .spawn()
        .unwrap();
    h.vesperd = Some(Proc {
        child,
        name: "vesperd (2)".into(),
    });
    // The killed daemon left its socket file behind: wait for the new one to answer.
    wait_until(
        Duration::from_secs(10),
        || h.vesper(&["status"]).status.success(),
        "the new vesperd answering",
    );
    h.wait_loaded("host1", "signal");
    let (_victim, pid) = victim("victim");
    send_signals("again", pid, SIGTERM, 1);
    wait_until(
        Duration::from_secs(5),
        || {
            h.events_json("host1", "signal")
                .iter()
                .any(|r| r["sender_comm"] == "again" && r["target_pid"] == pid)
        },
        "records after the restart",
    );
    let agent_log = std::fs::read_to_string(h.dir.path().join("agent-host1.log")).unwrap();
    assert_eq!(
        agent_log.matches("host connected").count(),
        2,
        "{agent_log}"
    );
    expect_gap(&h, "vesperd was not watching the VM", 300);
}

/// The time no probe was attached is reported as loss: a `vesper` record and the status.
fn expect_gap(h: &Harness, reason: &str, at_least_ms: u64) {
    let gaps: Vec<_> = h
        .events_json("host1", "vesper")
        .into_iter()
        .filter(|r| r["event"] == "unobserved")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let detail = gaps[0]["detail"].as_str().unwrap();
    assert!(detail.contains(reason), "{detail}");
    let st = h.vm_status("host1");
    assert_eq!(st["gaps"], 1, "{st}");
    let ms = st["unobserved_ms"].as_u64().unwrap();
    assert!(
        ms >= at_least_ms && ms < 60_000,
        "unobserved for {ms} ms: {detail}"
    );
    assert!(detail.contains(&format!("for {ms} ms")), "{detail}");
    eprintln!("gap reported: {detail}");
}

#[test]
fn a_killed_agent_that_comes_back_gets_its_probes_again() {
    if !need_root("a_killed_agent_that_comes_back") {
        return;
    }
    let mut h = Harness::single(&["signal"]);
    h.wait_loaded("host1", "signal");
    // SIGKILL: no goodbye; the kernel frees its programs with its file descriptors.
    let mut agent = h.agents.pop().unwrap();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    drop(agent);
    let sock = h.agent_socket("host1");
    let _ = std::fs::remove_file(&sock);
    // With its socket gone the VM is elsewhere, as if it had left this host.
    wait_until(
        Duration::from_secs(10),
        || h.vm_status("host1")["state"] == "elsewhere",
        "vesperd to see the channel gone",
    );
    let log = std::fs::File::create(h.dir.path().join("agent-host1-2.log")).unwrap();
    let child = std::process::Command::new(bin("vesper-agent"))
        .arg("--channel")
        .arg(format!("unix-listen:{}", sock.display()))
        .stderr(log)
        .spawn()
        .unwrap();
    h.agents.push(Proc {
        child,
        name: "agent host1 (2)".into(),
    });
    wait_until(
        Duration::from_secs(15),
        || h.vm_status("host1")["connects"].as_u64() == Some(2),
        "vesperd to reconnect",
    );
    h.wait_loaded("host1", "signal");
    let (_victim, pid) = victim("victim");
    send_signals("afteragent", pid, SIGTERM, 1);
    wait_until(
        Duration::from_secs(5),
        || {
            h.events_json("host1", "signal")
                .iter()
                .any(|r| r["sender_comm"] == "afteragent" && r["target_pid"] == pid)
        },
        "records from the new agent",
    );
    // A new socket is a VM that arrived: the gap runs from its channel's creation.
    expect_gap(&h, "the VM arrived on this node", 1);
}

/// A tmpfs of `kib` KiB mounted on a fresh directory; unmounted on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount(kib: u32) -> TinyFs {
        let d = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        TinyFs(d)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn with_the_host_disk_full_the_store_serves_from_memory_and_says_so_once() {
    if !need_root("host disk full") {
        return;
    }
    let _alone = one_at_a_time();
    let disk = TinyFs::mount(64);
    let h = Harness::start_in_state_dir(
        &[VmSpec {
            name: "host1",
            agent: true,
            probes: &["signal"],
        }],
        "",
        "",
        Some(disk.0.path()),
    );
    h.wait_loaded("host1", "signal");
    // ~2000 records of ~300 bytes of JSON: ten times what the disk holds.
    let (_victim, pid) = victim("victim");
    let lost_before = h.lost("host1");
    // In four steps of 500, each within the probe's 64 KiB ring: the disk is what fills.
    let (mut got, mut lost) = (0, 0);
    for step in 1..=4 {
        send_signals("filler", pid, SIGUSR1, 500);
        (got, lost) = h.wait_accounted("filler", pid, SIGUSR1, 500 * step, lost_before);
    }
    assert_eq!(got + lost, 2000, "every record received or counted lost");
    let st = h.vm_status("host1");
    let err = st["store_file_error"].as_str().unwrap_or("");
    assert!(err.contains("No space left on device"), "{st}");
    assert_eq!(
        h.vesperd_log()
            .matches("cannot write to the disk; records and verdicts are kept in memory only")
            .count(),
        1,
        "said once"
    );
    // The newest records are still served, from memory.
    send_signals("afterfull", pid, SIGUSR1, 1);
    wait_record(
        "a record after the disk filled up",
        || h.events_json("host1", "signal"),
        |r| r["sender_comm"] == "afterfull" && r["target_pid"] == pid,
    );
    drop(h);
}

#[test]
fn loading_many_probes_reports_each_and_one_mistake_does_not_stop_the_rest() {
    if !need_root("loading_many_probes") {
        return;
    }
    let h = Harness::single(&[]);
    h.wait_ready("host1");
    let o = h.vesper(&["load", "host1", "oom", "nosuchprobe", "exit"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("[1/3] oom loaded in host1 (attached in "),
        "{out}"
    );
    assert!(lines[1].starts_with("[3/3] exit loaded in host1"), "{out}");
    assert!(err.contains("[2/3] nosuchprobe: "), "{err}");
    assert!(
        err.contains("2 of 3 probes loaded into host1; not loaded: nosuchprobe"),
        "{err}"
    );
    let names: Vec<String> = h.vm_status("host1")["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["oom", "exit"]);
}

#[test]
fn sighup_starts_added_vms_stops_removed_ones_and_keeps_a_broken_file_out() {
    if !need_root("sighup_reload") {
        return;
    }
    let spec = |name| VmSpec {
        name,
        agent: true,
        probes: &["signal"],
    };
    let h = Harness::start_with(&[spec("host1"), spec("host2")], "", "");
    h.wait_loaded("host1", "signal");
    h.wait_loaded("host2", "signal");
    let cfg_path = h.dir.path().join("vesper.toml");
    let full = std::fs::read_to_string(&cfg_path).unwrap();
    let (without_host2, host2) = full.split_at(full.rfind("[[vm]]").unwrap());
    assert!(host2.contains("\"host2\""), "{full}");
    let vesperd = h.vesperd.as_ref().unwrap().child.id() as i32;
    let hup = || {
        // SAFETY: kill(2) with a pid we started; no memory is involved.
        assert_eq!(unsafe { libc::kill(vesperd, libc::SIGHUP) }, 0);
    };
    let names = || -> Vec<String> {
        h.vesper_ok(&["status", "--json"])
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };

    std::fs::write(&cfg_path, without_host2).unwrap();
    hup();
    wait_until(
        Duration::from_secs(5),
        || names() == ["host1"],
        "host2 to be stopped",
    );
    assert_eq!(h.vm_status("host1")["state"], "ready");

    // A broken file changes nothing, and says why.
    std::fs::write(
        &cfg_path,
        format!("{without_host2}[[vm]]\nname = \"bad vm\"\n"),
    )
    .unwrap();
    hup();
    wait_until(
        Duration::from_secs(5),
        || h.vesperd_log().contains("configuration not reloaded"),
        "the refusal in the log",
    );
    let log = h.vesperd_log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap();
    assert!(line.contains(&cfg_path.display().to_string()), "{line}");
    assert_eq!(names(), ["host1"]);

    // host2 back, and a setting of host1 changed: host2 starts, host1 keeps running.
    let changed = without_host2.replace(
        "name = \"host1\"\n",
        "name = \"host1\"\ndeadtime_ms = 4000\n",
    );
    std::fs::write(&cfg_path, format!("{changed}{host2}")).unwrap();
    hup();
    wait_until(
        Duration::from_secs(10),
        || names() == ["host1", "host2"],
        "host2 to be back",
    );
    h.wait_loaded("host2", "signal");
    let log = h.vesperd_log();
    assert!(
        log.lines()
            .any(|l| l.contains("settings changed") && l.contains("host1")),
        "{log}"
    );
    assert_eq!(
        h.vm_status("host1")["connects"],
        1,
        "host1's session was not restarted"
    );
    let gap = h.vm_status("host2");
    assert_eq!(
        gap["gaps"], 1,
        "the time host2 was not watched is reported: {gap}"
    );
}
