//! The Debian packages (`cargo xtask package`), installed on this machine with dpkg, used,
//! and purged: the host package's daemon starts from its unit's command line with its
//! default configuration, its CLI adds a libvirt guest, its man pages and completions are
//! where man and bash look; the guest package's static agent serves a real vesperd.
//!
//! `cargo xtask test` builds the packages and sets VESPER_DEB_DIR.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// The .deb whose name starts with `package_` (None: skipped, with the reason printed).
fn deb(test: &str, package: &str) -> Option<PathBuf> {
    if !need_root(test) {
        return None;
    }
    let Some(dir) = std::env::var_os("VESPER_DEB_DIR") else {
        if std::env::var_os("VESPER_REQUIRE_PACKAGES").is_some() {
            panic!("{test}: VESPER_DEB_DIR is not set");
        }
        eprintln!("SKIP {test}: needs the packages; run `cargo xtask test` (it builds them)");
        return None;
    };
    let found = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("no {package}_*.deb in {}", Path::new(&dir).display()));
    // Installing over an operator's own installation would purge it afterwards.
    let status = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&status.stdout).contains("installed") {
        eprintln!(
            "SKIP {test}: {package} is installed on this machine and this test would purge it"
        );
        return None;
    }
    Some(found)
}

fn ok(cmd: &mut Command) -> String {
    let o: Output = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dpkg takes one caller at a time: the tests of this file install one after the other.
static DPKG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs a package; purges it when dropped.
struct Installed(
    &'static str,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

impl Installed {
    fn new(package: &'static str, deb: &Path) -> Self {
        let turn = DPKG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ok(Command::new("dpkg").arg("-i").arg(deb));
        Installed(package, turn)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", self.0]).status();
    }
}

fn assert_installed(files: &[&str]) {
    for f in files {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
}

/// `systemd-analyze verify`: the unit parses, its commands exist, its man pages resolve.
fn verify_unit(unit: &str) {
    let o = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{unit}: {err}");
}

#[test]
fn the_host_package_installs_runs_with_its_defaults_and_purges_clean() {
    let Some(deb) = deb("host package", "vesper") else {
        return;
    };
    let installed = Installed::new("vesper", &deb);
    assert_installed(&[
        "/usr/sbin/vesperd",
        "/usr/bin/vesper",
        "/etc/vesper/vesper.toml",
        "/usr/lib/systemd/system/vesperd.service",
        "/usr/lib/tmpfiles.d/vesper.conf",
        "/usr/share/man/man1/vesper-vm-add.1.gz",
        "/usr/share/man/man8/vesperd.8.gz",
        "/usr/share/zsh/vendor-completions/_vesper",
        "/usr/share/fish/vendor_completions.d/vesper.fish",
        "/usr/share/vesper/grafana/vesper-dashboard.json",
        "/usr/share/doc/vesper/examples/libvirt/web1.xml",
    ]);
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "vesper"]));
    assert!(conffiles.contains("/etc/vesper/vesper.toml"), "{conffiles}");
    assert!(!ok(Command::new("getent").args(["group", "vesper"])).is_empty());
    assert!(Path::new("/run/vesper").is_dir());
    verify_unit("/usr/lib/systemd/system/vesperd.service");
    let man = ok(Command::new("man").args(["-P", "cat", "vesper-vm-add"]));
    assert!(man.contains("--libvirt"), "{man}");
    let complete = ok(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/vesper && complete -p vesper",
    ]));
    assert!(complete.contains("vesper"), "{complete}");

    // The daemon as its unit starts it, with the default configuration.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/vesperd.service").unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .split_whitespace()
        .collect();
    std::fs::create_dir_all("/var/lib/vesper").unwrap();
    // A killed daemon leaves its socket file: only an answer means this one is up.
    let _ = std::fs::remove_file("/run/vesper/vesper.sock");
    let _daemon = Proc {
        child: Command::new(exec[0])
            .args(&exec[1..])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "packaged vesperd".into(),
    };
    wait_until(
        Duration::from_secs(10),
        || {
            Command::new("/usr/bin/vesper")
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success())
        },
        "the packaged vesperd to answer on /run/vesper/vesper.sock",
    );
    let status = ok(Command::new("/usr/bin/vesper").arg("status"));
    assert!(status.contains("no VMs configured"), "{status}");
    let mode = std::fs::metadata("/run/vesper/vesper.sock").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // A guest added with the packaged CLI and example, into the packaged configuration.
    ok(Command::new("/usr/bin/vesper").args([
        "vm",
        "add",
        "--libvirt",
        "web1",
        "--xml",
        "/usr/share/doc/vesper/examples/libvirt/web1.xml",
        "--watch",
        "httpd",
        "--resource",
        "web1",
    ]));
    let checked = ok(Command::new("/usr/sbin/vesperd").args([
        "--config",
        "/etc/vesper/vesper.toml",
        "--check-config",
    ]));
    assert!(
        checked.contains("vm web1: channel unix:/run/vesper/web1.sock, resource web1"),
        "{checked}"
    );
    drop(_daemon);
    drop(installed);
    for gone in [
        "/etc/vesper/vesper.toml",
        "/var/lib/vesper",
        "/usr/sbin/vesperd",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}

#[test]
fn the_guest_package_brings_a_static_agent_that_serves_vesperd() {
    let Some(deb) = deb("guest package", "vesper-agent") else {
        return;
    };
    let _installed = Installed::new("vesper-agent", &deb);
    assert_installed(&[
        "/usr/sbin/vesper-agent",
        "/usr/lib/systemd/system/vesper-agent.service",
        "/usr/share/initramfs-tools/hooks/vesper-agent",
        "/usr/share/initramfs-tools/scripts/init-top/vesper-agent",
    ]);
    verify_unit("/usr/lib/systemd/system/vesper-agent.service");
    // Static: a guest needs nothing else (ldd says so and exits 1 for such a binary).
    let ldd = Command::new("ldd")
        .arg("/usr/sbin/vesper-agent")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "{said}"
    );
    // initramfs-tools asks every hook and script for its prerequisites first.
    for script in [
        "/usr/share/initramfs-tools/hooks/vesper-agent",
        "/usr/share/initramfs-tools/scripts/init-top/vesper-agent",
    ] {
        ok(Command::new(script).arg("prereqs"));
    }

    // The packaged agent, on this machine's kernel, serving a vesperd.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _agent = Proc {
        child: Command::new("/usr/sbin/vesper-agent")
            .arg("--channel")
            .arg(format!("unix-listen:{}", sock.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "packaged vesper-agent".into(),
    };
    wait_until(
        Duration::from_secs(5),
        || sock.exists(),
        "the agent's socket",
    );
    let h = Harness::start_vesperd(
        "",
        &format!(
            "[[vm]]\nname = \"guest1\"\nchannel = \"unix:{}\"\nprobes = [\"signal\"]\n",
            sock.display()
        ),
    );
    h.wait_loaded("guest1", "signal");
    let (_victim, pid) = victim("pkgvictim");
    send_signals("pkgsender", pid, 15, 1);
    wait_until(
        Duration::from_secs(5),
        || {
            h.events_json("guest1", "signal")
                .iter()
                .any(|r| r["sender_comm"] == "pkgsender" && r["target_pid"] == pid)
        },
        "a record from the packaged agent",
    );
}
