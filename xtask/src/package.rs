//! `cargo xtask package`: the host and guest Debian packages, built with cargo-deb.
//!
//! - `vesper` (host): vesperd, the vesper CLI, the systemd unit, a default
//!   /etc/vesper/vesper.toml, man pages and shell completions generated from the CLI
//!   definitions, the Grafana dashboard and the examples.
//! - `vesper-agent` (guest): the static agent, a systemd unit and an initramfs-tools hook.
//!
//! The packaging files are in `packaging/`; the cargo-deb settings in the two crates'
//! `[package.metadata.deb]`.

use std::path::PathBuf;
use std::process::Command;

use crate::lab;
use crate::util::{self, progress};

/// Where the .debs go.
pub fn out_dir() -> anyhow::Result<PathBuf> {
    Ok(util::target_dir()?.join("debian"))
}

pub fn run() -> anyhow::Result<Vec<PathBuf>> {
    let has_cargo_deb = Command::new(util::cargo_bin())
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        progress("installing cargo-deb");
        util::cargo(&["install", "cargo-deb", "--locked"])?;
    }
    progress("building vesperd and the CLI (release)");
    util::cargo(&["build", "--release", "-p", "vesperd", "-p", "vesper-cli"])?;
    let release = util::target_dir()?.join("release");
    progress("generating man pages and shell completions from the CLI definitions");
    let generated = release.join("packaging");
    let _ = std::fs::remove_dir_all(&generated);
    let (man, completions) = (generated.join("man"), generated.join("completions"));
    std::fs::create_dir_all(&completions)?;
    util::run(Command::new(release.join("vesper")).arg("man").arg(&man))?;
    util::run(Command::new(release.join("vesperd")).arg("--man").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        // -n: no name or time in the header, so the package builds the same twice.
        util::run(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    for (shell, file) in [
        ("bash", "vesper.bash"),
        ("zsh", "_vesper"),
        ("fish", "vesper.fish"),
    ] {
        let out = Command::new(release.join("vesper"))
            .args(["completions", shell])
            .output()?;
        if !out.status.success() {
            anyhow::bail!("vesper completions {shell}: {}", out.status);
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    let out = out_dir()?;
    std::fs::create_dir_all(&out)?;
    progress("building the host package (cargo deb -p vesperd)");
    let out_s = out.to_string_lossy().to_string();
    util::cargo(&["deb", "-p", "vesperd", "--no-build", "--output", &out_s])?;
    lab::static_binaries()?;
    progress("building the guest package (cargo deb -p vesper-agent, static)");
    util::cargo(&[
        "deb",
        "-p",
        "vesper-agent",
        "--no-build",
        "--target",
        lab::STATIC_TARGET,
        "--output",
        &out_s,
    ])?;
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    for d in &debs {
        progress(&format!("built {}", d.display()));
    }
    Ok(debs)
}
