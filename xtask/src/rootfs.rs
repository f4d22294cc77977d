//! Debian root file systems for the cluster lab's nodes: another release's cluster stack
//! (Debian 13: Pacemaker 3.0) on this machine's kernel, built from Debian's archive once
//! and kept under `target/lab/rootfs/`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::util::{self, progress};

/// What a node runs: the cluster stack, the VM resource's agent and hypervisor, and what
/// the tests call inside a node.
const PACKAGES: &[&str] = &[
    "pacemaker",
    "pacemaker-cli-utils",
    "corosync",
    "resource-agents",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "curl",
    "procps",
    "iproute2",
];

const MIRROR: &str = "http://deb.debian.org/debian";

/// Debian releases the lab can run nodes in.
fn codename(release: &str) -> anyhow::Result<&'static str> {
    match release {
        "13" | "trixie" => Ok("trixie"),
        "12" | "bookworm" => Ok("bookworm"),
        other => bail!("--debian takes 12 or 13, not {other}"),
    }
}

/// The root file system of Debian `release`, built if missing or built from another
/// package list. The stamp file says what it holds; a half-built tree never has one.
pub fn debian(release: &str) -> anyhow::Result<PathBuf> {
    let suite = codename(release)?;
    let dir = util::target_dir()?.join("lab/rootfs").join(suite);
    let stamp = dir.join("etc/vesper-lab-rootfs");
    let want = format!("{suite} {MIRROR}\n{}\n", PACKAGES.join(","));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(dir);
    }
    util::ensure_packages(&[("mmdebstrap", "mmdebstrap")])?;
    let partial = dir.with_extension("partial");
    for d in [&dir, &partial] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    progress(&format!(
        "building a Debian {suite} root file system for the cluster nodes from {MIRROR} (once; kept in {})",
        dir.display()
    ));
    let t = std::time::Instant::now();
    util::run(
        Command::new("mmdebstrap")
            .args(["--variant=apt", "--mode=root", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            // Recommends would add a desktop's worth (graphics, audio) to QEMU and libvirt.
            .arg("--aptopt=APT::Install-Recommends \"false\"")
            .arg(suite)
            .arg(&partial)
            .arg(MIRROR),
    )?;
    // The package cache is the bulk of a fresh tree and is never used again.
    let _ = std::fs::remove_dir_all(partial.join("var/cache/apt/archives"));
    std::fs::write(partial.join("etc/vesper-lab-rootfs"), &want)
        .context("writing the root file system's stamp")?;
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    progress(&format!(
        "Debian {suite} root file system built in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(dir)
}
