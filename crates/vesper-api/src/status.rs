//! What `vesper status` shows: the daemon's and each VM's state and counters.

use serde::{Deserialize, Serialize};

/// A VM's session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No connection to the agent; connecting with backoff.
    Disconnected,
    /// The VM's channel is not on this host (it runs on another node, or nowhere).
    Elsewhere,
    /// Connected, waiting for the agent's Hello.
    Handshake,
    /// The agent is connected and heard from.
    Ready,
    /// The agent is connected but silent for longer than the VM's deadtime.
    Unresponsive,
}

/// The guest as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    /// Nothing reported (no QMP, or nothing happened yet).
    Running,
    Panicked,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbePhase {
    Loading,
    Loaded,
}

/// What became of a load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LoadOutcome {
    /// Loaded and attached in the guest.
    Loaded { probe_id: u32, load_us: u64 },
    /// The VM is not connected; the probe loads when its agent connects.
    Pending,
}

/// What one VM may send per second (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    pub records_per_sec: u64,
    pub bytes_per_sec: u64,
}

/// The guest kernel's types (BTF and symbols), fetched once per kernel build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTypesStatus {
    /// idle, identifying, looking in the cache, receiving, storing, known or failed.
    pub state: String,
    pub kernel_id: Option<String>,
    pub types: Option<usize>,
    pub symbols: Option<usize>,
    pub btf_bytes: Option<usize>,
    pub symbol_bytes: Option<usize>,
    /// Transfer and parse time when fetched from the guest on this connection; `None` when
    /// it came from the cache.
    pub fetched_ms: Option<u64>,
    /// Bytes received so far, during a transfer.
    pub received_bytes: usize,
    pub error: Option<String>,
}

/// A session that did not answer a status request in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    pub vm: String,
    pub error: String,
}

/// What vesperd's disk writer has done and dropped (record files, why-log, seen files).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    /// Bytes waiting in the queue.
    pub queued_bytes: u64,
    /// How long the write at the head of the queue has waited (0: none waiting).
    pub oldest_wait_ms: u64,
    pub written_bytes: u64,
    /// Writes dropped because the queue was full, and their bytes.
    pub dropped_writes: u64,
    pub dropped_bytes: u64,
    /// Writes that failed (the error is kept per file).
    pub failed_writes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub kernel_release: String,
    pub boot_id: String,
    pub capabilities: u32,
}

/// Host-side accounting for one loaded probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastVerdict {
    pub time_ms: u64,
    pub rule: String,
    pub cause: String,
}
