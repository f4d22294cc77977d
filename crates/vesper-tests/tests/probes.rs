//! Every built-in probe, and scripts and objects from files, loaded into the real kernel
//! (its verifier accepts them) and, where this machine can trigger the event, triggered
//! and decoded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn wait_record(
    h: &Harness,
    vm: &str,
    probe: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    common::wait_record(what, || h.events_json(vm, probe), f)
}

#[test]
fn every_builtin_probe_passes_the_verifier_and_attaches() {
    if !need_root("every_builtin_probe") {
        return;
    }
    let h = Harness::single(&[]);
    for name in ["signal", "oom", "exit", "fork", "reclaim", "hung"] {
        let out = h.vesper_ok(&["load", "host1", name]);
        assert!(out.starts_with(&format!("{name} loaded in host1")), "{out}");
    }
    let st = h.vm_status("host1");
    assert_eq!(st["probes"].as_array().unwrap().len(), 6);
}

#[test]
fn exit_reports_the_code_and_fork_the_parent_and_child() {
    if !need_root("exit_and_fork") {
        return;
    }
    let h = Harness::single(&["exit", "fork"]);
    h.wait_loaded("host1", "exit");
    h.wait_loaded("host1", "fork");
    let st = Command::new(bin("vesper-testkit"))
        .args(["exit", "--comm", "quitter", "7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    let r = wait_record(&h, "host1", "exit", "exit_group record", |r| {
        r["comm"] == "quitter" && r.get("exit_code").is_some()
    });
    assert_eq!(r["exit_code"], 7);
    let pid = r["pid"].clone();
    wait_record(&h, "host1", "exit", "sched_process_exit record", |r| {
        r["comm"] == "quitter" && r.get("exit_code").is_none() && r["pid"] == pid
    });

    let out = Command::new(bin("vesper-testkit"))
        .args(["fork", "--comm", "forker"])
        .output()
        .unwrap();
    let child: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let r = wait_record(&h, "host1", "fork", "fork record", |r| {
        r["child_pid"] == child
    });
    assert_eq!(r["parent_comm"], "forker");
    assert!(r["parent_pid"].as_u64().unwrap() > 0);
}

#[test]
fn oom_reports_the_victim_and_its_memory() {
    if !need_root("oom_reports_the_victim") {
        return;
    }
    let h = Harness::single(&["oom"]);
    h.wait_loaded("host1", "oom");
    let cg = MemCgroup::new(&format!("vesper-oom-{}", std::process::id()), 32);
    cg.run_memhog("memhog");
    let r = wait_record(&h, "host1", "oom", "oom record", |r| {
        r["victim_comm"] == "memhog"
    });
    let anon = r["anon_rss_kb"].as_u64().unwrap();
    assert!(
        (16 * 1024..=40 * 1024).contains(&anon),
        "anon_rss_kb {anon} should be near the 32 MiB limit"
    );
    assert!(r["total_vm_kb"].as_u64().unwrap() >= anon);
    assert!(r["victim_pid"].as_u64().unwrap() > 0);
}

const DESIGN_EXAMPLE: &str = "tracepoint:signal:signal_generate /args.sig == 15 && comm == \"stopper\"/ {\n    emit { sig = args.sig, target = args.pid, by = comm }\n}\n";

#[test]
fn the_design_example_loads_from_a_file_and_filters_in_the_kernel() {
    if !need_root("the_design_example") {
        return;
    }
    let h = Harness::single(&[]);
    let file = h.dir.path().join("stoppers.vsp");
    std::fs::write(&file, DESIGN_EXAMPLE).unwrap();
    let out = h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    assert!(out.starts_with("stoppers loaded in host1"), "{out}");
    let (_v, pid) = victim("victim");
    send_signals("stopper", pid, 10, 1); // SIGUSR1: filtered out by the predicate
    send_signals("other", pid, 15, 1); // wrong sender: filtered out
    send_signals("stopper", pid, 15, 1);
    let r = wait_record(&h, "host1", "stoppers", "the SIGTERM from stopper", |r| {
        r["target"] == pid
    });
    assert_eq!(
        (r["sig"].as_i64(), r["by"].as_str()),
        (Some(15), Some("stopper"))
    );
    std::thread::sleep(Duration::from_millis(200));
    let all: Vec<Value> = h
        .events_json("host1", "stoppers")
        .into_iter()
        .filter(|r| r["target"] == pid)
        .collect();
    assert_eq!(all.len(), 1, "the predicate let through: {all:?}");
}

#[test]
fn an_object_built_offline_loads_with_its_embedded_manifest() {
    if !need_root("an_object_built_offline") {
        return;
    }
    let h = Harness::single(&[]);
    let src = h.dir.path().join("offline.vsp");
    std::fs::write(&src, DESIGN_EXAMPLE).unwrap();
    let obj = h.dir.path().join("offline.o");
    let built = Command::new(bin("vesper"))
        .args(["build", src.to_str().unwrap(), "-o", obj.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    h.vesper_ok(&["load", "host1", obj.to_str().unwrap()]);
    let (_v, pid) = victim("victim");
    send_signals("stopper", pid, 15, 1);
    let r = wait_record(
        &h,
        "host1",
        "offline",
        "record from the prebuilt object",
        |r| r["target"] == pid,
    );
    assert_eq!(r["by"], "stopper");
}

#[test]
fn a_script_with_mistakes_is_refused_with_file_line_and_hint() {
    if !need_root("a_script_with_mistakes") {
        return;
    }
    let h = Harness::single(&[]);
    let file = h.dir.path().join("typo.vsp");
    std::fs::write(
        &file,
        "tracepoint:signal:signal_generate {\n    emit { s = args.sgi }\n}\n",
    )
    .unwrap();
    let o = h.vesper(&["load", "host1", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no field `sgi`"), "{err}");
    assert!(err.contains(&format!("{}:2:16", file.display())), "{err}");
    assert!(err.contains("did you mean `args.sig`?"), "{err}");
    assert!(
        h.vm_status("host1")["probes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bpftool_loads_every_builtin_object() {
    if !need_root("bpftool_loads_every_builtin_object") {
        return;
    }
    let Some(bpftool) = need_tool("bpftool") else {
        return;
    };
    let probes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vesper-probe/probes");
    let dir = tempfile::tempdir().unwrap();
    if !Path::new("/sys/fs/bpf").join(".").exists() || !is_bpffs("/sys/fs/bpf") {
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .unwrap();
        assert!(st.success(), "cannot mount bpffs");
    }
    for name in ["signal", "oom", "exit", "fork", "reclaim", "hung"] {
        let obj = dir.path().join(format!("{name}.o"));
        let built = Command::new(bin("vesper"))
            .arg("build")
            .arg(probes.join(format!("{name}.vsp")))
            .arg("-o")
            .arg(&obj)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let pin = format!("/sys/fs/bpf/vesper-test-{}-{name}", std::process::id());
        let out = Command::new(&bpftool)
            .args(["prog", "loadall"])
            .arg(&obj)
            .arg(&pin)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&pin);
        assert!(
            out.status.success(),
            "bpftool rejected {name}.o: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            f.next();
            f.next() == Some(path) && f.next() == Some("bpf")
        })
}

#[test]
fn kernel_info_from_a_vm_builds_an_object_for_that_kernel() {
    if !need_root("kernel_info_from_a_vm") {
        return;
    }
    let h = Harness::single(&[]);
    // The control socket is up before the agent's handshake is done.
    h.wait_ready("host1");
    let src = h.dir.path().join("ki.vsp");
    std::fs::write(&src, DESIGN_EXAMPLE).unwrap();
    let json = h.vesper_ok(&["kernel-info", "host1", "--for", src.to_str().unwrap()]);
    let k: Value = serde_json::from_str(&json).unwrap();
    assert!(
        k["formats"]["signal:signal_generate"]["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["name"] == "sig")),
        "{json}"
    );
    let ki = h.dir.path().join("k.json");
    std::fs::write(&ki, &json).unwrap();
    let obj = h.dir.path().join("ki.o");
    let built = Command::new(bin("vesper"))
        .args([
            "build",
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
            "--kernel-info",
            ki.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    h.vesper_ok(&["load", "host1", obj.to_str().unwrap()]);
    let o = h.vesper(&["kernel-info", "nope", "signal:signal_generate"]);
    assert_eq!(o.status.code(), Some(1));
}
