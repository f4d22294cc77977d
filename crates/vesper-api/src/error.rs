//! Refusals: a code for programs, a sentence for people.

use serde::{Deserialize, Serialize};

/// What kind of refusal an answer is. Clients decide on the code, never on the words
/// (`vesper check` picks its OCF exit code from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request is not one vesperd knows, or an argument is malformed.
    BadRequest,
    /// The caller may not use the control API.
    Denied,
    /// No such VM in vesperd's configuration.
    UnknownVm,
    /// The probe is not loaded in that VM.
    NotLoaded,
    /// A probe of that name is loaded already.
    AlreadyLoaded,
    /// The probe does not build for this guest, or its kernel refused it.
    ProbeRefused,
    /// The VM's agent is not connected, and the request needs it.
    NotConnected,
    /// What was asked is on its way (the guest kernel's types): ask again shortly.
    TryAgain,
    /// The agent could not do it (a map it could not read).
    AgentFailed,
    /// The VM's session did not answer in time, or is gone.
    NoAnswer,
    /// A code this client does not know (a newer vesperd).
    #[serde(other)]
    Other,
}

/// A refusal: `{"ok":false,"code":…,"error":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// One line (or a few, for a compiler's diagnostics) that says what and how to fix it.
    pub error: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> ApiError {
        ApiError {
            code,
            error: error.into(),
        }
    }
}
