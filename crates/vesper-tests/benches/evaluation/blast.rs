//! The high-rate event source the throughput, overhead and footprint measurements share:
//! `vesper-testkit blaster` calling getppid(2) in a loop, probed on
//! `syscalls:sys_enter_getppid` by Vesper and by bpftrace with the same filter.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Harness, bin, wait_until};

pub const PROBE: &str = "blast";

/// The Vesper probe; `comm` is the task it keeps (the blaster's name, or one no task has).
pub fn vesper_probe(comm: &str) -> String {
    format!("tracepoint:syscalls:sys_enter_getppid /comm == \"{comm}\"/ {{ emit {{ p = pid }} }}\n")
}

/// The same probe for bpftrace: one printf line per event.
pub fn bpftrace_probe(comm: &str) -> String {
    format!(
        "tracepoint:syscalls:sys_enter_getppid /comm == \"{comm}\"/ {{ printf(\"%d\\n\", pid); }}"
    )
}

/// Loads the probe into `vm` through vesperd and waits until it is attached.
pub fn load(h: &Harness, vm: &str, comm: &str) {
    let file = h.dir.path().join(format!("{PROBE}.vsp"));
    std::fs::write(&file, vesper_probe(comm)).unwrap();
    h.vesper_ok(&["load", vm, file.to_str().unwrap()]);
    h.wait_loaded(vm, PROBE);
}

pub fn unload(h: &Harness, vm: &str) {
    h.vesper_ok(&["unload", vm, PROBE]);
}

/// Runs the blaster on the host; returns (calls, ns per call).
pub fn run_blaster(count: u64, rate: u64) -> (u64, f64) {
    let out = Command::new(bin("vesper-testkit"))
        .args(["blaster", "--comm", "blaster", "--count"])
        .arg(count.to_string())
        .args(["--rate", &rate.to_string()])
        .output()
        .expect("run blaster");
    assert!(out.status.success(), "blaster failed");
    parse_blaster(&String::from_utf8_lossy(&out.stdout))
}

/// "calls elapsed_ns" → (calls, ns per call).
pub fn parse_blaster(out: &str) -> (u64, f64) {
    let mut it = out
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let calls = it.next().unwrap_or(0);
    let ns = it.next().unwrap_or(0);
    (calls, ns as f64 / calls.max(1) as f64)
}

/// Where `produced` records went, as vesperd accounts for them.
pub struct Accounting {
    pub produced: u64,
    pub received: u64,
    pub kernel_drops: u64,
    pub agent_drops: u64,
    pub transport_lost: u64,
    pub malformed: u64,
    /// Seconds from the start of the burst to the last record stored.
    pub seconds: f64,
}

impl Accounting {
    pub fn unaccounted(&self) -> i64 {
        self.produced as i64
            - (self.received
                + self.kernel_drops
                + self.agent_drops
                + self.transport_lost
                + self.malformed) as i64
    }
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }
    pub fn json(&self) -> Value {
        json!({
            "produced": self.produced, "received": self.received,
            "kernel_drops": self.kernel_drops, "agent_drops": self.agent_drops,
            "transport_lost": self.transport_lost, "malformed": self.malformed,
            "unaccounted": self.unaccounted(), "seconds": self.seconds,
            "records_per_s": self.rate(),
        })
    }
}

/// The blast probe's counters in vesperd (0 until it shows up).
fn counters(h: &Harness, vm: &str) -> [u64; 5] {
    let st = h.vm_status(vm);
    let p = st["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PROBE).cloned())
        .unwrap_or(Value::Null);
    [
        "received",
        "kernel_drops",
        "agent_drops",
        "transport_lost",
        "malformed",
    ]
    .map(|k| p[k].as_u64().unwrap_or(0))
}

/// Once the source is done: waits until vesperd has accounted for every one of `produced`
/// records beyond `before` (or nothing changed for 3 s); times the last change from `start`.
pub fn account(
    h: &Harness,
    vm: &str,
    produced: u64,
    before: [u64; 5],
    start: Instant,
) -> Accounting {
    let mut last = before;
    let mut last_change = start;
    loop {
        let now = counters(h, vm);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        let d: Vec<u64> = (0..5).map(|i| last[i] - before[i]).collect();
        if d.iter().sum::<u64>() >= produced || last_change.elapsed() > Duration::from_secs(3) {
            return Accounting {
                produced,
                received: d[0],
                kernel_drops: d[1],
                agent_drops: d[2],
                transport_lost: d[3],
                malformed: d[4],
                seconds: (last_change - start).as_secs_f64(),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn before(h: &Harness, vm: &str) -> [u64; 5] {
    counters(h, vm)
}

/// bpftrace running a probe with JSON output, its lines counted on a thread.
pub struct Bpftrace {
    child: Child,
    pub state: Arc<Mutex<BtState>>,
}

#[derive(Default)]
pub struct BtState {
    pub attached: bool,
    pub printed: u64,
    pub lost: u64,
    pub last_print: Option<Instant>,
}

impl Bpftrace {
    pub fn start(script: &str) -> Bpftrace {
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bpftrace");
        let state = Arc::new(Mutex::new(BtState::default()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let st = state.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut s = st.lock().unwrap();
                    if line.contains("\"printf\"") {
                        s.printed += 1;
                        s.last_print = Some(Instant::now());
                    } else if line.contains("attached_probes") || line.starts_with("Attaching") {
                        s.attached = true;
                    } else if line.contains("lost_events") || line.contains("Lost ") {
                        s.lost += line
                            .split(|c: char| !c.is_ascii_digit())
                            .filter_map(|v| v.parse::<u64>().ok())
                            .next_back()
                            .unwrap_or(0);
                    }
                }
            });
        }
        let bt = Bpftrace { child, state };
        wait_until(
            Duration::from_secs(60),
            || bt.state.lock().unwrap().attached,
            "bpftrace to attach",
        );
        bt
    }

    /// Waits until `produced` events are printed or counted lost (or 3 s of quiet).
    pub fn account(&self, produced: u64, start: Instant) -> Accounting {
        let t = Instant::now();
        loop {
            let (printed, lost, last) = {
                let s = self.state.lock().unwrap();
                (s.printed, s.lost, s.last_print)
            };
            let quiet = last.map_or(t.elapsed(), |l| l.elapsed()) > Duration::from_secs(3);
            if printed + lost >= produced || quiet {
                return Accounting {
                    produced,
                    received: printed,
                    kernel_drops: lost,
                    agent_drops: 0,
                    transport_lost: 0,
                    malformed: 0,
                    seconds: last.map_or(0.0, |l| (l - start).as_secs_f64()),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
