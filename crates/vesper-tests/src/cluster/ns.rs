//! The host side of the namespaces: the lab switch, each node's network namespace and
//! veth, starting a node's init detached, entering a node, killing its PID namespace.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ClusterError;

/// The switch: a network namespace holding the bridge every node's veth is plugged into.
pub const SWITCH_NS: &str = "vesper-sw";
const BRIDGE: &str = "br0";
/// Where `ip netns` keeps its bind mounts; made (and mounted on itself) by the first
/// `ip netns add`.
pub const NETNS_DIR: &str = "/run/netns";

pub fn node_ns(node: &str) -> String {
    format!("vesper-{node}")
}

/// Runs a host command that must succeed (the network plumbing).
pub fn run(program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::io(format!("starting {program}"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        return Err(ClusterError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            output: text,
        });
    }
    Ok(text)
}

pub fn ns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

pub fn make_switch() -> Result<(), ClusterError> {
    run("ip", &["netns", "add", SWITCH_NS])?;
    run("ip", &["-n", SWITCH_NS, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &["-n", SWITCH_NS, "link", "add", BRIDGE, "type", "bridge"],
    )?;
    run("ip", &["-n", SWITCH_NS, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// The node's network namespace, its `eth0` with `addr`/24, the peer (named after the
/// node) plugged into the switch. The host's own network is never touched.
pub fn make_node_net(node: &str, addr: &str) -> Result<(), ClusterError> {
    let ns = node_ns(node);
    run("ip", &["netns", "add", &ns])?;
    run(
        "ip",
        &[
            "-n", SWITCH_NS, "link", "add", node, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ],
    )?;
    run(
        "ip",
        &["-n", SWITCH_NS, "link", "set", node, "master", BRIDGE, "up"],
    )?;
    let cidr = format!("{addr}/24");
    run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// The node's cable: down is a network cut (corosync sees the peer vanish), up heals it.
pub fn set_link(node: &str, up: bool) -> Result<(), ClusterError> {
    let state = if up { "up" } else { "down" };
    run("ip", &["-n", SWITCH_NS, "link", "set", node, state]).map(|_| ())
}

/// Whether the node's cable is administratively up (`UP` among the link's flags).
pub fn link_up(node: &str) -> bool {
    run("ip", &["-n", SWITCH_NS, "-o", "link", "show", node]).is_ok_and(|o| {
        o.split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
    })
}

pub fn delete_ns(name: &str) {
    if ns_exists(name) {
        let _ = run("ip", &["netns", "delete", name]);
    }
}

/// Starts the node's init (`script`) as PID 1 of fresh mount, UTS, IPC and PID namespaces
/// inside its network namespace, in a session of its own so that it outlives the caller;
/// returns its host PID.
pub fn spawn_node(
    node: &str,
    script: &Path,
    env: &[(&str, String)],
    log: &Path,
) -> Result<i32, ClusterError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ClusterError::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| ClusterError::io("dup of a log file", e))?;
    let ns = node_ns(node);
    // `setsid` and `ip netns exec` exec in place (no fork): the child's PID is unshare's.
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", &ns])
        .args(["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork"])
        .args(["--kill-child", "--mount-proc", "sh"])
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| ClusterError::io("starting setsid ip netns exec unshare", e))?;
    let unshare = child.id() as i32;
    // The node's init is unshare's only child.
    let children = format!("/proc/{unshare}/task/{unshare}/children");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(ClusterError::Timeout {
        what: format!("{node}'s init to start"),
        detail: std::fs::read_to_string(log).unwrap_or_default(),
    })
}

/// Whether `pid` is alive and is a lab node's init (not a recycled PID).
pub fn is_node_init(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("cluster-node"))
}

/// SIGKILL to a PID namespace's init kills every process in it; waits until it is gone.
pub fn kill_init(pid: i32) {
    if !is_node_init(pid) {
        return;
    }
    // SAFETY: kill(2) takes no pointers; the PID was checked to be a lab node's init.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sh -c CMD` inside the node's namespaces, bounded by `timeout` (enforced inside the
/// node, so the command's own children are killed too); stdout and stderr interleaved.
pub fn exec_in(pid: i32, cmd: &str, timeout: Duration) -> Result<(String, i32), ClusterError> {
    let (mut r, w) = std::io::pipe().map_err(|e| ClusterError::io("pipe", e))?;
    let w2 = w
        .try_clone()
        .map_err(|e| ClusterError::io("dup of a pipe", e))?;
    let secs = format!("{:.1}", timeout.as_secs_f64().max(0.1));
    let mut c = Command::new("nsenter");
    // `-r -w`: the node's root and working directory too (a node may run in its own
    // root file system).
    c.args([
        "-t",
        &pid.to_string(),
        "-m",
        "-u",
        "-i",
        "-n",
        "-p",
        "-r",
        "-w",
    ])
    .args(["timeout", "-k", "2", &secs, "sh", "-c", cmd])
    .current_dir("/")
    .stdin(Stdio::null())
    .stdout(w)
    .stderr(w2);
    let mut child = c
        .spawn()
        .map_err(|e| ClusterError::io("starting nsenter", e))?;
    // The Command holds the pipe's write ends until dropped: without this read_to_end
    // would never see EOF.
    drop(c);
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out);
    let status = child
        .wait()
        .map_err(|e| ClusterError::io("waiting for nsenter", e))?;
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        status.code().unwrap_or(-1),
    ))
}

/// `DIR/nodeN/pid`: the host PID of the node's init while it runs.
pub fn pid_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(node).join("pid")
}
