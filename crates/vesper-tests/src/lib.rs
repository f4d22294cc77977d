//! What the end-to-end tests, the benchmarks and `cargo xtask` share about the lab.

pub mod cluster;
pub mod lab_port;
