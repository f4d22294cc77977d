//! What must hold on every guest kernel of the lab (Debian 11's 5.10, Debian 12's 6.1 and
//! its backports' 6.12): `cargo xtask test` runs these on a guest of each, the default
//! guest with the rest of the lab suite and the others alone (`kernels_` in their names).
//! Nothing here names a kernel: what differs (struct layouts, symbols) comes from the
//! guest's own BTF, and the values are checked against what the guest itself says.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Lab, lab};

fn tool(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/tools/{name}.vsp"))
        .to_str()
        .unwrap()
        .to_string()
}

impl Lab {
    fn kernel_release(&self) -> String {
        self.status()["agent"]["kernel_release"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    fn maps(&self, probe: &str) -> Vec<Value> {
        let out = self.vesper_ok(&["maps", &self.name, probe, "--json"]);
        serde_json::from_str::<Value>(out.trim())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
    /// A `sleep` in the guest, in the background; its pid.
    fn sleeper(&self) -> u64 {
        self.exec_ok("sleep 60 >/dev/null 2>&1 & echo $!")
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn kernels_0_the_guests_types_and_symbols_reach_the_host() {
    let Some(lab) = lab("kernels_0_types") else {
        return;
    };
    let k = lab.kernel_types();
    // The figures for the evaluation: what each kernel's BTF weighs and how long it takes.
    eprintln!(
        "guest kernel {}: {} types from {} bytes of BTF, {} symbols from {} bytes, fetched in {} ms{}",
        lab.kernel_release(),
        k["types"],
        k["btf_bytes"],
        k["symbols"],
        k["symbol_bytes"],
        k["fetched_ms"],
        if k["fetched_ms"].is_null() {
            " (from the cache)"
        } else {
            ""
        }
    );
    assert!(k["types"].as_u64().unwrap() > 20_000, "{k}");
    assert!(k["symbols"].as_u64().unwrap() > 10_000, "{k}");
}

#[test]
fn kernels_1_every_builtin_probe_loads_and_signal_reports() {
    let Some(lab) = lab("kernels_1_builtins") else {
        return;
    };
    eprintln!("guest kernel {}", lab.kernel_release());
    for name in vesper_probe::builtin::names() {
        lab.load(name);
    }
    let st = lab.status();
    let loaded: Vec<&str> = st["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phase"] == "loaded")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in vesper_probe::builtin::names() {
        assert!(loaded.contains(&name), "{name} is not loaded: {st}");
    }
    let pid = lab.sleeper();
    lab.exec_ok(&format!("/bin/kill -USR2 {pid}"));
    let r = lab.wait_record("signal", "SIGUSR2 to the sleeper", |r| {
        r["target_pid"] == pid
    });
    assert_eq!(
        (r["sig_name"].as_str(), r["sender_comm"].as_str()),
        (Some("SIGUSR2"), Some("kill")),
        "{r}"
    );
    assert_eq!(r["target_comm"], "sleep", "{r}");
}

#[test]
fn kernels_2_killsnoop_reports_each_kill_with_its_result() {
    let Some(lab) = lab("kernels_2_killsnoop") else {
        return;
    };
    lab.load(&tool("killsnoop"));
    let pid = lab.sleeper();
    lab.exec_ok(&format!("/bin/kill -USR1 {pid}"));
    let r = lab.wait_record("killsnoop", "the kill of the sleeper", |r| r["tpid"] == pid);
    assert_eq!(
        (r["comm"].as_str(), r["sig_name"].as_str()),
        (Some("kill"), Some("SIGUSR1")),
        "{r}"
    );
    assert_eq!(r["result"], 0, "{r}");
    // No such process: kill(2) returns -ESRCH, and the port says so.
    let _ = lab.exec("/bin/kill -TERM 999999", Duration::from_secs(30));
    let r = lab.wait_record("killsnoop", "the failed kill", |r| r["tpid"] == 999_999);
    assert_eq!(
        (r["sig_name"].as_str(), r["result"].as_i64()),
        (Some("SIGTERM"), Some(-3)),
        "{r}"
    );
}

#[test]
fn kernels_3_opensnoop_reports_the_path_and_the_result() {
    let Some(lab) = lab("kernels_3_opensnoop") else {
        return;
    };
    lab.load(&tool("opensnoop"));
    let _ = lab.exec("cat /vesper-no-such-file", Duration::from_secs(30));
    let r = lab.wait_record("opensnoop", "the open of a missing file", |r| {
        r["path"] == "/vesper-no-such-file"
    });
    assert_eq!(
        (r["comm"].as_str(), r["fd"].as_i64(), r["errno"].as_i64()),
        (Some("cat"), Some(-1), Some(2)),
        "{r}"
    );
    lab.exec_ok("cat /www/index.html");
    let r = lab.wait_record("opensnoop", "the open of the httpd page", |r| {
        r["path"] == "/www/index.html" && r["comm"] == "cat"
    });
    assert!(r["fd"].as_i64().unwrap() >= 0, "{r}");
    assert_eq!(r["errno"], 0, "{r}");
}

#[test]
fn kernels_4_runqlat_keeps_a_histogram_in_the_kernel() {
    let Some(lab) = lab("kernels_4_runqlat") else {
        return;
    };
    lab.load(&tool("runqlat"));
    // Twenty sleeps: twenty wakeups, each of which waits on the run queue.
    lab.exec_ok("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 0.01; done");
    let maps = lab.maps("runqlat");
    let usecs = maps
        .iter()
        .find(|m| m["name"] == "@usecs")
        .unwrap_or_else(|| panic!("{maps:?}"));
    assert_eq!(usecs["kind"], "hist");
    let buckets = usecs["entries"][0]["buckets"].as_array().unwrap();
    let waits: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    eprintln!(
        "runqlat: {waits} run-queue waits in {} buckets",
        buckets.len()
    );
    assert!(waits >= 20, "{usecs}");
    // No wait is negative: the entries pair each wakeup with the switch that ran it.
    assert!(
        buckets
            .iter()
            .all(|b| b["low"].as_i64().is_some_and(|l| l >= 0)),
        "{usecs}"
    );
    let text = lab.vesper_ok(&["unload", &lab.name, "runqlat"]);
    assert!(text.contains("@usecs:\n"), "{text}");
}

#[test]
fn kernels_5_members_through_the_guests_own_layout() {
    let Some(lab) = lab("kernels_5_members") else {
        return;
    };
    // task_struct differs between these kernels; the offsets come from each one's BTF.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("family.vsp");
    std::fs::write(
        &script,
        "tracepoint:signal:signal_generate / comm == \"kill\" / {
    $parent = curtask->real_parent;
    emit { target = args.pid, me = curtask->tgid, parent = $parent->tgid, parent_comm = $parent->comm, stack = kstack }
}
",
    )
    .unwrap();
    lab.load(script.to_str().unwrap());
    let pid = lab.sleeper();
    let shell: u64 = lab
        .exec_ok(&format!("/bin/kill -USR1 {pid}; echo $$"))
        .trim()
        .parse()
        .unwrap();
    let r = lab.wait_record("family", "the kill's own task", |r| r["target"] == pid);
    assert_eq!(r["parent"], shell, "{r}");
    assert_eq!(r["parent_comm"], "sh", "{r}");
    let stack = r["stack"].as_str().unwrap();
    assert!(
        stack.contains("kill"),
        "the guest's symbols name the stack: {stack}"
    );
}

#[test]
fn kernels_6_oomkill_reads_struct_oom_control() {
    let Some(lab) = lab("kernels_6_oomkill") else {
        return;
    };
    lab.load(&tool("oomkill"));
    let _ = lab.exec("memhog 1024", Duration::from_secs(120));
    let r = lab.wait_record("oomkill", "oomkill.vsp's victim", |p| {
        p["victim_comm"] == "memhog"
    });
    let pages = r["pages"].as_u64().unwrap();
    assert!((16_384..=131_072).contains(&pages), "{r}");
    assert!(r["victim_pid"].as_u64().unwrap() > 1, "{r}");
}

#[test]
fn kernels_7_a_kretprobe_pairs_with_its_kprobe_through_a_map() {
    let Some(lab) = lab("kernels_7_kretprobe_pairing") else {
        return;
    };
    // The time each open takes inside the kernel, and what it returned: the entry's
    // timestamp kept by thread until the return.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("opentime.vsp");
    std::fs::write(
        &script,
        "kprobe:do_sys_openat2 { @start[tid] = nsecs; }
kretprobe:do_sys_openat2 / @start[tid] / {
    emit { comm = comm, took_ns = nsecs - @start[tid], ret = retval }
    delete(@start[tid]);
}
",
    )
    .unwrap();
    lab.load(script.to_str().unwrap());
    let _ = lab.exec(
        "cat /vesper-kretprobe-no-such-file",
        Duration::from_secs(30),
    );
    let r = lab.wait_record("opentime", "cat's failed open, timed", |r| {
        r["comm"] == "cat" && r["ret"] == -2
    });
    let took = r["took_ns"].as_i64().unwrap();
    // Under TCG an open takes microseconds to milliseconds; never nothing, never seconds.
    assert!((1..5_000_000_000).contains(&took), "{r}");
    lab.vesper_ok(&["unload", &lab.name, "opentime"]);
}
