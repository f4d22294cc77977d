//! The cluster section's live migrations: the time without probes, the guest's boot id,
//! and a steady signal stream's records accounted for on both nodes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vesper_tests::cluster::VM_RESOURCE;

use super::{Lab, TOOL, VM, must, now_ms, poll};
use crate::util::stats;

/// Every sequence number a node's probe handed out is either received or counted lost;
/// (probe, received, kernel_drops, agent_drops, transport_lost, unaccounted) per probe.
fn accounting(lab: &Lab, node: &str) -> Vec<Value> {
    let st = lab.c.vm_status(&lab.vesper, node, VM).unwrap_or_default();
    st["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let g = |k: &str| p[k].as_i64().unwrap_or(0);
                    let seen = g("received") + g("replayed") + g("malformed") + g("transport_lost");
                    json!({
                        "node": node, "probe": p["name"], "received": g("received"),
                        "kernel_drops": g("kernel_drops"), "agent_drops": g("agent_drops"),
                        "transport_lost": g("transport_lost"), "next_seq": g("next_seq"),
                        "unaccounted": g("next_seq") - seen,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The stream's records (SIGCONT to `sleep`) a node stored since `since_ms`.
fn stream_records(lab: &Lab, node: &str, since_ms: f64) -> usize {
    lab.vesper_json(node, &["events", VM, "--probe", "signal", "--json"])
        .iter()
        .filter(|r| {
            r["sig"] == 18
                && r["target_comm"] == "sleep"
                && r["host_ms"].as_f64().is_some_and(|t| t >= since_ms)
        })
        .count()
}

fn host_record<'a>(events: &'a [Value], kind: &str, since_ms: f64) -> Option<&'a Value> {
    events
        .iter()
        .rfind(|r| r["event"] == kind && r["host_ms"].as_f64().is_some_and(|t| t >= since_ms))
}

/// The number after `marker` in `text`.
fn number_after(text: &str, marker: &str) -> Option<f64> {
    text.split(marker).nth(1)?.split(' ').next()?.parse().ok()
}

/// A SIGCONT to a sleeping process per iteration (≤ ~1000/s: a short sleep every 20),
/// until /tmp/stream.stop or a bound; the count sent lands in /tmp/stream.done.
const STREAM: &str = "rm -f /tmp/stream.stop /tmp/stream.done; sh -c 'sleep 600 & p=$!; i=0; \
while [ ! -e /tmp/stream.stop ] && [ $i -lt 200000 ]; do kill -CONT $p; i=$((i+1)); \
[ $((i % 20)) -eq 0 ] && usleep 20000; done; kill $p; echo $i >/tmp/stream.done' \
</dev/null >/dev/null 2>&1 &";

pub(super) fn migration(lab: &Lab, n: usize) -> Value {
    let mut trials = Vec::new();
    for i in 0..n {
        lab.cleanup();
        let src = lab.settle(true);
        let dst = lab.running().into_iter().find(|x| *x != src).unwrap();
        let boot_id = lab.guest("cat /proc/sys/kernel/random/boot_id");
        let since = now_ms();
        lab.guest(STREAM);
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        lab.on(
            Some(&src),
            &format!("crm_resource --move --resource {VM_RESOURCE} --node {dst}"),
        );
        must(
            "the VM watched on the destination",
            poll(Duration::from_secs(120), Duration::from_millis(100), || {
                lab.watched().as_deref() == Some(dst.as_str())
            }),
        );
        let move_ms = t.elapsed().as_secs_f64() * 1000.0;
        lab.on(
            None,
            &format!("crm_resource --clear --resource {VM_RESOURCE}"),
        );
        std::thread::sleep(Duration::from_secs(2));
        lab.guest("touch /tmp/stream.stop");
        let mut sent = None;
        must(
            "the stream to end",
            poll(Duration::from_secs(60), Duration::from_millis(300), || {
                sent = lab
                    .c
                    .guest(VM, "cat /tmp/stream.done", TOOL)
                    .ok()
                    .and_then(|(o, rc)| (rc == 0).then(|| o.trim().parse::<u64>().ok()).flatten());
                sent.is_some()
            }),
        );
        let same_boot = lab.guest("cat /proc/sys/kernel/random/boot_id") == boot_id;
        must(
            "the source's vesperd to see the VM gone",
            poll(Duration::from_secs(20), Duration::from_millis(200), || {
                lab.c
                    .vm_status(&lab.vesper, &src, VM)
                    .is_some_and(|st| st["state"] == "elsewhere")
            }),
        );
        // Records still in flight to the destination's store.
        std::thread::sleep(Duration::from_secs(2));
        let host_events =
            |node: &str| lab.vesper_json(node, &["events", VM, "--probe", "vesper", "--json"]);
        let (src_ev, dst_ev) = (host_events(&src), host_events(&dst));
        let departed = host_record(&src_ev, "departed", since);
        let arrived = host_record(&dst_ev, "unobserved", since);
        let last_frame = departed.and_then(|d| {
            Some(d["host_ms"].as_f64()? - number_after(d["detail"].as_str()?, "last heard ")?)
        });
        let gap_ms = last_frame
            .zip(arrived.and_then(|a| a["host_ms"].as_f64()))
            .map(|(l, a)| a - l);
        let reported_ms =
            arrived.and_then(|a| number_after(a["detail"].as_str()?, "attached for "));
        let (on_src, on_dst) = (
            stream_records(lab, &src, since),
            stream_records(lab, &dst, since),
        );
        let mut probes = accounting(lab, &src);
        probes.extend(accounting(lab, &dst));
        let lost: i64 = probes
            .iter()
            .map(|p| p["transport_lost"].as_i64().unwrap_or(0))
            .sum();
        let unaccounted: i64 = probes
            .iter()
            .map(|p| p["unaccounted"].as_i64().unwrap_or(0))
            .sum();
        let drops: i64 = probes
            .iter()
            .map(|p| {
                p["kernel_drops"].as_i64().unwrap_or(0) + p["agent_drops"].as_i64().unwrap_or(0)
            })
            .sum();
        let sent = sent.unwrap();
        eprintln!(
            "  migration {}/{n}: {src} → {dst} watched after {move_ms:.0} ms; no probes for {gap_ms:?} ms ({dst} says {reported_ms:?}); same boot {same_boot}; stream {sent} sent, {on_src} on {src}, {on_dst} on {dst}; transport_lost {lost}, unaccounted seqs {unaccounted}, drops {drops}",
            i + 1
        );
        trials.push(json!({
            "src": src, "dst": dst, "move_ms": move_ms, "gap_ms": gap_ms, "reported_gap_ms": reported_ms,
            "same_boot": same_boot, "stream_sent": sent, "stream_on_src": on_src, "stream_on_dst": on_dst,
            "stream_unseen": sent as i64 - (on_src + on_dst) as i64,
            "transport_lost": lost, "unaccounted": unaccounted, "drops": drops, "probes": probes,
        }));
    }
    let col = |k: &str| -> Vec<f64> { trials.iter().filter_map(|t| t[k].as_f64()).collect() };
    json!({
        "move_ms": stats(&col("move_ms")).json(),
        "gap_ms": stats(&col("gap_ms")).json(),
        "reported_gap_ms": stats(&col("reported_gap_ms")).json(),
        "same_boot": trials.iter().filter(|t| t["same_boot"] == true).count(),
        "trials": trials,
    })
}
