//! What `vesper status` shows of a session.

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub version: String,
    pub kernel_release: String,
    pub boot_id: String,
    pub capabilities: u32,
}

/// Host-side accounting for one loaded probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: String,
    pub probe_id: u32,
    pub phase: ProbePhase,
    /// Records received and stored.
    pub received: u64,
    /// Next sequence number expected from the agent.
    pub next_seq: u64,
    /// Records the BPF program could not write (ring buffer full), as the agent reports.
    pub kernel_drops: u64,
    /// Records the agent read but could not send.
    pub agent_drops: u64,
    /// Sequence numbers that never arrived.
    pub transport_lost: u64,
    /// Records with a sequence number already seen (dropped).
    pub replayed: u64,
    /// Records that did not match the probe's schema (dropped).
    pub malformed: u64,
    pub load_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub name: String,
    pub state: State,
    /// The guest as the hypervisor reports it (QMP).
    pub guest: GuestState,
    pub channel: String,
    pub resource: Option<String>,
    pub agent: Option<AgentInfo>,
    /// Unix ms of the agent's last Hello (None: never connected since vesperd started).
    pub connected_since_ms: Option<u64>,
    /// Milliseconds since the agent was last heard from (None: never).
    pub last_heard_ms: Option<u64>,
    pub connects: u64,
    pub last_error: Option<String>,
    /// The latest verdict on this VM (kept by the session, so it is known at once, before
    /// any action has finished).
    pub last_verdict: Option<LastVerdict>,
    pub desired_probes: Vec<String>,
    pub probes: Vec<ProbeStatus>,
    /// Records for probes that are not loaded (dropped).
    pub unknown_probe_records: u64,
    pub stored_records: usize,
    pub stored_bytes: usize,
    pub evicted_records: u64,
    pub store_file_error: Option<String>,
    /// Records that never reached the record file (the disk fell behind; kept in memory).
    pub store_file_dropped: u64,
    pub rate_limits: RateLimits,
    /// Bytes read from the VM's channel (all connections).
    pub bytes_received: u64,
    /// Milliseconds reading from this VM was paused by its rate limits, and how often.
    pub rate_limited_ms: u64,
    pub rate_limited_pauses: u64,
    /// Times probes were attached again after none were (agent reconnects, vesperd
    /// restarts), and the milliseconds in between, when nothing was observed.
    pub gaps: u64,
    pub unobserved_ms: u64,
    /// The guest kernel's BTF and symbols (fetched once per kernel build).
    pub kernel_types: KernelTypesStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastVerdict {
    pub time_ms: u64,
    pub rule: String,
    pub cause: String,
}

impl Session {
    pub(super) fn status(&self) -> VmStatus {
        let store = match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        VmStatus {
            name: self.name.clone(),
            state: self.link.state(),
            guest: self.guest,
            channel: self.connector.describe(),
            resource: self.resource.clone(),
            agent: self.link.greeted().map(|g| g.agent.clone()),
            connected_since_ms: self.connected_since_ms,
            last_heard_ms: self.last_heard.map(|t| t.elapsed().as_millis() as u64),
            connects: self.connects,
            last_error: self.last_error.clone(),
            last_verdict: self.last_verdict.clone(),
            desired_probes: self.desired.iter().map(|d| d.name().to_string()).collect(),
            probes: self.probes.values().map(|p| p.status.clone()).collect(),
            unknown_probe_records: self.unknown_probe_records,
            stored_records: store.len(),
            stored_bytes: store.bytes(),
            evicted_records: store.evicted,
            store_file_error: store.file_error(),
            store_file_dropped: store.file_dropped,
            rate_limits: self.limits,
            bytes_received: self.counters.bytes(),
            rate_limited_ms: self.counters.ms(),
            rate_limited_pauses: self.counters.pauses(),
            gaps: self.gaps,
            unobserved_ms: self.unobserved_ms,
            kernel_types: self.kernel_fetch.status(),
        }
    }
}
