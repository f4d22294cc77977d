//! Who may use the control API: root, vesperd's own user, and the members of
//! `[daemon] socket_group`; the socket's mode says so and the daemon checks each peer's
//! credentials again. Every probe load is logged with who asked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

use common::*;

const NOBODY: u32 = 65534;
/// Debian's `nogroup`; `users` is 100.
const NOGROUP: u32 = 65534;
const USERS: u32 = 100;

/// The CLI run as `nobody` with primary group `gid` and no other groups.
fn as_nobody(h: &Harness, gid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(bin("vesper"))
        .env("VESPER_SOCKET", h.socket())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Lets anyone reach (not use) the socket: the temp dir is 0700.
fn open_dir(h: &Harness) {
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_control_socket_admits_only_root_vesperds_user_and_its_group() {
    if !need_root("control socket access") || need_tool("setpriv").is_none() {
        return;
    }
    // Owner-only by default: the file's mode keeps others out ...
    let h = Harness::single(&[]);
    h.wait_ready("host1");
    open_dir(&h);
    let meta = std::fs::metadata(h.socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let o = as_nobody(&h, NOGROUP, &["status"]);
    assert!(
        !o.status.success() && stderr(&o).to_lowercase().contains("permission denied"),
        "{o:?}"
    );
    // ... and with the mode loosened by hand, the daemon's own check does.
    std::fs::set_permissions(h.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody(&h, NOGROUP, &["load", "host1", "signal"]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("permission denied: uid 65534 is not root or vesperd's user"),
        "{}",
        stderr(&o)
    );
    assert!(h.vesperd_log().contains("control connection refused"));
    assert!(
        !h.vesper_ok(&["probes", "host1"]).contains("signal"),
        "nothing was loaded"
    );
    // Root may, and the load is logged with who asked.
    h.vesper_ok(&["load", "host1", "signal"]);
    let log = h.vesperd_log();
    let line = log
        .lines()
        .find(|l| l.contains("probe load requested"))
        .expect("the load is logged");
    assert!(
        line.contains("probe=signal") && line.contains("uid 0 pid "),
        "{line}"
    );
    drop(h);

    // A socket group: mode 0660, group-owned; its members may, others may not.
    let h = Harness::start_with(
        &[VmSpec {
            name: "host1",
            agent: true,
            probes: &[],
        }],
        "socket_group = \"nogroup\"",
        "",
    );
    h.wait_ready("host1");
    open_dir(&h);
    let meta = std::fs::metadata(h.socket()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOGROUP));
    let o = as_nobody(&h, NOGROUP, &["status"]);
    assert!(o.status.success(), "a member of nogroup: {}", stderr(&o));
    std::fs::set_permissions(h.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody(&h, USERS, &["status"]);
    assert!(
        stderr(&o).contains("is not root, vesperd's user or a member of group nogroup"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_socket_group_is_refused_at_start_with_the_fix() {
    let (_dir, _, err) = vesperd_refuses(|dir| {
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\nsocket_group = \"no-such-group-here\"\n",
            dir.join("s.sock").display(),
            dir.join("state").display()
        )
    });
    assert!(
        err.contains("socket_group \"no-such-group-here\"") && err.contains("groupadd"),
        "{err}"
    );
}
