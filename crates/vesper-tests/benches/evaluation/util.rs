//! Small helpers of the evaluation: statistics, a seeded random source, /proc readings,
//! Markdown tables on stdout.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Summary of a sample; percentiles by nearest rank.
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(xs: &[f64]) -> Stats {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Stats {
        n: v.len(),
        mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        p50: rank(0.5),
        p99: rank(0.99),
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

impl Stats {
    pub fn json(&self) -> Value {
        json!({"n": self.n, "mean": self.mean, "p50": self.p50, "p99": self.p99, "min": self.min, "max": self.max})
    }
}

pub fn median(xs: &[f64]) -> f64 {
    stats(xs).p50
}

/// xorshift64*: reproducible from the seed written into the results.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Seconds since the epoch (the clock Pacemaker's alert timestamps use).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A `Key:  N kB` line of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_kib(&s, "VmRSS:").unwrap_or(0)
}

/// utime + stime of a process, in clock ticks, from the text of /proc/PID/stat.
pub fn cpu_ticks_of(stat: &str) -> u64 {
    // Fields after the parenthesised comm; utime and stime are the 14th and 15th overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub fn cpu_ticks(pid: u32) -> u64 {
    cpu_ticks_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub const TICKS_PER_S: f64 = 100.0;

pub fn table(title: &str, head: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}\n");
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}

/// Resident KiB of a process's mappings, split into BPF maps mapped into it (ring buffers:
/// kernel memory, counted twice because the data area is mapped twice) and everything else.
pub fn rss_split_kib(smaps: &str) -> (u64, u64) {
    let (mut maps, mut own) = (0, 0);
    let mut in_map = false;
    for l in smaps.lines() {
        if l.split_whitespace().next().is_some_and(|a| {
            a.contains('-') && a.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            in_map = l.ends_with("anon_inode:bpf-map");
        } else if let Some(kib) = status_kib(l, "Rss:") {
            if in_map {
                maps += kib;
            } else {
                own += kib;
            }
        }
    }
    (maps, own)
}

/// The tick of the clock Pacemaker stamps its alerts with: libqb reads
/// `CLOCK_REALTIME_COARSE`, the time as of the last clock tick, so an alert's timestamp is
/// up to one tick earlier than the moment it describes.
pub fn alert_clock_tick_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call's duration.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
