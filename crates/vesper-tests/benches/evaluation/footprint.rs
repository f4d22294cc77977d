//! Footprint: the agent's resident memory and CPU idle and at 10 000 records/s, the size of
//! the static agent the guest runs, and vesperd's resident memory per VM.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Setup;
use crate::blast;
use crate::common::{Harness, VmSpec};
use crate::util::{TICKS_PER_S, cpu_ticks, rss_kib, rss_split_kib, status_kib, table};

const DEFAULT_PROBES: &[&str] = &["signal", "oom"];

/// CPU of `pid` over `f`, as a percentage of one core; and the highest RSS seen (KiB).
fn cpu_and_peak_rss(pid: u32, f: impl FnOnce()) -> (f64, u64) {
    let t = Instant::now();
    let c0 = cpu_ticks(pid);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    let cpu = (cpu_ticks(pid) - c0) as f64 / TICKS_PER_S / t.elapsed().as_secs_f64() * 100.0;
    (cpu, peak)
}

fn vesperd_rss(vms: usize) -> u64 {
    let names: Vec<&'static str> = (0..vms)
        .map(|i| &*Box::leak(format!("vm{i}").into_boxed_str()))
        .collect();
    let specs: Vec<VmSpec> = names
        .iter()
        .map(|n| VmSpec {
            name: n,
            agent: true,
            probes: DEFAULT_PROBES,
        })
        .collect();
    let h = Harness::start(&specs);
    for n in &names {
        for p in DEFAULT_PROBES {
            h.wait_loaded(n, p);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    rss_kib(h.vesperd.as_ref().unwrap().child.id())
}

pub fn run(setup: &Setup) -> Value {
    let idle_s = if setup.quick { 2 } else { 10 };
    let busy_records: u64 = if setup.quick { 30_000 } else { 100_000 };
    let h = Harness::single(DEFAULT_PROBES);
    for p in DEFAULT_PROBES {
        h.wait_loaded("host1", p);
    }
    let agent = h.agents[0].child.id();
    let vesperd = h.vesperd.as_ref().unwrap().child.id();
    std::thread::sleep(Duration::from_secs(1));
    let (idle_cpu, idle_rss) =
        cpu_and_peak_rss(agent, || std::thread::sleep(Duration::from_secs(idle_s)));
    let (idle_maps, idle_own) =
        rss_split_kib(&std::fs::read_to_string(format!("/proc/{agent}/smaps")).unwrap_or_default());
    blast::load(&h, "host1", "blaster");
    let vd0 = cpu_ticks(vesperd);
    let t = Instant::now();
    let (busy_cpu, busy_rss) = cpu_and_peak_rss(agent, || {
        blast::run_blaster(busy_records, 10_000);
    });
    let vesperd_cpu =
        (cpu_ticks(vesperd) - vd0) as f64 / TICKS_PER_S / t.elapsed().as_secs_f64() * 100.0;
    let vesperd_rss_1 = rss_kib(vesperd);
    drop(h);

    let n = if setup.quick { 4 } else { 9 };
    let one = vesperd_rss(1);
    let many = vesperd_rss(n);
    let per_vm = (many as f64 - one as f64) / (n - 1) as f64;

    let static_agent = std::env::var_os("VESPER_STATIC_AGENT")
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let guest_rss = setup.lab.as_ref().and_then(|lab| {
        let _h = lab.vesperd(DEFAULT_PROBES, "", "");
        for p in DEFAULT_PROBES {
            _h.wait_loaded("lab", p);
        }
        // Idle: the loads' transient memory is given back, nothing is being sent.
        std::thread::sleep(Duration::from_secs(2));
        let s = lab.exec("cat /proc/$(pidof vesper-agent)/status");
        let smaps = lab.exec("cat /proc/$(pidof vesper-agent)/smaps");
        Some((
            status_kib(&s, "VmRSS:")?,
            rss_split_kib(&smaps),
            status_kib(&s, "VmHWM:").unwrap_or(0),
            smaps_by_kind(&smaps),
        ))
    });

    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let mut rows = vec![
        vec!["agent (host build), idle, signal + oom loaded: RSS MiB / CPU %".into(), format!("{} / {idle_cpu:.2}", mib(idle_rss))],
        vec!["  of which: the two probes' ring buffers mapped in (64 KiB each by default, data mapped twice) / the agent's own".into(), format!("{} / {}", mib(idle_maps), mib(idle_own))],
        vec!["agent (host build) at 10 000 records/s: peak RSS MiB / CPU %".into(), format!("{} / {busy_cpu:.1}", mib(busy_rss))],
        vec!["vesperd at 10 000 records/s, one VM: RSS MiB / CPU %".into(), format!("{} / {vesperd_cpu:.1}", mib(vesperd_rss_1))],
        vec![format!("vesperd RSS, 1 VM → {n} VMs (MiB)"), format!("{} → {}", mib(one), mib(many))],
        vec!["vesperd RSS per added VM (MiB)".into(), format!("{:.2}", per_vm / 1024.0)],
    ];
    if let Some(b) = static_agent {
        rows.push(vec![
            "static agent binary (MiB)".into(),
            format!("{:.2}", b as f64 / 1048576.0),
        ]);
    }
    if let Some((r, (maps, own), hwm, kinds)) = &guest_rss {
        rows.push(vec![
            "agent in the lab guest (static, memory-locked), idle, signal + oom loaded: RSS MiB (ring buffers / own; target ≤ 4)"
                .into(),
            format!("{} ({} / {})", mib(*r), mib(*maps), mib(*own)),
        ]);
        let by_kind: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        rows.push(vec![
            "  smaps Rss by mapping, KiB".into(),
            by_kind.join(", "),
        ]);
        rows.push(vec![
            "  peak RSS (VmHWM, at start: aya's loader parses the kernel's BTF once), MiB".into(),
            mib(*hwm),
        ]);
    }
    table("footprint", &["what", "measured"], &rows);
    json!({
        "agent_idle_rss_kib": idle_rss, "agent_idle_ringbuf_rss_kib": idle_maps, "agent_idle_own_rss_kib": idle_own, "agent_idle_cpu_pct": idle_cpu, "idle_seconds": idle_s,
        "agent_busy_rss_kib": busy_rss, "agent_busy_cpu_pct": busy_cpu, "busy_records_per_s": 10_000,
        "vesperd_busy_cpu_pct": vesperd_cpu, "vesperd_rss_kib_1vm": vesperd_rss_1,
        "vesperd_rss_kib": {"vms_1": one, "vms_n": many, "n": n}, "vesperd_rss_kib_per_vm": per_vm,
        "static_agent_bytes": static_agent,
        "guest_agent_rss_kib": guest_rss.as_ref().map(|g| g.0), "guest_agent_ringbuf_rss_kib": guest_rss.as_ref().map(|g| g.1.0), "guest_agent_own_rss_kib": guest_rss.as_ref().map(|g| g.1.1),
        "guest_agent_hwm_kib": guest_rss.as_ref().map(|g| g.2), "guest_agent_smaps_kib": guest_rss.as_ref().map(|g| g.3.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()),
    })
}

/// Rss of an smaps text summed by what the mappings are: the heap, the agent's binary, ring
/// buffers, the stack, the rest (anonymous mappings, vdso).
fn smaps_by_kind(smaps: &str) -> Vec<(&'static str, u64)> {
    let mut kinds = vec![
        ("heap", 0),
        ("binary", 0),
        ("rings", 0),
        ("stack", 0),
        ("other", 0),
    ];
    let mut kind = 4;
    for l in smaps.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            kind = if l.ends_with("[heap]") {
                0
            } else if l.ends_with("vesper-agent") {
                1
            } else if l.ends_with("anon_inode:bpf-map") {
                2
            } else if l.ends_with("[stack]") {
                3
            } else {
                4
            };
        } else if let Some(kib) = status_kib(l, "Rss:") {
            kinds[kind].1 += kib;
        }
    }
    kinds
}
