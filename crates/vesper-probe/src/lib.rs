//! vesper-probe: turns probes into BPF ELF objects plus a [`Manifest`], against the
//! tracepoint layouts of the kernel that will run them ([`KernelInfo`]).
//!
//! Everything here is pure: no syscalls, no kernel needed. The output can be checked
//! in user space (see the tests), and loaded anywhere by the agent.

pub mod btf;
pub mod builtin;
pub mod compiler;
pub mod disasm;
pub mod elf;
pub mod eval;
pub mod format;
pub mod insn;
pub mod kernel_symbols;
pub mod kernel_types;
pub mod manifest;
pub mod map_values;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use compiler::{Diagnostics, compile, manifest_of_object, required_kernel_keys};
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
    /// The kernel's own type information (its BTF), for struct members, casts and typed
    /// kprobe arguments; `None` when the guest did not send it. In JSON, base64 BTF.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "kernel_types::serde_base64"
    )]
    pub types: Option<std::sync::Arc<kernel_types::KernelTypes>>,
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

impl KernelInfo {
    /// Reads what `keys` need from a tracefs-like directory (`/sys/kernel/tracing`, or a
    /// recorded copy): `cat:name` → `events/cat/name/format`; `kprobe:func` → looked up in
    /// `available_filter_functions` when that file exists (left unchecked otherwise).
    pub fn read_tracefs(root: &std::path::Path, release: &str, keys: &[String]) -> KernelInfo {
        let mut k = KernelInfo {
            release: release.to_string(),
            btf: false,
            formats: BTreeMap::new(),
            types: None,
        };
        let functions = std::fs::read_to_string(root.join("available_filter_functions")).ok();
        for key in keys {
            if let Some(func) = key.strip_prefix("kprobe:") {
                if let Some(list) = &functions {
                    let found = list
                        .lines()
                        .any(|l| l.split_whitespace().next() == Some(func));
                    k.formats.insert(
                        key.clone(),
                        found.then(|| TracepointFormat {
                            event: key.clone(),
                            id: None,
                            fields: vec![],
                        }),
                    );
                }
                continue;
            }
            let Some((cat, name)) = key.split_once(':') else {
                continue;
            };
            let safe = |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if !safe(cat) || !safe(name) {
                k.formats.insert(key.clone(), None);
                continue;
            }
            let text =
                std::fs::read_to_string(root.join("events").join(cat).join(name).join("format"))
                    .ok();
            k.formats
                .insert(key.clone(), text.and_then(|t| parse_format(key, &t).ok()));
        }
        k
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
    #[error("{0}")]
    Compile(Box<compiler::Diagnostics>),
    #[error("object {name} has no Vesper manifest (build it with `vesper build`)")]
    NoManifest { name: String },
}

/// Default ring buffer size per probe (a script's `config = { ring_kib = N }` overrides it).
pub use compiler::passes::object::DEFAULT_RING_BYTES;

/// What to load: a built-in probe, a script, or an object built elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSource {
    Builtin(String),
    Script {
        name: String,
        file: String,
        text: String,
    },
    Object {
        name: String,
        object: Vec<u8>,
        manifest: Box<Manifest>,
    },
}

impl ProbeSource {
    pub fn name(&self) -> &str {
        match self {
            ProbeSource::Builtin(n) => n,
            ProbeSource::Script { name, .. } | ProbeSource::Object { name, .. } => name,
        }
    }

    /// The kernel-info keys needed to compile it (none for a prebuilt object).
    pub fn kernel_keys(&self) -> Result<Vec<String>, BuildError> {
        match self {
            ProbeSource::Builtin(n) => builtin::events(n),
            ProbeSource::Script { file, text, .. } => {
                Ok(compiler::required_kernel_keys(text, file)?)
            }
            ProbeSource::Object { .. } => Ok(Vec::new()),
        }
    }

    /// Compiles it for `kernel` (a prebuilt object is returned as it is).
    pub fn build(&self, kernel: &KernelInfo) -> Result<CompiledProbe, BuildError> {
        match self {
            ProbeSource::Builtin(n) => builtin::build(n, kernel),
            ProbeSource::Script { name, file, text } => {
                Ok(compiler::compile(text, file, name, kernel)?)
            }
            ProbeSource::Object {
                object, manifest, ..
            } => Ok(CompiledProbe {
                object: object.clone(),
                manifest: (**manifest).clone(),
            }),
        }
    }

    /// A prebuilt object; its manifest comes from the object itself.
    pub fn from_object(name: &str, object: Vec<u8>) -> Result<ProbeSource, BuildError> {
        let manifest = manifest_of_object(&object).ok_or_else(|| BuildError::NoManifest {
            name: name.to_string(),
        })?;
        Ok(ProbeSource::Object {
            name: name.to_string(),
            object,
            manifest: Box::new(manifest),
        })
    }
}

/// A probe name from a file path: its stem, if that is a usable name.
pub fn probe_name_from_path(path: &str) -> Option<String> {
    let stem = std::path::Path::new(path).file_stem()?.to_str()?;
    (!stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then(|| stem.to_string())
}

impl From<compiler::Diagnostics> for BuildError {
    fn from(d: compiler::Diagnostics) -> Self {
        BuildError::Compile(Box::new(d))
    }
}
