//! The built-in probe library: scripts in the probe language, in `probes/*.vsp`.

use crate::compiler;
use crate::{BuildError, CompiledProbe, KernelInfo};

/// (name, source) of every built-in probe.
pub const PROBES: &[(&str, &str)] = &[
    ("signal", include_str!("../../probes/signal.vsp")),
    ("oom", include_str!("../../probes/oom.vsp")),
    ("exit", include_str!("../../probes/exit.vsp")),
    ("fork", include_str!("../../probes/fork.vsp")),
    ("reclaim", include_str!("../../probes/reclaim.vsp")),
    ("hung", include_str!("../../probes/hung.vsp")),
];

pub fn names() -> Vec<&'static str> {
    PROBES.iter().map(|(n, _)| *n).collect()
}

pub fn is_builtin(name: &str) -> bool {
    PROBES.iter().any(|(n, _)| *n == name)
}

pub fn source(name: &str) -> Result<&'static str, BuildError> {
    PROBES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| BuildError::UnknownBuiltin {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// The kernel-info keys a built-in probe needs.
pub fn events(name: &str) -> Result<Vec<String>, BuildError> {
    compiler::required_kernel_keys(source(name)?, &format!("{name}.vsp")).map_err(BuildError::from)
}

/// Builds a built-in probe for the given kernel.
pub fn build(name: &str, kernel: &KernelInfo) -> Result<CompiledProbe, BuildError> {
    compiler::compile(source(name)?, &format!("{name}.vsp"), name, kernel).map_err(BuildError::from)
}
