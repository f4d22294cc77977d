//! The control API between vesperd and its clients (the `vesper` CLI, monitors): one JSON
//! request line over a unix socket, answered by JSON lines.
//!
//! These types are the contract. vesperd serializes them and the CLI deserializes the same
//! types, so a field renamed on one side is renamed on both, and one removed fails to
//! compile where it is used; the round-trip tests keep the wire names fixed.
//!
//! | request ([`Request`]) | answer (`{"ok":true,…}` and) |
//! |---------|----------|
//! | `status` | [`StatusReply`] |
//! | `probes` | [`ProbesReply`] |
//! | `load` | [`LoadReply`] |
//! | `unload`, `maps` | [`MapsReply`] |
//! | `kernel-info` | [`KernelInfoReply`] |
//! | `why` | [`WhyReply`] |
//! | `check` | [`CheckReply`] |
//! | `events` | nothing more, then one record per line |
//!
//! A refusal is `{"ok":false,"code":…,"error":…}` ([`ApiError`]): the code says what kind
//! of refusal it is, for programs ([`ErrorCode`]); the text says what and how to fix it, for
//! people.

mod error;
mod request;
mod status;
mod why;

pub use error::{ApiError, ErrorCode};
pub use request::Request;
pub use status::{
    AgentInfo, DiskStats, GuestState, KernelTypesStatus, LastVerdict, LoadOutcome, ProbePhase,
    ProbeStatus, RateLimits, State, Unanswered, VmStatus,
};
pub use why::{
    ActionOutcome, ClusterReport, FailCount, Failure, FenceEvent, NodeCause, ResourceView, Verdict,
    WhyEntry,
};

use serde::{Deserialize, Serialize};
use vesper_probe::map_values::MapDump;

/// `status`: every VM's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub vms: Vec<VmStatus>,
    /// Sessions that did not answer in time (left out of `vms`).
    #[serde(default)]
    pub unanswered: Vec<Unanswered>,
    pub disk: DiskStats,
    /// How vesperd tells Pacemaker, and the state of that connection.
    pub pacemaker: String,
}

/// `probes`: one VM's status, with its probes' counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbesReply {
    pub vm: VmStatus,
}

/// `load`: what became of the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReply {
    pub result: LoadOutcome,
}

/// `unload` (the maps' last values) and `maps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapsReply {
    pub maps: Vec<MapDump>,
}

/// `kernel-info`: the guest kernel's layouts for the keys asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfoReply {
    pub kernel: vesper_probe::KernelInfo,
}

/// `why`: the latest verdicts, and what the cluster holds about the resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhyReply {
    pub entries: Vec<WhyEntry>,
    /// None: the VM backs no resource.
    pub cluster: Option<ClusterReport>,
}

/// `check`: health for a cluster monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReply {
    pub vm: String,
    /// False while a verdict is newer than the agent's last connect.
    pub healthy: bool,
    pub state: State,
    pub guest: GuestState,
    /// The standing verdict's cause.
    pub cause: Option<String>,
}

/// The first line of every answer: `{"ok":true, …the reply's fields}` or a refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer<T> {
    Refused(Refusal),
    Ok(Accepted<T>),
}

/// `{"ok":true, …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted<T> {
    pub ok: True,
    #[serde(flatten)]
    pub reply: T,
}

/// `{"ok":false,"code":…,"error":…}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub ok: False,
    #[serde(flatten)]
    pub error: ApiError,
}

/// `true`, and only that (tells an acceptance from a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "bool", into = "bool")]
pub struct True;

/// `false`, and only that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "bool", into = "bool")]
pub struct False;

impl TryFrom<bool> for True {
    type Error = &'static str;
    fn try_from(b: bool) -> Result<Self, Self::Error> {
        if b { Ok(True) } else { Err("not true") }
    }
}
impl From<True> for bool {
    fn from(_: True) -> bool {
        true
    }
}
impl TryFrom<bool> for False {
    type Error = &'static str;
    fn try_from(b: bool) -> Result<Self, Self::Error> {
        if b { Err("not false") } else { Ok(False) }
    }
}
impl From<False> for bool {
    fn from(_: False) -> bool {
        false
    }
}

impl<T> Answer<T> {
    pub fn ok(reply: T) -> Self {
        Answer::Ok(Accepted { ok: True, reply })
    }
    pub fn refused(error: ApiError) -> Self {
        Answer::Refused(Refusal { ok: False, error })
    }
    pub fn into_result(self) -> Result<T, ApiError> {
        match self {
            Answer::Ok(a) => Ok(a.reply),
            Answer::Refused(r) => Err(r.error),
        }
    }
}

/// An answer with nothing but `ok` (`events`, before its records).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests;
