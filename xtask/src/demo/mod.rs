//! `cargo xtask demo`: the original system's scenario on a real cluster (`cluster.rs`);
//! `--native` is the fast one on this machine alone (`native.rs`).

mod cluster;
mod native;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--native") {
        native::run()
    } else {
        cluster::run()
    }
}
