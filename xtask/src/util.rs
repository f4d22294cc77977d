//! Helpers for running commands with clear progress and errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub fn progress(msg: &str) {
    eprintln!("==> {msg}");
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

pub fn target_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target")))
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let desc = format!("{cmd:?}");
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(workspace_root());
    }
    let status = cmd.status().with_context(|| format!("starting {desc}"))?;
    if !status.success() {
        bail!("{desc} failed ({status})");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(cargo_bin()).args(args))
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fresh machines have no tracefs mounted; the agent mounts it too, but the tests and
/// bpftrace comparisons want it from the start.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    progress("mounting tracefs at /sys/kernel/tracing");
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

/// Installs Debian packages whose commands are missing (apt-get update first, once).
pub fn ensure_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let has = |cmd: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).exists())
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !has(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    progress(&format!("installing {} (apt-get)", missing.join(", ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The command line after `--` (`exec NAME -- CMD...`), joined for `sh -c`; None if empty.
pub fn command_after_dashes(args: &[String]) -> Option<String> {
    let cmd: Vec<&str> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .map(String::as_str)
        .collect();
    (!cmd.is_empty()).then(|| cmd.join(" "))
}

/// Prints the last `n` lines of a log file under a heading (a failed run's evidence).
pub fn print_tail(label: &str, path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    eprintln!(
        "----- last lines of {label}\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
