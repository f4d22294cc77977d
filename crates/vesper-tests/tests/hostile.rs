//! An attacker's program in place of a guest's agent (`vesper-testkit hostile-agent`),
//! beside a well-behaved VM: vesperd stays up, closes or counts the offender with one log
//! line per event, and the good VM keeps streaming; its latency is measured and printed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;

const SIGTERM: i32 = 15;

/// A harness with `good` (a real agent, `signal`) and `evil` (the hostile agent in `mode`).
fn beside_hostile(mode: &str) -> (Harness, Proc) {
    beside_hostile_with(mode, "")
}

/// [`beside_hostile`] with `[daemon]` lines `daemon_extra`.
fn beside_hostile_with(mode: &str, daemon_extra: &str) -> (Harness, Proc) {
    let h = Harness::start_with(
        &[
            VmSpec {
                name: "good",
                agent: true,
                probes: &["signal"],
            },
            VmSpec {
                name: "evil",
                agent: false,
                probes: &["signal"],
            },
        ],
        daemon_extra,
        "deadtime_ms = 2000",
    );
    let evil = Proc {
        child: std::process::Command::new(bin("vesper-testkit"))
            .args([
                "hostile-agent",
                h.agent_socket("evil").to_str().unwrap(),
                mode,
            ])
            .spawn()
            .unwrap(),
        name: format!("hostile-agent {mode}"),
    };
    h.wait_loaded("good", "signal");
    (h, evil)
}

/// A SIGTERM in the good VM reaches `vesper events`; returns how long it took.
fn good_vm_latency(h: &Harness, sender: &str) -> Duration {
    let (_victim, pid) = victim("victim");
    let (_f, rx) = h.follow("good");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    send_signals(sender, pid, SIGTERM, 1);
    loop {
        let (at, r) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the good VM's record arrives");
        if r["sender_comm"] == sender && r["target_pid"] == pid {
            return at - t;
        }
    }
}

fn closes_with(mode: &str, reason: &str) {
    if !need_root(mode) {
        return;
    }
    let (h, _evil) = beside_hostile(mode);
    wait_until(
        Duration::from_secs(10),
        || h.vesperd_log().contains("bad frame from the agent"),
        "the hostile session to be closed",
    );
    let log = h.vesperd_log();
    let line = log.lines().find(|l| l.contains("bad frame")).unwrap();
    assert!(
        line.contains("evil") && line.contains(reason),
        "{mode}: {line}"
    );
    assert_eq!(
        h.vm_status("evil")["probes"].as_array().unwrap().len(),
        0,
        "a closed session keeps no probes"
    );
    let latency = good_vm_latency(&h, "goodsender");
    eprintln!("{mode}: the good VM's signal arrived in {latency:?}");
    assert_eq!(h.vm_status("good")["state"], "ready");
}

#[test]
fn garbage_closes_the_session() {
    closes_with("garbage", "bad magic");
}

#[test]
fn a_bad_checksum_closes_the_session() {
    closes_with("bad-crc", "CRC mismatch");
}

#[test]
fn a_frame_claiming_4_gib_closes_the_session_before_any_allocation() {
    closes_with("oversize", "exceeds the limit");
}

#[test]
fn a_batch_that_lies_about_its_length_closes_the_session() {
    closes_with("lying-length", "payload truncated");
}

#[test]
fn half_a_frame_then_silence_makes_the_agent_unresponsive_not_vesperd() {
    if !need_root("truncated") {
        return;
    }
    let (h, _evil) = beside_hostile("truncated");
    wait_until(
        Duration::from_secs(10),
        || {
            h.events_json("evil", "vesper")
                .iter()
                .any(|r| r["event"] == "agent_unresponsive")
        },
        "the stalled agent to be declared unresponsive",
    );
    let latency = good_vm_latency(&h, "goodsender");
    eprintln!("truncated: the good VM's signal arrived in {latency:?}");
}

#[test]
fn a_flood_for_an_unknown_probe_is_counted_and_bounded() {
    if !need_root("flood") {
        return;
    }
    let (h, _evil) = beside_hostile("flood");
    wait_until(
        Duration::from_secs(10),
        || {
            h.vm_status("evil")["unknown_probe_records"]
                .as_u64()
                .unwrap_or(0)
                > 100_000
        },
        "the flood to be counted",
    );
    let during = good_vm_latency(&h, "goodsender");
    let vesperd = h.vesperd.as_ref().unwrap().child.id();
    let before = rss_kib(vesperd);
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(vesperd);
    let counted = h.vm_status("evil")["unknown_probe_records"]
        .as_u64()
        .unwrap();
    eprintln!(
        "flood: {counted} records for an unknown probe counted; the good VM's signal arrived in {during:?}; vesperd RSS {before} → {after} KiB"
    );
    assert!(
        after < 64 * 1024,
        "a flood of records nobody stores does not grow vesperd: {after} KiB"
    );
    assert_eq!(h.vm_status("good")["state"], "ready");
    let log = h.vesperd_log();
    assert_eq!(
        log.matches("records for a probe that is not loaded")
            .count(),
        1,
        "one log line for the whole flood"
    );
}

#[test]
fn replayed_sequence_numbers_are_counted_and_dropped() {
    if !need_root("replay") {
        return;
    }
    let (h, _evil) = beside_hostile("replay");
    let mut probe = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(10),
        || {
            probe = h.vm_status("evil")["probes"][0].clone();
            probe["replayed"].as_u64() == Some(10)
        },
        "the second batch to be counted as replayed",
    );
    let first = probe["received"].as_u64().unwrap() + probe["malformed"].as_u64().unwrap();
    assert_eq!(first, 10, "the first batch was taken once: {probe}");
    let latency = good_vm_latency(&h, "goodsender");
    eprintln!("replay: the good VM's signal arrived in {latency:?}");
}

#[test]
fn a_valid_flood_is_rate_limited_kept_within_quotas_and_the_good_vm_keeps_its_latency() {
    if !need_root("loaded-flood") {
        return;
    }
    const LIMIT: u64 = 20_000;
    const MEM: u64 = 4 << 20;
    const FILE: u64 = 1 << 20;
    let (h, _evil) = beside_hostile_with(
        "loaded-flood",
        &format!("records_per_sec = {LIMIT}\nstore_max_bytes = {MEM}\nfile_max_bytes = {FILE}"),
    );
    let received = || {
        h.vm_status("evil")["probes"][0]["received"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(10),
        || received() > 2 * LIMIT,
        "the flood to be stored",
    );
    let (r0, t0) = (received(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (r1, secs) = (received(), t0.elapsed().as_secs_f64());
    let rate = (r1 - r0) as f64 / secs;
    let mut latencies: Vec<Duration> = (0..5).map(|_| good_vm_latency(&h, "goodsender")).collect();
    latencies.sort();
    let evil = h.vm_status("evil");
    let vesperd = h.vesperd.as_ref().unwrap().child.id();
    let rss = rss_kib(vesperd);
    eprintln!(
        "loaded-flood: stored {rate:.0} records/s against a limit of {LIMIT}; reading paused {} ms in {} pauses; the good VM's signal arrived in {:?} (median) {:?} (max); vesperd RSS {rss} KiB; store {} bytes in memory",
        evil["rate_limited_ms"],
        evil["rate_limited_pauses"],
        latencies[2],
        latencies[4],
        evil["stored_bytes"]
    );
    assert!(
        rate <= LIMIT as f64 * 1.1,
        "the flood is held to its limit: {rate:.0}/s"
    );
    assert!(
        rate >= LIMIT as f64 * 0.5,
        "and still served at about its limit: {rate:.0}/s"
    );
    assert!(evil["rate_limited_ms"].as_u64().unwrap() > 1000, "{evil}");
    assert!(
        latencies[4] < Duration::from_millis(500),
        "the good VM keeps its latency: {latencies:?}"
    );
    assert!(evil["stored_bytes"].as_u64().unwrap() <= MEM, "{evil}");
    assert!(evil["evicted_records"].as_u64().unwrap() > 0, "{evil}");
    let records = h.dir.path().join("state/records");
    for f in ["evil.jsonl", "evil.jsonl.1"] {
        let len = std::fs::metadata(records.join(f)).unwrap().len();
        assert!(len <= FILE, "{f}: {len} bytes, quota {FILE}");
    }
    assert!(rss < 64 * 1024, "vesperd RSS {rss} KiB");
    assert_eq!(h.vm_status("good")["state"], "ready");
    assert_eq!(
        h.vesperd_log().matches("over its rate limit").count(),
        1,
        "one log line for the whole flood"
    );
}
