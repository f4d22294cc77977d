//! The compiler's passes, in order. Each takes the previous one's output and adds to
//! a shared list of diagnostics instead of stopping at the first.

pub mod check;
pub mod codegen;
pub mod helpers;
pub mod lex;
pub mod object;
pub mod parse;

/// The pipeline, in order, for documentation and `--verbose` output.
pub const PASSES: &[&str] = &["lex", "parse", "check", "codegen", "helpers", "object"];
