//! vesper-probe: turns probes into BPF ELF objects plus a [`Manifest`], against the
//! tracepoint layouts of the kernel that will run them ([`KernelInfo`]).
//!
//! Everything here is pure: no syscalls, no kernel needed. The output can be checked
//! in user space (see the tests), and loaded anywhere by the agent.

pub mod builtin;
pub mod elf;
pub mod format;
pub mod insn;
pub mod manifest;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use format::{FormatError, TracepointField, TracepointFormat, parse_format};
pub use manifest::{
    Attach, AttachKind, FieldKind, FieldSpec, Manifest, RecordError, Schema, Value,
};

/// What the compiler needs to know about the target kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    pub btf: bool,
    /// Tracepoint layouts by "category:name"; an event missing here was not asked for,
    /// one mapped to `None` does not exist on that kernel.
    pub formats: BTreeMap<String, Option<TracepointFormat>>,
}

impl KernelInfo {
    pub fn format(&self, event: &str) -> Result<&TracepointFormat, BuildError> {
        match self.formats.get(event) {
            Some(Some(f)) => Ok(f),
            Some(None) => Err(BuildError::NoSuchEvent {
                event: event.into(),
                release: self.release.clone(),
            }),
            None => Err(BuildError::NoFormat {
                event: event.into(),
            }),
        }
    }
}

/// A compiled probe: the object to ship and the manifest the host keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledProbe {
    pub object: Vec<u8>,
    pub manifest: Manifest,
}

/// Why a probe could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("unknown built-in probe {name:?} (built-in probes: {known})")]
    UnknownBuiltin { name: String, known: String },
    #[error("tracepoint {event} does not exist on kernel {release}")]
    NoSuchEvent { event: String, release: String },
    #[error("no tracepoint format for {event} was provided (ask the target kernel for it)")]
    NoFormat { event: String },
    #[error("tracepoint {event} has no field {field:?} (fields: {available})")]
    MissingField {
        event: String,
        field: String,
        available: String,
    },
    #[error("tracepoint {event}: field {field} has an unsupported layout ({decl}, {size} bytes)")]
    BadField {
        event: String,
        field: String,
        decl: String,
        size: u32,
    },
    #[error(transparent)]
    Asm(#[from] insn::AsmError),
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
}

/// Default ring buffer size per probe: 1 MiB holds ~14k 72-byte records.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
