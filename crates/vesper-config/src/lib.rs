//! vesperd's configuration and its rules, with nothing of the daemon: the CLI checks a
//! configuration (`vesper vm add`) with this crate alone, and vesperd re-exports both
//! modules (`vesperd::config`, `vesperd::rules`).

pub mod config;
pub mod rules;

use std::path::PathBuf;
use std::time::Duration;

/// How long a rebooting guest's agent may take to connect before the VM counts as silent.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a VM's agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSpec {
    /// A unix socket served by QEMU/libvirt (chardev socket, server=on) or by an agent
    /// started with `--channel unix-listen:PATH`.
    Unix(PathBuf),
}

impl std::str::FromStr for ChannelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(ChannelSpec::Unix(p.into())),
            _ => Err(format!(
                "{s:?} is not a channel; write unix:/path/to/vm.sock (the VM's virtio-serial chardev socket)"
            )),
        }
    }
}

/// What a VM's record store keeps: in memory (records, bytes) and in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub file_max_bytes: u64,
}
