//! Per-VM rate limits on what vesperd reads from a guest.
//!
//! A guest over its limit is not read from until its budget refills. vesperd spends no
//! CPU on the excess, and the pressure goes back to the guest, where the agent stops
//! draining its ring buffers and the BPF programs drop and count (`kernel_drops`): the
//! loss is counted where it happens and the guest kernel never waits. A well-behaved VM
//! beside the flooder keeps its share of the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use vesper_api::RateLimits;

/// A token bucket holding at most one second of its rate.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// None for rate 0 (no limit).
    pub fn new(rate_per_sec: u64, now: Instant) -> Option<Self> {
        (rate_per_sec > 0).then_some(Self {
            rate: rate_per_sec as f64,
            tokens: rate_per_sec as f64,
            last: now,
        })
    }

    /// Spends `n`; returns how long to wait until the debt is paid (zero within budget).
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A connection's two buckets.
#[derive(Debug)]
pub struct Limiter {
    records: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Limiter {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        Self {
            records: Bucket::new(limits.records_per_sec, now),
            bytes: Bucket::new(limits.bytes_per_sec, now),
        }
    }

    /// Charges what was just read; returns how long to pause reading.
    pub fn charge(&mut self, records: u64, bytes: u64, now: Instant) -> Duration {
        let r = self
            .records
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(records, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes, now));
        r.max(b)
    }
}

/// What a VM's reader has read and how much it was held back, shared by the reader and
/// the VM's status (kept across connections).
#[derive(Debug, Default)]
pub struct ReadCounters {
    /// Bytes read from the channel.
    pub bytes: AtomicU64,
    /// Milliseconds reading was paused.
    pub ms: AtomicU64,
    /// Pauses.
    pub pauses: AtomicU64,
}

impl ReadCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn read(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn paused(&self, pause: Duration) {
        self.ms
            .fetch_add(pause.as_millis() as u64, Ordering::Relaxed);
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }
    pub fn ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(d: Duration, ms: f64) -> bool {
        (d.as_secs_f64() * 1000.0 - ms).abs() < 1e-6
    }

    #[test]
    fn within_budget_never_waits_and_a_burst_of_one_second_is_allowed() {
        let t = Instant::now();
        let mut b = Bucket::new(1000, t).unwrap_or_else(|| panic!("rate 1000"));
        assert_eq!(b.take(1000, t), Duration::ZERO);
        let wait = b.take(500, t);
        assert!(close(wait, 500.0), "{wait:?}");
        // Half a second later the debt is paid; the next 100 cost 100 ms.
        let t2 = t + Duration::from_millis(500);
        let wait = b.take(100, t2);
        assert!(close(wait, 100.0), "{wait:?}");
    }

    #[test]
    fn idle_time_does_not_bank_more_than_one_second() {
        let t = Instant::now();
        let mut b = Bucket::new(100, t).unwrap_or_else(|| panic!("rate 100"));
        let later = t + Duration::from_secs(3600);
        assert_eq!(b.take(100, later), Duration::ZERO);
        let wait = b.take(100, later);
        assert!(close(wait, 1000.0), "{wait:?}");
    }

    #[test]
    fn zero_means_no_limit() {
        let t = Instant::now();
        let mut l = Limiter::new(
            RateLimits {
                records_per_sec: 0,
                bytes_per_sec: 0,
            },
            t,
        );
        assert_eq!(l.charge(u64::MAX / 2, u64::MAX / 2, t), Duration::ZERO);
        let mut l = Limiter::new(
            RateLimits {
                records_per_sec: 10,
                bytes_per_sec: 0,
            },
            t,
        );
        let wait = l.charge(20, 1 << 40, t);
        assert!(close(wait, 1000.0), "{wait:?}");
    }
}
