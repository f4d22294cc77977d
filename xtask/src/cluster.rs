//! `cargo xtask cluster`: the multi-node cluster lab (`vesper_tests::cluster`) from the
//! command line. `up` builds what the nodes need and leaves them running detached; the
//! other commands attach to it through `target/lab/cluster/state.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vesper_tests::cluster::{Cluster, ClusterSpec, VM_DOMAIN, VM_HTTP_PORT, VM_RESOURCE};

use crate::lab;
use crate::util::{self, progress};

const USAGE: &str =
    "usage: cargo xtask cluster up [--nodes 2|3] [--stonith] [--debian 12|13] | status | down
       cargo xtask cluster exec NODE -- CMD... | kill|cut|heal|boot NODE";

/// The one vesper.toml of every node: vesperd asks `crm_node -n` for its node name.
const VESPER_TOML: &str = r#"[daemon]
socket = "/run/vesper/vesper.sock"
state_dir = "/var/lib/vesper"

[[vm]]
name = "web1"
channel = "unix:/run/vesper/web1.sock"
probes = []
resource = "vm-web1"
watch = ["httpd", "memhog"]
deadtime_ms = 3000
debounce_ms = 1000
"#;

pub fn dir() -> anyhow::Result<PathBuf> {
    Ok(util::target_dir()?.join("lab").join("cluster"))
}

fn attach() -> anyhow::Result<Cluster> {
    Cluster::attach(&dir()?).context("is the cluster up? (cargo xtask cluster up)")
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the cluster lab makes namespaces and mounts: run it as root");
    }
    let node = args.get(1).map(String::as_str);
    match (args.first().map(String::as_str), node) {
        (Some("up"), _) => {
            let nodes = args
                .iter()
                .position(|a| a == "--nodes")
                .and_then(|i| args.get(i + 1))
                .map(|n| n.parse())
                .transpose()
                .context("--nodes takes 2 or 3")?
                .unwrap_or(2);
            let debian = args
                .iter()
                .position(|a| a == "--debian")
                .map(|i| args.get(i + 1).context("--debian takes 12 or 13"))
                .transpose()?;
            // The nodes outlive this process: the cluster is left running.
            up(
                nodes,
                args.iter().any(|a| a == "--stonith"),
                debian.map(String::as_str),
            )
            .map(|_| ())
        }
        (Some("exec"), Some(node)) => {
            let Some(cmd) = util::command_after_dashes(args) else {
                bail!("{USAGE}");
            };
            let (out, rc) = attach()?.exec(node, &cmd, Duration::from_secs(120))?;
            print!("{out}");
            std::process::exit(rc);
        }
        (Some("kill"), Some(node)) => {
            let c = attach()?;
            let t = Instant::now();
            c.kill(node);
            progress(&format!(
                "{node} killed in {:.2} s",
                t.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        (Some("cut"), Some(node)) => {
            attach()?.cut(node);
            progress(&format!("{node}'s link is down"));
            Ok(())
        }
        (Some("heal"), Some(node)) => {
            attach()?.heal(node);
            progress(&format!("{node}'s link is up"));
            Ok(())
        }
        (Some("boot"), Some(node)) => {
            let t = Instant::now();
            attach()?.boot(node)?;
            progress(&format!(
                "{node} is online in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        (Some("status"), _) => status(),
        (Some("down"), _) => {
            attach()?.down();
            progress(&format!(
                "the cluster is down (logs kept in {})",
                dir()?.display()
            ));
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// Builds what the nodes need and brings the cluster up; prints how to reach each
/// node's vesperd. `debian`: the nodes run in that Debian release's root file system
/// (its Pacemaker, corosync, libvirt and QEMU) instead of the host's.
pub fn up(nodes: usize, stonith: bool, debian: Option<&str>) -> anyhow::Result<Cluster> {
    let root = debian.map(crate::rootfs::debian).transpose()?;
    util::ensure_packages(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("corosync", "corosync"),
        ("pacemakerd", "pacemaker"),
        ("crm_resource", "pacemaker-cli-utils"),
        ("libvirtd", "libvirt-daemon"),
        ("virsh", "libvirt-clients"),
        // The guest's httpd is checked through the node running it.
        ("curl", "curl"),
    ])?;
    if !std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/VirtualDomain").exists() {
        util::ensure_packages(&[("ocf-tester", "resource-agents")])?;
    }
    // The guest runs the lab's default kernel.
    let k = lab::kernel(crate::kernel::Kernel::default())?;
    let bins = lab::static_binaries()?;
    let initrd = lab::initramfs(&k, &bins)?;
    progress("building vesperd, the CLI and the test kit (host)");
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "vesperd",
        "-p",
        "vesper-cli",
        "-p",
        "vesper-tests",
    ])?;
    let spec = ClusterSpec {
        nodes,
        dir: dir()?,
        bin_dir: util::target_dir()?.join("release"),
        kernel: k.vmlinuz,
        initrd,
        vesper_toml: VESPER_TOML.into(),
        stonith,
        root,
    };
    progress(&format!(
        "starting {nodes} nodes (corosync, pacemaker, libvirtd, vesperd each){}{}",
        if stonith { ", with fencing" } else { "" },
        debian
            .map(|d| format!(", in Debian {d}"))
            .unwrap_or_default()
    ));
    let t = Instant::now();
    let c = Cluster::up(&spec)?;
    progress(&format!(
        "cluster up in {:.1} s; {VM_RESOURCE} runs on {}",
        t.elapsed().as_secs_f64(),
        c.locate(VM_RESOURCE).unwrap_or_else(|| "?".into())
    ));
    for n in c.node_names() {
        println!("{n}: VESPER_SOCKET={}", c.vesper_socket(&n).display());
    }
    eprintln!(
        "guest: cargo xtask lab exec {VM_DOMAIN} -- CMD; its httpd is 127.0.0.1:{VM_HTTP_PORT} inside the node running it"
    );
    Ok(c)
}

fn status() -> anyhow::Result<()> {
    let c = attach()?;
    for n in c.node_names() {
        println!(
            "{n}: {}, link {}, VESPER_SOCKET={}",
            if c.is_running(&n) { "running" } else { "off" },
            if c.link_up(&n) { "up" } else { "cut" },
            c.vesper_socket(&n).display()
        );
    }
    match c.locate(VM_RESOURCE) {
        Some(node) => println!("{VM_RESOURCE} runs on {node}"),
        None => println!("{VM_RESOURCE} is not running"),
    }
    if let Some(mon) = c.crm_mon() {
        println!("{mon}");
    }
    Ok(())
}
