//! The cluster lab itself (`vesper_tests::cluster`), timed: bring-up, a live migration
//! through `crm_resource --move` with the guest's uptime kept, and a node killed under the
//! VM (with fencing when VESPER_CLUSTER_STONITH is set). Needs root, QEMU, Pacemaker,
//! libvirt and the lab's guest images (`cargo xtask cluster up` builds them once); run with
//! `cargo test -p vesper-tests --test cluster_lab -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vesper_tests::cluster::{Cluster, ClusterSpec, VM_DOMAIN, VM_HTTP_PORT, VM_RESOURCE};

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn spec(nodes: usize) -> ClusterSpec {
    let lab = target().join("lab");
    ClusterSpec {
        nodes,
        dir: lab.join("cluster"),
        bin_dir: std::env::var_os("VESPER_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target().join("release")),
        kernel: lab.join("kernel/root/boot/vmlinuz-6.1.0-56-amd64"),
        initrd: lab.join("initramfs.cpio.gz"),
        vesper_toml: "[daemon]\nsocket = \"/run/vesper/vesper.sock\"\nstate_dir = \"/var/lib/vesper\"\n\n[[vm]]\nname = \"web1\"\nchannel = \"unix:/run/vesper/web1.sock\"\nprobes = []\nresource = \"vm-web1\"\nwatch = [\"httpd\", \"memhog\"]\ndeadtime_ms = 3000\ndebounce_ms = 1000\n".into(),
        stonith: std::env::var_os("VESPER_CLUSTER_STONITH").is_some(),
    }
}

/// The guest's uptime in seconds, through the lab port on whichever node runs it.
fn uptime(c: &Cluster) -> Option<f64> {
    let sock = c.lab_socket(VM_DOMAIN)?;
    let (out, rc) =
        vesper_tests::lab_port::exec(&sock, "cat /proc/uptime", Duration::from_secs(10)).ok()?;
    (rc == 0).then(|| out.split_whitespace().next()?.parse().ok())?
}

fn http(c: &Cluster, node: &str) -> bool {
    let cmd = format!("wget -q -T 1 -O- http://127.0.0.1:{VM_HTTP_PORT}/");
    c.exec(node, &cmd, Duration::from_secs(5))
        .is_ok_and(|(out, rc)| rc == 0 && out.contains("vesper lab guest"))
}

fn only_on(c: &Cluster, node: &str) -> bool {
    c.locate_all(VM_RESOURCE) == [node]
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "boots a multi-node cluster with a TCG guest (root, about a minute)"]
fn lab_cluster_migrates_and_fails_over() {
    let nodes: usize = std::env::var("VESPER_CLUSTER_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let t = Instant::now();
    let c = Cluster::up(&spec(nodes)).expect("cluster up");
    eprintln!("up ({nodes} nodes): {:.1} s", secs(t));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&c)));
    if result.is_err()
        && let Some(mon) = c.crm_mon()
    {
        eprintln!("{mon}");
    }
    c.down();
    result.unwrap();
}

fn scenario(c: &Cluster) {
    let long = Duration::from_secs(120);
    let first = c.locate(VM_RESOURCE).unwrap();
    c.wait_for("the guest's lab port", long, || uptime(c).is_some())
        .unwrap();
    c.wait_for("the guest's httpd", long, || http(c, &first))
        .unwrap();
    let other = c.node_names().into_iter().find(|n| *n != first).unwrap();

    // Live migration: the guest keeps running (its uptime goes on).
    let before = uptime(c).unwrap();
    let t = Instant::now();
    let (out, rc) = c
        .exec(
            &first,
            &format!("crm_resource --move --resource {VM_RESOURCE} --node {other}"),
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(rc, 0, "{out}");
    c.wait_for("the migration", long, || only_on(c, &other))
        .unwrap();
    let migrated = secs(t);
    let after = uptime(c).unwrap();
    eprintln!(
        "live migration {first} -> {other}: {migrated:.2} s; guest uptime {before:.1} s -> {after:.1} s"
    );
    assert!(after > before, "the guest rebooted: {before} -> {after}");
    assert!(
        c.lab_socket(VM_DOMAIN)
            .unwrap()
            .starts_with(c.dir().join(&other))
    );
    c.exec(
        &other,
        &format!("crm_resource --clear --resource {VM_RESOURCE}"),
        Duration::from_secs(20),
    )
    .unwrap();

    // The holder dies: the VM comes up on a peer.
    let t = Instant::now();
    c.kill(&other);
    c.wait_for("the VM on a peer", long, || {
        c.locate(VM_RESOURCE).is_some_and(|n| n != other)
    })
    .unwrap();
    let running = secs(t);
    let now = c.locate(VM_RESOURCE).unwrap();
    c.wait_for("the guest's httpd on the peer", long, || http(c, &now))
        .unwrap();
    eprintln!(
        "{other} killed: {VM_RESOURCE} running on {now} after {running:.2} s, its httpd answers after {:.2} s",
        secs(t)
    );
    let t = Instant::now();
    c.boot(&other).unwrap();
    eprintln!("{other} booted and online again: {:.1} s", secs(t));
    assert!(c.is_running(&other));
}
