//! A multi-node Pacemaker cluster on one machine, for the lab and the tests.
//!
//! Each node is a network namespace plugged into a private switch (10.99.0.N/24; the
//! host's network is untouched) with its own mount, UTS, IPC and PID namespaces, whose
//! init (`xtask/lab/cluster-node`) runs libvirtd, corosync, pacemakerd and vesperd with
//! private state. The one resource is `vm-web1`, the lab guest as an
//! `ocf:heartbeat:VirtualDomain` that live-migrates between nodes. Killing a node's init
//! kills its whole PID namespace: a power cut.
//!
//! Everything lives under `spec.dir`: `state.json` (so another process can attach),
//! `shared/` (files identical on every node), one directory per node (its private state,
//! its logs, and `run-vesper/`, the node's `/run/vesper`: vesperd's control socket and the
//! VM's channel sockets, reachable from the host), and `power/` (the fence switch).
//! One cluster per machine: the namespace names and the subnet are fixed.

mod client;
mod config;
mod ns;
pub mod power;
mod query;
mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use config::{VM_DOMAIN, VM_HTTP_PORT, VM_RESOURCE};
pub use status::View;

const NODE_SCRIPT: &str = include_str!("../../../../xtask/lab/cluster-node");
const FENCE_AGENT: &str = include_str!("../../../../xtask/lab/fence_vesperlab");
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster lab needs root (namespaces, mounts, a bridge)")]
    NotRoot,
    #[error("bad cluster spec: {0}")]
    Spec(String),
    #[error(
        "a lab cluster is already up (netns {0} exists) and {1}/state.json does not describe it: remove it with `ip netns delete`"
    )]
    AlreadyUp(String, PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {output}")]
    Command { cmd: String, output: String },
    #[error("timed out waiting for {what}; {detail}")]
    Timeout { what: String, detail: String },
    #[error("no node {0} in this cluster")]
    UnknownNode(String),
    #[error("{0} is not running (killed or fenced): `boot` it first")]
    NodeDown(String),
    #[error("{0} is already running")]
    NodeUp(String),
    #[error("no cluster is up in {0} (no readable state.json): {1}")]
    NoState(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    BadState(PathBuf, serde_json::Error),
}

impl ClusterError {
    fn io(context: impl Into<String>, source: std::io::Error) -> ClusterError {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// 2 or 3.
    pub nodes: usize,
    /// Everything of the cluster lives here (e.g. `target/lab/cluster`); emptied by `up`.
    pub dir: PathBuf,
    /// Host builds of `vesperd` and `vesper` (and `vesper-testkit`, the fence switch).
    pub bin_dir: PathBuf,
    /// The lab guest's kernel and initramfs.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The same vesper.toml on every node.
    pub vesper_toml: String,
    /// A fence device (`fence_vesperlab`) and stonith-enabled=true.
    pub stonith: bool,
    /// A Debian root file system with the cluster stack (corosync, Pacemaker, libvirt,
    /// QEMU) that the nodes run in instead of the host's: another Pacemaker version on
    /// the same machine. `None`: the host's own.
    pub root: Option<PathBuf>,
}

/// What another process needs to drive a running cluster (`DIR/state.json`). Node PIDs
/// change on `boot` and live in `DIR/nodeN/pid` instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    dir: PathBuf,
    bin_dir: PathBuf,
    nodes: Vec<String>,
    stonith: bool,
    /// The nodes' root file system, when not the host's.
    #[serde(default)]
    root: Option<PathBuf>,
    /// Host directories the nodes see at their own paths when they have their own root.
    #[serde(default)]
    host_dirs: Vec<PathBuf>,
    /// `/run/netns` did not exist before: `down` unmounts and removes it.
    made_netns_dir: bool,
}

#[derive(Debug)]
pub struct Cluster {
    state: State,
}

fn write(path: &Path, text: &str) -> Result<(), ClusterError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ClusterError::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::write(path, text).map_err(|e| ClusterError::io(format!("{}", path.display()), e))
}

fn join_paths(dirs: &[PathBuf]) -> String {
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.join(":")
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// Builds the switch and the nodes, boots them in parallel and returns once every node
    /// is online, a DC is elected and idle, and `vm-web1` is started.
    pub fn up(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        if !is_root() {
            return Err(ClusterError::NotRoot);
        }
        if !(2..=3).contains(&spec.nodes) {
            return Err(ClusterError::Spec(format!(
                "nodes must be 2 or 3, not {}",
                spec.nodes
            )));
        }
        for f in [&spec.kernel, &spec.initrd, &spec.bin_dir.join("vesperd")] {
            if !f.exists() {
                return Err(ClusterError::Spec(format!(
                    "{} does not exist",
                    f.display()
                )));
            }
        }
        // Canonical: the paths end up in the nodes' configurations and in logs.
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| ClusterError::io(format!("creating {}", spec.dir.display()), e))?;
        let dir = std::fs::canonicalize(&spec.dir)
            .map_err(|e| ClusterError::io(format!("{}", spec.dir.display()), e))?;
        // Each node lays an overlay over /etc and /var and a tmpfs over /run: a lab
        // directory under them would be the node's private copy, unseen by the host.
        if let Some(top) = ["/etc", "/var", "/run", "/dev/shm"]
            .into_iter()
            .find(|t| dir.starts_with(t))
        {
            return Err(ClusterError::Spec(format!(
                "the cluster lab's directory {} is under {top}, which every node covers with a private copy: use a checkout (or CARGO_TARGET_DIR) outside /etc, /var and /run",
                dir.display()
            )));
        }
        // A cluster left running from before is replaced.
        if let Ok(old) = Cluster::attach(&dir) {
            old.down();
        }
        if ns::ns_exists(ns::SWITCH_NS) {
            return Err(ClusterError::AlreadyUp(ns::SWITCH_NS.into(), dir));
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ClusterError::io(format!("emptying {}", dir.display()), e))?;
        }
        let nodes: Vec<String> = (1..=spec.nodes).map(|n| format!("node{n}")).collect();
        let bin_dir =
            std::fs::canonicalize(&spec.bin_dir).map_err(|e| ClusterError::io("bin_dir", e))?;
        let root = spec
            .root
            .as_ref()
            .map(|r| {
                std::fs::canonicalize(r)
                    .map_err(|e| ClusterError::io(format!("root file system {}", r.display()), e))
            })
            .transpose()?;
        let mut host_dirs = vec![dir.clone(), bin_dir.clone()];
        for image in [&spec.kernel, &spec.initrd] {
            let parent = std::fs::canonicalize(image)
                .map_err(|e| ClusterError::io(format!("{}", image.display()), e))?
                .parent()
                .map(Path::to_path_buf);
            host_dirs.extend(parent.filter(|p| !host_dirs.contains(p)));
        }
        let c = Cluster {
            state: State {
                dir: dir.clone(),
                bin_dir,
                nodes: nodes.clone(),
                stonith: spec.stonith,
                root,
                host_dirs,
                made_netns_dir: !Path::new(ns::NETNS_DIR).exists(),
            },
        };
        c.write_shared(spec)?;
        // Written before anything is started, so that `down` can clean up a failed `up`.
        c.save()?;
        ns::make_switch()?;
        for (i, node) in nodes.iter().enumerate() {
            ns::make_node_net(node, &config::addr(i + 1))?;
            c.prepare_node(node)?;
        }
        if spec.stonith {
            power::spawn_switch(&dir, &c.state.bin_dir)?;
        }
        let t = Instant::now();
        for node in &nodes {
            c.power_on(node)?;
        }
        c.wait_ready(&nodes, false)?;
        eprintln!(
            "cluster lab: {} nodes online with a DC in {:.1} s",
            nodes.len(),
            t.elapsed().as_secs_f64()
        );
        c.wait_started(VM_RESOURCE)?;
        c.wait_ready(&nodes, true)?;
        Ok(c)
    }

    /// The cluster described by `DIR/state.json`.
    pub fn attach(dir: &Path) -> Result<Cluster, ClusterError> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ClusterError::NoState(dir.to_path_buf(), e))?;
        let state = serde_json::from_str(&text).map_err(|e| ClusterError::BadState(path, e))?;
        Ok(Cluster { state })
    }

    fn save(&self) -> Result<(), ClusterError> {
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| ClusterError::BadState(self.state.dir.join("state.json"), e))?;
        write(&self.state.dir.join("state.json"), &text)
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    fn shared(&self) -> PathBuf {
        self.state.dir.join("shared")
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.state.dir.join(node)
    }

    fn write_shared(&self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        let shared = self.shared();
        let domain = shared.join(format!("{VM_DOMAIN}.xml"));
        let kernel =
            std::fs::canonicalize(&spec.kernel).map_err(|e| ClusterError::io("kernel", e))?;
        let initrd =
            std::fs::canonicalize(&spec.initrd).map_err(|e| ClusterError::io("initrd", e))?;
        write(&domain, &config::domain_xml(&kernel, &initrd))?;
        write(
            &shared.join("cib.xml"),
            &config::cib(spec.nodes, spec.stonith, &domain),
        )?;
        write(
            &shared.join("corosync.conf"),
            &config::corosync_conf(spec.nodes),
        )?;
        write(&shared.join("hosts"), &config::hosts(spec.nodes))?;
        write(&shared.join("vesper.toml"), &spec.vesper_toml)?;
        write(&shared.join("cluster-node"), NODE_SCRIPT)?;
        if spec.stonith {
            let agent = shared.join("sbin/fence_vesperlab");
            write(&agent, FENCE_AGENT)?;
            ns::run("chmod", &["755", &agent.display().to_string()])?;
        }
        Ok(())
    }

    /// The node's private files that start as copies: the seed CIB, /etc/hosts, and the
    /// host's users plus libvirt-qemu.
    fn prepare_node(&self, node: &str) -> Result<(), ClusterError> {
        let nd = self.node_dir(node);
        let shared = self.shared();
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| ClusterError::io(format!("{}", p.display()), e))
        };
        write(
            &nd.join("pacemaker/cib/cib.xml"),
            &read(&shared.join("cib.xml"))?,
        )?;
        write(&nd.join("hosts"), &read(&shared.join("hosts"))?)?;
        // The users of the file system the node runs in (hacluster's uid differs).
        let etc = self.root_dir().join("etc");
        let (passwd, group) =
            config::passwd_group(&read(&etc.join("passwd"))?, &read(&etc.join("group"))?);
        write(&nd.join("passwd"), &passwd)?;
        write(&nd.join("group"), &group)?;
        std::fs::create_dir_all(nd.join("run-vesper"))
            .map_err(|e| ClusterError::io("creating run-vesper", e))?;
        Ok(())
    }

    fn check_node(&self, node: &str) -> Result<usize, ClusterError> {
        self.state
            .nodes
            .iter()
            .position(|n| n == node)
            .ok_or_else(|| ClusterError::UnknownNode(node.into()))
    }

    /// The host PID of the node's init, if it runs.
    fn pid(&self, node: &str) -> Option<i32> {
        let pid = std::fs::read_to_string(ns::pid_file(&self.state.dir, node))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        ns::is_node_init(pid).then_some(pid)
    }

    /// The root file system the nodes run in.
    pub fn root_dir(&self) -> &Path {
        self.state.root.as_deref().unwrap_or(Path::new("/"))
    }

    /// Whether the cluster has a fence device (stonith-enabled).
    pub fn fencing(&self) -> bool {
        self.state.stonith
    }

    pub fn node_names(&self) -> Vec<String> {
        self.state.nodes.clone()
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.pid(node).is_some()
    }

    /// Whether the node's cable is plugged in (not `cut`).
    pub fn link_up(&self, node: &str) -> bool {
        ns::link_up(node)
    }

    /// Starts the node's init (no wait): what a power switch does.
    pub fn power_on(&self, node: &str) -> Result<(), ClusterError> {
        let n = self.check_node(node)? + 1;
        if self.pid(node).is_some() {
            return Err(ClusterError::NodeUp(node.into()));
        }
        let nd = self.node_dir(node);
        let power = if self.state.stonith {
            self.state.dir.join("power").display().to_string()
        } else {
            String::new()
        };
        let env = [
            ("NODE", node.to_string()),
            ("ADDR", config::addr(n)),
            ("NODE_DIR", nd.display().to_string()),
            ("SHARED", self.shared().display().to_string()),
            ("POWER", power),
            ("BIN_DIR", self.state.bin_dir.display().to_string()),
            (
                "ROOTFS",
                self.state
                    .root
                    .as_ref()
                    .map(|r| r.display().to_string())
                    .unwrap_or_default(),
            ),
            ("HOST_DIRS", join_paths(&self.state.host_dirs)),
        ];
        let pid = ns::spawn_node(
            node,
            &self.shared().join("cluster-node"),
            &env,
            &nd.join("node.log"),
        )?;
        write(&ns::pid_file(&self.state.dir, node), &pid.to_string())
    }

    /// `sh -c CMD` in the node (its mount, UTS, IPC, network and PID namespaces).
    pub fn exec(
        &self,
        node: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(String, i32), ClusterError> {
        self.check_node(node)?;
        let pid = self
            .pid(node)
            .ok_or_else(|| ClusterError::NodeDown(node.into()))?;
        ns::exec_in(pid, cmd, timeout)
    }

    /// A power cut: SIGKILL to the node's PID namespace (corosync, pacemaker, libvirtd,
    /// QEMU, vesperd all die at once). Returns once its init is gone.
    pub fn kill(&self, node: &str) {
        if let Some(pid) = self.pid(node) {
            ns::kill_init(pid);
        }
        let _ = std::fs::remove_file(ns::pid_file(&self.state.dir, node));
    }

    /// Unplugs the node's cable at the switch.
    pub fn cut(&self, node: &str) {
        let _ = ns::set_link(node, false);
    }

    pub fn heal(&self, node: &str) {
        let _ = ns::set_link(node, true);
    }

    /// Starts a killed node again (fresh /run, same configuration and CIB directory) and
    /// waits until it is online with an idle DC.
    pub fn boot(&self, node: &str) -> Result<(), ClusterError> {
        self.power_on(node)?;
        // The nodes that can see it: the running ones with their cable plugged in.
        let peers: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| *n == node || (self.is_running(n) && ns::link_up(n)))
            .cloned()
            .collect();
        self.wait_ready(&peers, true)
    }

    /// Stops everything: the fence switch, every node, the namespaces. Logs stay in DIR.
    pub fn down(self) {
        power::stop_switch(&self.state.dir);
        for node in &self.state.nodes {
            self.kill(node);
            ns::delete_ns(&ns::node_ns(node));
        }
        ns::delete_ns(ns::SWITCH_NS);
        let netns = Path::new(ns::NETNS_DIR);
        let empty = std::fs::read_dir(netns).is_ok_and(|mut d| d.next().is_none());
        if self.state.made_netns_dir && empty {
            // `ip netns add` bind-mounts /run/netns on itself (to share it): undo both.
            let _ = ns::run("umount", &[ns::NETNS_DIR]);
            let _ = std::fs::remove_dir(netns);
        }
        let _ = std::fs::remove_file(self.state.dir.join("state.json"));
    }
}
