//! The probe language on the real kernel. The kernel's own types: the agent sends this
//! machine's BTF, vesperd compiles member reads against it, the verifier accepts them and
//! the values are the kernel's (checked against what /proc says of the same processes).
//! Maps: the ports of bpftrace's tools pair a syscall's entry with its exit, and report
//! the result the kernel returned.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

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
    assert_eq!(
        (r["fd"].as_i64(), r["errno"].as_i64()),
        (Some(-1), Some(2)),
        "{r}"
    );
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
    assert_eq!(
        (r["fd"].as_i64(), r["errno"].as_i64()),
        (Some(i64::from(f.as_raw_fd())), Some(0)),
        "{r}"
    );
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
    assert_eq!(
        (r["sig"].as_i64(), r["sig_name"].as_str()),
        (Some(10), Some("SIGUSR1")),
        "{r}"
    );
    assert_eq!(r["result"], 0, "{r}");
    // A kill of a process that does not exist: its result is -ESRCH.
    let out = std::process::Command::new(bin("vesper-testkit"))
        .args([
            "signal",
            "--comm",
            "killer2",
            "--to",
            "999999999",
            "--sig",
            "15",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the kill of no process succeeded");
    let r = common::wait_record(
        "the failed kill",
        || h.events_json("host1", "killsnoop"),
        |r| r["comm"] == "killer2",
    );
    assert_eq!(
        (r["tpid"].as_i64(), r["sig_name"].as_str()),
        (Some(999_999_999), Some("SIGTERM")),
        "{r}"
    );
    assert_eq!(r["result"], -3, "{r}");
}

/// The calling thread's id, for a predicate that sees only this test's system calls.
fn my_tid() -> u64 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn aggregations_are_kept_in_the_kernel_and_read_by_vesper_maps() {
    if !need_root("aggregations_are_kept_in_the_kernel") {
        return;
    }
    let h = Harness::single(&[]);
    let tid = my_tid();
    let dir = h.dir.path().to_str().unwrap().to_string();
    let present = h.dir.path().join("present");
    std::fs::write(&present, b"x").unwrap();
    // Only this thread's opens of files in the test's directory: the entry marks them, the
    // exit aggregates their results.
    let script = format!(
        "tracepoint:syscalls:sys_enter_openat / tid == {tid} && starts_with(str(args.filename, 128), \"{dir}/\") / {{
    @mine[tid] = 1;
}}
tracepoint:syscalls:sys_exit_openat / @mine[tid] / {{
    @opens[comm] = count();
    @calls = sum(1);
    @low = min(args.ret);
    @high = max(args.ret);
    @mean = avg(args.ret);
    @fds = hist(args.ret);
    @lin = lhist(args.ret, 0, 40, 10);
    delete(@mine[tid]);
}}
"
    );
    let file = h.dir.path().join("opens.vsp");
    std::fs::write(&file, script).unwrap();
    h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    let missing = h.dir.path().join("no-such-file");
    for _ in 0..10 {
        assert!(std::fs::File::open(&missing).is_err());
    }
    let kept: Vec<std::fs::File> = (0..5)
        .map(|_| std::fs::File::open(&present).unwrap())
        .collect();
    use std::os::fd::AsRawFd;
    let fds: Vec<i64> = kept.iter().map(|f| i64::from(f.as_raw_fd())).collect();
    let maps: Value =
        serde_json::from_str(h.vesper_ok(&["maps", "host1", "opens", "--json"]).trim()).unwrap();
    let map = |name: &str| {
        maps.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {maps}"))
            .clone()
    };
    let one = |name: &str| map(name)["entries"][0].clone();
    let my_comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(one("@opens")["key"][0], my_comm.trim(), "{maps}");
    assert_eq!(one("@opens")["value"], 15, "{maps}");
    assert_eq!(one("@calls")["value"], 15, "{maps}");
    assert_eq!(one("@low")["value"], -2, "{maps}");
    assert_eq!(one("@high")["value"], *fds.iter().max().unwrap(), "{maps}");
    let mean = (fds.iter().sum::<i64>() - 20) / 15;
    assert_eq!(
        (
            one("@mean")["value"].as_i64(),
            one("@mean")["count"].as_u64()
        ),
        (Some(mean), Some(15)),
        "{maps}"
    );
    // hist: the ten ENOENTs below zero, each descriptor in its power-of-two bucket.
    let buckets = one("@fds")["buckets"].as_array().unwrap().clone();
    assert_eq!(
        (buckets[0]["high"].as_i64(), buckets[0]["count"].as_u64()),
        (Some(0), Some(10)),
        "{maps}"
    );
    let counted: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 15, "{maps}");
    for fd in &fds {
        let b = buckets
            .iter()
            .find(|b| {
                b["low"].as_i64().is_some_and(|l| l <= *fd)
                    && b["high"].as_i64().is_none_or(|hi| *fd < hi)
            })
            .unwrap_or_else(|| panic!("fd {fd} in no bucket: {maps}"));
        let lo = b["low"].as_i64().unwrap();
        assert!(lo.count_ones() == 1 || lo == 0, "{b}");
    }
    let lin = one("@lin")["buckets"].as_array().unwrap().clone();
    assert_eq!(
        (lin[0]["high"].as_i64(), lin[0]["count"].as_u64()),
        (Some(0), Some(10)),
        "{maps}"
    );
    // The text is bpftrace's: bars for the histogram.
    let text = h.vesper_ok(&["maps", "host1", "opens"]);
    assert!(text.contains("@fds:\n(..., 0)"), "{text}");
    assert!(
        text.contains(&format!("@opens[{}]: 15", my_comm.trim())),
        "{text}"
    );
    // Unloading prints the last values.
    let out = h.vesper_ok(&["unload", "host1", "opens"]);
    assert!(out.contains("@calls: 15"), "{out}");
    drop(kept);
}

#[test]
fn an_interval_probe_prints_and_clears_a_map_on_the_host() {
    if !need_root("an_interval_probe_prints_and_clears") {
        return;
    }
    let h = Harness::single(&[]);
    let tid = my_tid();
    let dir = h.dir.path().to_str().unwrap().to_string();
    let script = format!(
        "tracepoint:syscalls:sys_enter_openat / tid == {tid} && starts_with(str(args.filename, 128), \"{dir}/\") / {{
    @opens = count();
}}
interval:ms:200 {{
    print(@opens);
    clear(@opens);
}}
"
    );
    let file = h.dir.path().join("every.vsp");
    std::fs::write(&file, script).unwrap();
    h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    let missing = h.dir.path().join("no-such-file");
    for _ in 0..5 {
        assert!(std::fs::File::open(&missing).is_err());
    }
    let printed = common::wait_record(
        "the interval's print of @opens",
        || h.events_json("host1", "every"),
        |r| r["map"] == "@opens" && r["entries"][0]["value"] == 5,
    );
    // Cleared as it was read: the next turns find it empty (nothing of ours since).
    let seq = printed["seq"].as_u64().unwrap();
    let empty = common::wait_record(
        "an empty @opens after the clear",
        || h.events_json("host1", "every"),
        |r| r["map"] == "@opens" && r["seq"].as_u64() > Some(seq),
    );
    assert_eq!(empty["entries"], serde_json::json!([]), "{empty}");
    let text = h.vesper_ok(&["events", "host1", "--probe", "every"]);
    assert!(text.contains("@opens: 5"), "{text}");
}

#[test]
fn ntop_shows_a_sockets_addresses_and_byte_arrays_their_bytes() {
    if !need_root("ntop_shows_a_sockets_addresses") {
        return;
    }
    let h = Harness::single(&[]);
    let file = h.dir.path().join("tcpstate.vsp");
    std::fs::write(
        &file,
        "tracepoint:sock:inet_sock_set_state / args.protocol == 6 && args.newstate == 1 / {
    if (args.family == 2) {
        emit { saddr = ntop(args.saddr), daddr = ntop(2, args.daddr), raw = args.daddr, dport = args.dport }
    } else {
        emit { saddr = ntop(args.saddr_v6), daddr = ntop(10, args.daddr_v6), dport = args.dport }
    }
}
",
    )
    .unwrap();
    h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    // Two connections that reach ESTABLISHED (state 1): over IPv4 and IPv6 loopback.
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p4 = v4.local_addr().unwrap().port();
    let _c4 = std::net::TcpStream::connect(("127.0.0.1", p4)).unwrap();
    let r = common::wait_record(
        "the IPv4 connection",
        || h.events_json("host1", "tcpstate"),
        |r| r["dport"] == p4 && r["daddr"] == "127.0.0.1",
    );
    assert_eq!(r["saddr"], "127.0.0.1", "{r}");
    assert_eq!(r["raw"], "[127,0,0,1]", "{r}");
    if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
        let p6 = v6.local_addr().unwrap().port();
        let _c6 = std::net::TcpStream::connect(("::1", p6)).unwrap();
        let r = common::wait_record(
            "the IPv6 connection",
            || h.events_json("host1", "tcpstate"),
            |r| r["dport"] == p6,
        );
        assert_eq!(
            (r["saddr"].as_str(), r["daddr"].as_str()),
            (Some("::1"), Some("::1")),
            "{r}"
        );
    } else {
        eprintln!("this machine has no IPv6 loopback: the IPv6 half is not checked");
    }
}

#[test]
fn a_full_map_refuses_new_keys_and_counts_them_as_drops() {
    if !need_root("a_full_map_refuses_new_keys") {
        return;
    }
    let h = Harness::single(&[]);
    let tid = my_tid();
    let file = h.dir.path().join("fill.vsp");
    // A new key on every call: 4,096 fit, the rest are refused by the kernel.
    std::fs::write(
        &file,
        format!("tracepoint:syscalls:sys_enter_getppid / tid == {tid} / {{ @seen[nsecs] = 1; }}\n"),
    )
    .unwrap();
    h.vesper_ok(&["load", "host1", file.to_str().unwrap()]);
    let calls = 5_000u64;
    for _ in 0..calls {
        std::hint::black_box(std::os::unix::process::parent_id());
    }
    // The probe sends no records: its drops come with the agent's heartbeat.
    let mut drops = 0;
    common::wait_until(
        Duration::from_secs(10),
        || {
            drops = h.vm_status("host1")["probes"][0]["kernel_drops"]
                .as_u64()
                .unwrap_or(0);
            // Heartbeats may report it in steps: the last one after the calls.
            drops >= calls - 4096
        },
        "the full map's refusals counted",
    );
    let maps: Value =
        serde_json::from_str(h.vesper_ok(&["maps", "host1", "fill", "--json"]).trim()).unwrap();
    let held = maps[0]["total"].as_u64().unwrap();
    eprintln!("{calls} new keys: {held} held, {drops} refused and counted");
    assert_eq!(held, 4096, "{maps}");
    assert_eq!(held + drops, calls);
}
