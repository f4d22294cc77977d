//! A stalled disk under vesperd's state directory: a FUSE file system (bindfs over a
//! directory) whose server is stopped, so every write to it waits, as on a hung NFS
//! server or a dying disk. Beside it, another VM's records and a Pacemaker action go on
//! as before; what was queued reaches the disk when it is back.
//!
//! One test function: the cluster and its CIB are global to the host.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, NODE};
use common::{
    Harness, VmSpec, monotonic_ns, mortal_victim, need_root, need_tool, send_signals, victim,
    wait_until,
};
use serde_json::Value;

const RSC: &str = "web1";
/// The VM whose service fails (it backs `RSC`), and the one that only streams records.
const FAULTY: &str = "guest1";
const BESIDE: &str = "guest2";
/// Records timed per phase.
const SAMPLES: usize = 30;
/// Failovers timed per phase (each waits for Pacemaker to recover the resource).
const FAULTS: usize = 5;

/// A directory whose writes can be made to hang.
struct StallableDisk {
    _back: tempfile::TempDir,
    mnt: PathBuf,
    server: Child,
}

impl StallableDisk {
    fn mount() -> Option<StallableDisk> {
        let bindfs = need_tool("bindfs")?;
        let back = tempfile::tempdir().unwrap();
        let mnt = back.path().join("mnt");
        let data = back.path().join("data");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        // -f: in the foreground, so the server is our child and can be stopped.
        let server = Command::new(bindfs)
            .arg("-f")
            .arg(&data)
            .arg(&mnt)
            .spawn()
            .expect("start bindfs");
        let disk = StallableDisk {
            _back: back,
            mnt,
            server,
        };
        let want = disk.mnt.to_string_lossy().into_owned();
        wait_until(
            Duration::from_secs(10),
            || {
                std::fs::read_to_string("/proc/mounts")
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.split(' ').nth(1) == Some(want.as_str()) && l.contains("fuse"))
            },
            "the FUSE file system to be mounted",
        );
        Some(disk)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.server.id() as i32, sig) };
    }

    fn stall(&self) {
        self.signal(libc::SIGSTOP);
    }

    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// A write to the file system does not finish within a second.
    fn stalled(&self) -> bool {
        let probe = self.mnt.join("probe");
        let st = Command::new("timeout")
            .arg("1")
            .arg("sh")
            .arg("-c")
            .arg(format!("echo x >> '{}'", probe.display()))
            .status()
            .unwrap();
        st.code() == Some(124)
    }
}

impl Drop for StallableDisk {
    fn drop(&mut self) {
        self.resume();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Milliseconds from a signal to its record reaching a follower of `BESIDE`, for
/// `SAMPLES` signals (the record's `ts_ns` is the host's monotonic clock: native agents).
fn record_latencies(rx: &mpsc::Receiver<(Instant, Value)>, to: u32) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..SAMPLES {
        let sender = send_signals("ticker", to, libc::SIGUSR1, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, rec) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no record of {BESIDE}'s signal within 5 s"));
            if rec["sender_pid"] == sender && rec["probe"] == "signal" {
                let now = monotonic_ns() - at.elapsed().as_nanos() as u64;
                let ts = rec["ts_ns"].as_u64().unwrap();
                out.push(now.saturating_sub(ts) as f64 / 1e6);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out.sort_by(f64::total_cmp);
    out
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn why(h: &Harness) -> Vec<Value> {
    h.vesper_ok(&["why", RSC, "--json", "--last", "20"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// For the `n`th acted-on verdict, once done: ms from the verdict until Pacemaker took the
/// fail. That is what a stalled disk could delay; the action's whole time also holds
/// its wait for Pacemaker 2.1.5's second count (up to 0.5 s, whatever the disk).
fn action_ms(h: &Harness, n: usize) -> Option<u64> {
    let acted: Vec<Value> = why(h)
        .into_iter()
        .filter(|e| e["debounced"] == false && e["pending"] == false)
        .collect();
    let e = acted.get(n)?;
    let a = e["actions"]
        .as_array()?
        .iter()
        .find(|a| a["kind"] == "pacemaker" && a["ok"] == true)?;
    let detail = a["detail"].as_str().unwrap_or("");
    // "... accepted 12.3 ms after the verdict" (over the controller's IPC), else the tool's.
    let accepted = detail
        .split(" accepted ")
        .nth(1)
        .and_then(|r| r.split(" ms after the verdict").next())
        .and_then(|ms| ms.parse::<f64>().ok());
    accepted.map(|ms| ms.round() as u64).or(a["ms"].as_u64())
}

/// Kills a watched httpd in `FAULTY`; returns the Pacemaker action's time.
fn fault(h: &Harness, cluster: &Cluster, n: usize) -> u64 {
    let mark = cluster.mark(RSC);
    let (_victim, pid) = mortal_victim("httpd");
    send_signals("pkill", pid, libc::SIGTERM, 1);
    cluster.expect_one_failure(RSC, &mark, "httpd killed", || action_ms(h, n).is_some());
    action_ms(h, n).unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn a_stalled_disk_holds_up_no_session_and_no_failover() {
    if !need_root("a_stalled_disk_holds_up_no_session_and_no_failover") {
        return;
    }
    let Some(disk) = StallableDisk::mount() else {
        return;
    };
    let Some(cluster) = Cluster::start(&[RSC]) else {
        return;
    };
    let state = disk.mnt.join("state");
    let faulty = VmSpec {
        name: FAULTY,
        agent: true,
        probes: &["signal"],
    };
    let beside = VmSpec {
        name: BESIDE,
        agent: true,
        probes: &["signal"],
    };
    let h = Harness::start_each(
        &[
            (
                &faulty,
                &format!("resource = \"{RSC}\"\nwatch = [\"httpd\"]\ndebounce_ms = 500"),
            ),
            (&beside, ""),
        ],
        &format!("node = \"{NODE}\""),
        Some(&state),
    );
    h.wait_loaded(FAULTY, "signal");
    h.wait_loaded(BESIDE, "signal");
    let (_target, to) = victim("tick");
    let (_follower, rx) = h.follow(BESIDE);
    std::thread::sleep(Duration::from_millis(300));

    // Normal: the disk answers.
    let normal = record_latencies(&rx, to);
    let normal_action = median((0..FAULTS).map(|n| fault(&h, &cluster, n)).collect());
    let file = state.join(format!("records/{BESIDE}.jsonl"));
    wait_until(
        Duration::from_secs(5),
        || lines(&file) > 0,
        "records on disk",
    );

    // Stalled: every write to the state directory hangs.
    disk.stall();
    assert!(disk.stalled(), "the disk is stalled (a write hangs)");
    let on_disk_before = std::fs::metadata(disk._back.path().join("data/state/records"))
        .map(|_| {
            lines(
                &disk
                    ._back
                    .path()
                    .join(format!("data/state/records/{BESIDE}.jsonl")),
            )
        })
        .unwrap();
    let stalled = record_latencies(&rx, to);
    let stalled_action = median(
        (FAULTS..2 * FAULTS)
            .map(|n| fault(&h, &cluster, n))
            .collect(),
    );
    let status = h.vesper_ok(&["status"]);
    assert!(
        status.contains("disk: ") && status.contains("bytes queued"),
        "status shows the disk behind: {status}"
    );
    assert!(
        disk.stalled(),
        "still stalled when the second failover was done"
    );

    eprintln!("                         p50 ms   p99 ms   max ms");
    for (what, l) in [("normal", &normal), ("disk stalled", &stalled)] {
        eprintln!(
            "{BESIDE} record, {what:<13} {:>7.2} {:>8.2} {:>8.2}",
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 1.0)
        );
    }
    eprintln!(
        "pacemaker fail taken (median of {FAULTS}), normal {normal_action} ms, disk stalled {stalled_action} ms"
    );
    // Within 10 % of normal, with a floor for the noise of a 2-core machine (2 ms on a
    // record, 20 ms on a fail): a daemon that waited on the stalled disk would never be done.
    assert!(
        pct(&stalled, 0.5) <= pct(&normal, 0.5) * 1.1 + 2.0,
        "a record beside the stalled disk is late: {stalled:?} vs {normal:?}"
    );
    assert!(
        stalled_action as f64 <= normal_action as f64 * 1.1 + 20.0,
        "the failover waited for the disk: {stalled_action} ms vs {normal_action} ms"
    );

    // Back: what was queued is written, nothing was dropped.
    disk.resume();
    let back = disk
        ._back
        .path()
        .join(format!("data/state/records/{BESIDE}.jsonl"));
    wait_until(
        Duration::from_secs(10),
        || lines(&back) >= on_disk_before + SAMPLES,
        "the records kept during the stall to reach the disk",
    );
    let why_file = disk._back.path().join("data/state/why.jsonl");
    wait_until(
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&why_file)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"pending\":false") && !l.contains("\"debounced\":true"))
                .count()
                >= 2 * FAULTS
        },
        "every verdict in the why-log file",
    );
    let st = h.vm_status(BESIDE);
    assert_eq!(st["store_file_dropped"], 0, "{st}");
    assert!(st["store_file_error"].is_null(), "{st}");
}
