//! What a client may ask: one JSON line, `{"cmd": …}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The guest kernel's layouts for these keys ("cat:name", "kprobe:func", "types").
    KernelInfo {
        vm: String,
        keys: Vec<String>,
    },
    /// The latest verdicts about a VM or a resource.
    Why {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<usize>,
    },
    /// Health for a cluster monitor: unhealthy while a verdict is newer than the agent's
    /// last connect.
    Check {
        vm: String,
    },
    Status,
    Probes {
        vm: String,
    },
    /// A built-in probe by name; or a script's text and its file; or a prebuilt object.
    Load {
        vm: String,
        probe: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// A prebuilt object, hex-encoded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_hex: Option<String>,
    },
    Unload {
        vm: String,
        probe: String,
    },
    /// A probe's maps, read from the guest's kernel now.
    Maps {
        vm: String,
        probe: String,
    },
    Events {
        vm: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe: Option<String>,
        #[serde(default)]
        follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<usize>,
    },
}
