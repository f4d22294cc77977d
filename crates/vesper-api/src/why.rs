//! The why-log as clients read it: verdicts, their actions, and what the cluster holds.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a rule concluded, with the evidence, as kept in the why-log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub id: u64,
    pub vm: String,
    pub resource: Option<String>,
    pub rule: String,
    pub cause: String,
    pub time_ms: u64,
    /// The agent connection it was judged on: a verdict after the agent reconnected (the
    /// guest came back) is a new fault, never debounced into the old one.
    pub connection: u64,
    /// The records that led to it (first evidence first).
    pub evidence: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub kind: String,
    pub ok: bool,
    pub attempts: u32,
    /// From the verdict to the action's success (or last failure).
    pub ms: u64,
    pub detail: String,
}

/// One line of the why-log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhyEntry {
    pub verdict: Verdict,
    /// Acted on an earlier verdict for the same resource within the debounce window.
    pub debounced: bool,
    pub actions: Vec<ActionOutcome>,
    /// What the cluster reported afterwards (fail-count), if asked.
    pub cluster: Option<String>,
    /// Its actions are still running (shown at once; replaced when they finish).
    pub pending: bool,
}

/// A resource as `crm_mon --output-as=xml` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceView {
    pub resource: String,
    /// Nodes it is active on now.
    pub running_on: Vec<String>,
    /// The cause a vesperd put in, per node (where that vesperd's full timeline is).
    pub causes: Vec<NodeCause>,
    pub failures: Vec<Failure>,
    /// Non-zero fail-counts, per node.
    pub fail_counts: Vec<FailCount>,
    /// Nodes the cluster powered off: a VM that moved after its host was lost moved
    /// because of one of these.
    pub fencing: Vec<FenceEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceEvent {
    pub target: String,
    pub action: String,
    pub status: String,
    /// The node that carried it out (or asked for it).
    pub by: String,
    pub completed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCause {
    pub node: String,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub node: String,
    /// The operation, e.g. `vm-web1_asyncmon_0` (a failure vesperd reported) or
    /// `vm-web1_monitor_10000` (Pacemaker's own monitor).
    pub op: String,
    pub status: String,
    pub reason: String,
    /// As Pacemaker writes it, e.g. "Wed Dec  2 18:04:11 2026".
    pub when: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailCount {
    pub node: String,
    pub count: String,
    pub migration_threshold: String,
}

/// The attribute in which vesperd keeps a resource's cause.
/// What `why` reports of the cluster: its view of the resource, or why it could not ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClusterReport {
    View(ResourceView),
    Unreadable { resource: String, error: String },
}
