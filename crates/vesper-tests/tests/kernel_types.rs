//! The probe language on the real kernel. The kernel's own types: the agent sends this
//! machine's BTF, vesperd compiles member reads against it, the verifier accepts them and
//! the values are the kernel's (checked against what /proc says of the same processes).
//! Maps: the ports of bpftrace's tools pair a syscall's entry with its exit, and report
//! the result the kernel returned.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::Value;

const FAMILY: &str = "tracepoint:signal:signal_generate / comm == \"stopper\" / {
    $parent = curtask->real_parent;
    emit {
        target = args.pid,
        sender = curtask->tgid,
        sender_comm = curtask->comm,
        parent = $parent->tgid,
        parent_comm = $parent->comm,
        grandparent = curtask->real_parent->real_parent->tgid,
    }
}
";

fn status(h: &Harness) -> Value {
    serde_json::from_str(h.vesper_ok(&["status", "--json"]).lines().next().unwrap()).unwrap()
}

fn ppid_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the ")" that ends the comm: state, then ppid.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn members_read_through_curtask_are_the_kernels_values() {
    if !need_root("members_read_through_curtask") {
        return;
    }
    let h = Harness::single(&[]);
    let file = h.dir.path().join("family.vsp");
    std::fs::write(&file, FAMILY).unwrap();
    // The load waits for the kernel's types if they are still on their way.
    let out = h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    assert!(out.starts_with("family loaded in host1"), "{out}");
    let k = status(&h)["kernel_types"].clone();
    eprintln!(
        "this kernel: {} types from {} bytes of BTF, {} symbols, fetched in {} ms",
        k["types"], k["btf_bytes"], k["symbols"], k["fetched_ms"]
    );
    assert_eq!(k["state"], "known", "{k}");
    assert!(k["types"].as_u64().unwrap() > 20_000, "{k}");

    let (_v, victim_pid) = victim("victim");
    let stopper = send_signals("stopper", victim_pid, 10, 1);
    let r = common::wait_record(
        "the stopper's signal",
        || h.events_json("host1", "family"),
        |r| r["target"] == victim_pid,
    );
    let me = std::process::id();
    assert_eq!(r["sender"], stopper, "{r}");
    assert_eq!(r["sender_comm"], "stopper", "{r}");
    // The stopper is this test's child: its parent is us, and ours is our parent.
    assert_eq!(r["parent"], me, "{r}");
    // real_parent is the thread that forked: this test's thread, named after the test.
    let my_comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(r["parent_comm"], my_comm.trim(), "{r}");
    assert_eq!(r["grandparent"], ppid_of(me), "{r}");
}

#[test]
fn kstack_is_named_with_the_kernels_own_symbols() {
    if !need_root("kstack_is_named") {
        return;
    }
    let h = Harness::single(&[]);
    let file = h.dir.path().join("stacks.vsp");
    std::fs::write(
        &file,
        "tracepoint:signal:signal_generate / comm == \"stopper\" / { emit { target = args.pid, stack = kstack(8) } }\n",
    )
    .unwrap();
    // A probe with kstack waits for the kernel's symbols, like one with kernel types.
    h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    assert_eq!(status(&h)["kernel_types"]["state"], "known");
    let (_v, victim_pid) = victim("victim");
    send_signals("stopper", victim_pid, 10, 1);
    let r = common::wait_record(
        "the stopper's signal with its stack",
        || h.events_json("host1", "stacks"),
        |r| r["target"] == victim_pid,
    );
    let stack = r["stack"].as_str().unwrap();
    eprintln!("kstack: {stack}");
    let frames: Vec<&str> = stack.split(" <- ").collect();
    assert!(frames.len() >= 3, "{stack}");
    // The tracepoint fires inside the kernel's signal code, entered from kill(2): named, not
    // hex, when the host has the kernel's symbols.
    assert!(!frames[0].starts_with("0x"), "{stack}");
    assert!(frames.iter().any(|f| f.contains("signal")), "{stack}");
    assert!(frames.iter().any(|f| f.contains("kill")), "{stack}");
}

#[test]
fn opensnoop_reads_the_path_from_the_process_memory() {
    if !need_root("opensnoop_reads_the_path") {
        return;
    }
    let h = Harness::single(&[]);
    let tool =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools/opensnoop.vsp");
    h.vesper_ok(&["load", "host1", tool.to_str().unwrap()]);
    let path = format!("/tmp/vesper-opensnoop-{}-no-such-file", std::process::id());
    let _ = std::fs::File::open(&path);
    let r = common::wait_record(
        "the openat of the test's path",
        || h.events_json("host1", "opensnoop"),
        |r| r["path"] == path.as_str(),
    );
    assert_eq!(r["pid"], std::process::id(), "{r}");
    // O_RDONLY | O_CLOEXEC, as std opens files.
    assert_eq!(r["flags"].as_u64().unwrap() & 0o2000000, 0o2000000, "{r}");
    // The exit's result, paired through the maps: no such file.
    assert_eq!((r["fd"].as_i64(), r["errno"].as_i64()), (Some(-1), Some(2)), "{r}");
    // And a file that opens: a descriptor, no errno.
    let exists = h.dir.path().join("opensnoop-exists");
    std::fs::write(&exists, b"x").unwrap();
    let exists = exists.to_str().unwrap().to_string();
    let f = std::fs::File::open(&exists).unwrap();
    let r = common::wait_record(
        "the openat of a file that exists",
        || h.events_json("host1", "opensnoop"),
        |r| r["path"] == exists.as_str(),
    );
    use std::os::fd::AsRawFd;
    assert_eq!((r["fd"].as_i64(), r["errno"].as_i64()), (Some(i64::from(f.as_raw_fd())), Some(0)), "{r}");
}

#[test]
fn killsnoop_pairs_each_kill_with_its_result() {
    if !need_root("killsnoop_pairs_each_kill") {
        return;
    }
    let h = Harness::single(&[]);
    let tool =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools/killsnoop.vsp");
    h.vesper_ok(&["load", "host1", tool.to_str().unwrap()]);
    let (_v, victim_pid) = victim("victim");
    let sender = send_signals("killer", victim_pid, 10, 1);
    let r = common::wait_record(
        "the kill of the victim",
        || h.events_json("host1", "killsnoop"),
        |r| r["pid"] == sender,
    );
    assert_eq!(r["comm"], "killer", "{r}");
    assert_eq!(r["tpid"], victim_pid, "{r}");
    assert_eq!((r["sig"].as_i64(), r["sig_name"].as_str()), (Some(10), Some("SIGUSR1")), "{r}");
    assert_eq!(r["result"], 0, "{r}");
    // A kill of a process that does not exist: its result is -ESRCH.
    let out = std::process::Command::new(bin("vesper-testkit"))
        .args(["signal", "--comm", "killer2", "--to", "999999999", "--sig", "15", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the kill of no process succeeded");
    let r = common::wait_record(
        "the failed kill",
        || h.events_json("host1", "killsnoop"),
        |r| r["comm"] == "killer2",
    );
    assert_eq!((r["tpid"].as_i64(), r["sig_name"].as_str()), (Some(999_999_999), Some("SIGTERM")), "{r}");
    assert_eq!(r["result"], -3, "{r}");
}
