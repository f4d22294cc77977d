//! The built-in probe library.

mod signal;

use crate::{BuildError, CompiledProbe, KernelInfo};

/// Names of the built-in probes.
pub const NAMES: &[&str] = &["signal"];

/// The tracepoints a built-in probe needs formats for.
pub fn events(name: &str) -> Result<&'static [&'static str], BuildError> {
    match name {
        "signal" => Ok(&["signal:signal_generate"]),
        _ => Err(unknown(name)),
    }
}

/// Builds a built-in probe for the given kernel.
pub fn build(name: &str, kernel: &KernelInfo) -> Result<CompiledProbe, BuildError> {
    match name {
        "signal" => signal::build(kernel),
        _ => Err(unknown(name)),
    }
}

pub fn is_builtin(name: &str) -> bool {
    NAMES.contains(&name)
}

fn unknown(name: &str) -> BuildError {
    BuildError::UnknownBuiltin {
        name: name.to_string(),
        known: NAMES.join(", "),
    }
}
