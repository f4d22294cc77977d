//! The lab's power switch, for fencing: a host process (`vesper-testkit power-switch DIR`)
//! listening on `DIR/power/switch.sock`, which every node sees as
//! `/run/vesper-lab-power/switch.sock`. The fence agent `fence_vesperlab` sends one line,
//! `off|on|status NODE` or `list`, and gets one line back: `ok`, `on`, `off`, a node list,
//! or `error: …`. Off is a SIGKILL of the node's PID namespace, as `Cluster::kill`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Cluster, ClusterError};

fn power_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("power")
}

/// Starts `BIN_DIR/vesper-testkit power-switch DIR` in a session of its own.
pub(super) fn spawn_switch(dir: &Path, bin_dir: &Path) -> Result<(), ClusterError> {
    let pd = power_dir(dir);
    std::fs::create_dir_all(&pd).map_err(|e| ClusterError::io("creating power/", e))?;
    let testkit = bin_dir.join("vesper-testkit");
    // The fence agent runs in the nodes, where the host's files are visible: it finds the
    // client through the power directory.
    let link = pd.join("vesper-testkit");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&testkit, &link)
        .map_err(|e| ClusterError::io("linking vesper-testkit into power/", e))?;
    let log = std::fs::File::create(pd.join("switch.log"))
        .map_err(|e| ClusterError::io("creating power/switch.log", e))?;
    let err = log
        .try_clone()
        .map_err(|e| ClusterError::io("dup of a log file", e))?;
    let child = Command::new("setsid")
        .arg(&testkit)
        .arg("power-switch")
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| ClusterError::io(format!("starting {}", testkit.display()), e))?;
    std::fs::write(pd.join("switch.pid"), child.id().to_string())
        .map_err(|e| ClusterError::io("writing power/switch.pid", e))?;
    let sock = pd.join("switch.sock");
    for _ in 0..100 {
        if UnixStream::connect(&sock).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ClusterError::Timeout {
        what: "the power switch to listen".into(),
        detail: std::fs::read_to_string(pd.join("switch.log")).unwrap_or_default(),
    })
}

pub(super) fn stop_switch(dir: &Path) {
    let pidfile = power_dir(dir).join("switch.pid");
    let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("power-switch"));
    if ours {
        // SAFETY: kill(2) takes no pointers; the PID was checked to be our switch.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(pidfile);
}

/// Serves the switch forever (the `power-switch` subcommand).
pub fn serve(dir: &Path) -> Result<(), ClusterError> {
    let sock = power_dir(dir).join("switch.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| ClusterError::io(format!("binding {}", sock.display()), e))?;
    eprintln!("power switch listening on {}", sock.display());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // Two nodes that lost each other both ask to power the other off; the first
        // request served kills the second asker, whose queued request must then not
        // kill the survivor.
        if !peer_alive(&conn) {
            eprintln!("request from a process that is gone (its node was powered off): dropped");
            continue;
        }
        // One request at a time: fencing is rare and each answer is quick.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut line = String::new();
        let mut r = BufReader::new(&conn);
        // An empty request is `spawn_switch` checking that the switch listens.
        if r.read_line(&mut line).is_err() || line.trim().is_empty() {
            continue;
        }
        let answer = handle(dir, line.trim());
        eprintln!("{} -> {answer}", line.trim());
        let _ = (&conn).write_all(format!("{answer}\n").as_bytes());
    }
    Ok(())
}

/// Whether the process at the other end of `conn` still exists (SO_PEERCRED).
fn peer_alive(conn: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `cred`, a live local of
    // exactly that size; the fd is owned by `conn` for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    rc != 0 || cred.pid <= 0 || Path::new(&format!("/proc/{}", cred.pid)).exists()
}

fn handle(dir: &Path, req: &str) -> String {
    let c = match Cluster::attach(dir) {
        Ok(c) => c,
        Err(e) => return format!("error: {e}"),
    };
    let mut words = req.split_whitespace();
    let (action, node) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if action == "list" {
        return c.node_names().join(" ");
    }
    if !c.node_names().iter().any(|n| n == node) {
        return format!("error: no node {node:?}");
    }
    match action {
        "off" => {
            c.kill(node);
            "ok".into()
        }
        "on" => match c.power_on(node) {
            Ok(()) | Err(ClusterError::NodeUp(_)) => "ok".into(),
            Err(e) => format!("error: {e}"),
        },
        "status" => if c.is_running(node) { "on" } else { "off" }.into(),
        _ => format!("error: unknown request {req:?}"),
    }
}

/// One request to the switch at `sock`; its answer line.
pub fn request(sock: &Path, req: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}
