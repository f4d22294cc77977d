//! Gaps: the time no probe was attached while the VM was on this host (an agent
//! reconnect, a guest reset, vesperd not running, the VM arriving here), kept across a
//! vesperd restart by the seen file and reported as `unobserved` records; and a VM's
//! arrival on and departure from this host.

use std::path::PathBuf;
use std::time::{Instant, UNIX_EPOCH};

use super::{Link, ProbePhase, Session, now_ms};

impl Session {
    /// Keeps the time probes were last attached in `path`, so that the time vesperd was
    /// not running is reported as a gap when the probes are back.
    /// (Read here, at start; written through the disk writer.)
    pub fn with_seen_file(mut self, path: PathBuf, disk: crate::disk::DiskWriter) -> Self {
        if let Some(ms) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            self.observed_until_ms = Some(ms);
            self.gap_reason = "vesperd was not watching the VM";
        }
        self.seen_file = Some((path, disk));
        self
    }

    /// Probes are attached in the guest, as far as the host knows.
    pub(super) fn observing(&self) -> bool {
        self.observed_until_ms.is_none()
            && self
                .probes
                .values()
                .any(|p| p.status.phase == ProbePhase::Loaded)
    }

    /// Starts a gap at `since_ms` if probes were attached.
    pub(super) fn begin_gap(&mut self, since_ms: u64, reason: &'static str) {
        if self.observing() {
            self.observed_until_ms = Some(since_ms);
            self.gap_reason = reason;
            self.write_seen(since_ms);
        }
    }

    /// Notes that probes are attached now (in the seen file, at most once a second).
    pub(super) fn note_observing(&mut self, force: bool) {
        if !force
            && self
                .seen_written
                .is_some_and(|t| t.elapsed() < super::SEEN_EVERY)
        {
            return;
        }
        self.seen_written = Some(Instant::now());
        self.write_seen(now_ms());
    }

    /// Keeps `ms` as the time probes were last known attached.
    pub(super) fn write_seen(&self, ms: u64) {
        if let Some((path, disk)) = &self.seen_file {
            // A full disk only costs the gap's start after a restart: the next write retries.
            disk.replace(path, ms.to_string().into_bytes());
        }
    }

    /// Probes are attached again: the time they were not is reported as loss.
    pub(super) fn end_gap(&mut self) {
        let Some(since) = self.observed_until_ms.take() else {
            return;
        };
        let gap = now_ms().saturating_sub(since);
        self.gaps += 1;
        self.unobserved_ms += gap;
        tracing::warn!(vm = %self.name, gap_ms = gap, reason = self.gap_reason, "probes attached again after a gap: events in it were not observed");
        self.host_record(
            "unobserved",
            format!(
                "no probe was attached for {gap} ms ({}): events in that time were not recorded",
                self.gap_reason
            ),
            false,
        );
    }

    /// The VM's channel is not on this host. Nothing here can miss its events, so a gap
    /// that was open is closed without being counted (the node it moved to reports its own).
    pub(super) fn depart(&mut self, e: &std::io::Error) {
        if matches!(self.link, Link::Elsewhere) {
            return;
        }
        let was_here = matches!(self.link, Link::Disconnected) && self.last_heard.is_some();
        self.enter(Link::Elsewhere);
        self.observed_until_ms = None;
        if let Some((path, disk)) = &self.seen_file {
            disk.remove(path);
        }
        self.last_error = None;
        if was_here {
            let heard = self.last_heard.map_or(0, |t| t.elapsed().as_millis());
            tracing::info!(vm = %self.name, channel = %self.connector.describe(), last_heard_ms = heard as u64, "the VM left this node (its channel is gone)");
            self.host_record(
                "departed",
                format!("the VM's channel is gone from this node ({e}); its agent was last heard {heard} ms ago"),
                false,
            );
        } else {
            tracing::info!(vm = %self.name, channel = %self.connector.describe(), "the VM is not on this node (no channel); watching for it to arrive");
        }
    }

    /// A connection is made. A VM that was elsewhere, or whose channel is newer than the
    /// last time probes were seen attached, arrived here: the time from its channel's
    /// appearance to its probes being attached is a gap.
    pub(super) fn on_connected(&mut self) {
        let appeared = self
            .connector
            .appeared_at()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        let newer = matches!((self.observed_until_ms, appeared), (Some(seen), Some(a)) if a > seen);
        if !matches!(self.link, Link::Elsewhere) && !newer {
            return;
        }
        let since = appeared.unwrap_or_else(now_ms).min(now_ms());
        let ago = now_ms() - since;
        tracing::info!(vm = %self.name, channel = %self.connector.describe(), appeared_ms_ago = ago, "the VM arrived on this node");
        self.host_record(
            "arrived",
            format!("the VM's channel appeared on this node {ago} ms ago"),
            false,
        );
        self.observed_until_ms = Some(since);
        self.gap_reason = "the VM arrived on this node";
        self.enter(Link::Disconnected);
    }
}
