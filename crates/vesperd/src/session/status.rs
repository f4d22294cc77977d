//! What `vesper status` shows of a session.

use super::*;

pub use vesper_api::{AgentInfo, LastVerdict, ProbeStatus, VmStatus};

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
