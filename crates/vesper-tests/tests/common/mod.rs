//! Harness for end-to-end tests: real binaries, real kernel, temp directories.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;

/// Root tests run only as root. `cargo xtask test` (and so CI) sets
/// VESPER_REQUIRE_ROOT_TESTS=1, which turns a missing prerequisite into a failure.
pub fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var_os("VESPER_REQUIRE_ROOT_TESTS").is_some() {
        panic!("{test} needs root (BPF) and VESPER_REQUIRE_ROOT_TESTS is set");
    }
    eprintln!("SKIP {test}: needs root to load BPF programs; run `cargo xtask test` as root");
    false
}

/// A tool from the distribution (installed by `cargo xtask test`). Missing: a failure
/// under VESPER_REQUIRE_ROOT_TESTS, otherwise a skip that says so.
pub fn need_tool(name: &str) -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var_os("VESPER_REQUIRE_ROOT_TESTS").is_some() {
        panic!("{name} is not installed (cargo xtask test installs it)");
    }
    eprintln!("SKIP: {name} is not installed; `cargo xtask test` installs it");
    None
}

/// Where the workspace's binaries are (built by `cargo xtask test` before the tests).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("VESPER_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/deps/native-HASH -> target/debug
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or use `cargo xtask test`)",
        p.display()
    );
    p
}

pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct VmSpec {
    pub name: &'static str,
    /// None: no agent is started (the test provides the other end of the socket).
    pub agent: bool,
    pub probes: &'static [&'static str],
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub agents: Vec<Proc>,
    pub vesperd: Option<Proc>,
}

impl Drop for Harness {
    /// On failure, show what the daemon and agents said: the test's own message rarely
    /// tells the whole story.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(v) = &mut self.vesperd {
                eprintln!("vesperd exit status: {:?}", v.child.try_wait());
            }
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "----- {}\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
    }
}

impl Harness {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("vesper.sock")
    }
    pub fn agent_socket(&self, vm: &str) -> PathBuf {
        self.dir.path().join(format!("{vm}.sock"))
    }
    pub fn vesperd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vesperd.log")).unwrap_or_default()
    }

    /// One VM, `host1`, with an agent and these probes configured.
    pub fn single(probes: &'static [&'static str]) -> Harness {
        Harness::start(&[VmSpec {
            name: "host1",
            agent: true,
            probes,
        }])
    }

    /// The probe's loss counters summed: kernel drops, agent drops and transport loss.
    pub fn lost(&self, vm: &str) -> u64 {
        let p = &self.vm_status(vm)["probes"][0];
        ["kernel_drops", "agent_drops", "transport_lost"]
            .iter()
            .map(|k| p[*k].as_u64().unwrap_or(0))
            .sum()
    }

    /// Waits until `n` signals `sig` from `sender` to `target` are each received or
    /// accounted as lost (beyond `lost_before`); returns (received, lost).
    pub fn wait_accounted(
        &self,
        sender: &str,
        target: u32,
        sig: i32,
        n: u64,
        lost_before: u64,
    ) -> (u64, u64) {
        let (mut got, mut lost) = (0, 0);
        wait_until(
            Duration::from_secs(30),
            || {
                got = self
                    .events_json("host1", "signal")
                    .iter()
                    .filter(|r| {
                        r["sender_comm"] == sender && r["target_pid"] == target && r["sig"] == sig
                    })
                    .count() as u64;
                lost = self.lost("host1") - lost_before;
                got + lost >= n
            },
            "every signal received or accounted as lost",
        );
        (got, lost)
    }

    pub fn start(vms: &[VmSpec]) -> Harness {
        Harness::start_with(vms, "", "")
    }

    /// Like [`Harness::start`], with extra `[daemon]` lines and extra lines for every `[[vm]]`.
    pub fn start_with(vms: &[VmSpec], daemon_extra: &str, vm_extra: &str) -> Harness {
        Harness::start_in_state_dir(vms, daemon_extra, vm_extra, None)
    }

    /// Like [`Harness::start_with`], keeping vesperd's state in `state_dir` (None: a
    /// directory of the harness's).
    pub fn start_in_state_dir(
        vms: &[VmSpec],
        daemon_extra: &str,
        vm_extra: &str,
        state_dir: Option<&Path>,
    ) -> Harness {
        let vms: Vec<(&VmSpec, &str)> = vms.iter().map(|v| (v, vm_extra)).collect();
        Harness::start_each(&vms, daemon_extra, state_dir)
    }

    /// Like [`Harness::start_in_state_dir`], with extra `[[vm]]` lines for each VM.
    pub fn start_each(
        vms: &[(&VmSpec, &str)],
        daemon_extra: &str,
        state_dir: Option<&Path>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness {
            dir,
            agents: Vec::new(),
            vesperd: None,
        };
        let state = state_dir.map_or_else(|| h.dir.path().join("state"), Path::to_path_buf);
        let mut cfg = format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{daemon_extra}\n",
            h.socket().display(),
            state.display()
        );
        for (vm, vm_extra) in vms {
            let sock = h.agent_socket(vm.name);
            let probes: Vec<String> = vm.probes.iter().map(|p| format!("\"{p}\"")).collect();
            cfg.push_str(&format!(
                "[[vm]]\nname = \"{}\"\nchannel = \"unix:{}\"\nprobes = [{}]\n",
                vm.name,
                sock.display(),
                probes.join(", ")
            ));
            cfg.push_str(vm_extra);
            cfg.push('\n');
            if vm.agent {
                let log =
                    std::fs::File::create(h.dir.path().join(format!("agent-{}.log", vm.name)))
                        .unwrap();
                let child = Command::new(bin("vesper-agent"))
                    .arg("--channel")
                    .arg(format!("unix-listen:{}", sock.display()))
                    .stderr(log)
                    .spawn()
                    .expect("start vesper-agent");
                h.agents.push(Proc {
                    child,
                    name: format!("agent {}", vm.name),
                });
                wait_until(Duration::from_secs(5), || sock.exists(), "agent socket");
            }
        }
        h.launch_vesperd(&cfg);
        h
    }

    /// A vesperd with `[daemon]` lines `daemon_extra` and these `[[vm]]` sections (TOML),
    /// whose agents run elsewhere (the lab guest).
    pub fn start_vesperd(daemon_extra: &str, vms: &str) -> Harness {
        let mut h = Harness {
            dir: tempfile::tempdir().expect("tempdir"),
            agents: Vec::new(),
            vesperd: None,
        };
        let cfg = format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{daemon_extra}\n{vms}",
            h.socket().display(),
            h.dir.path().join("state").display()
        );
        h.launch_vesperd(&cfg);
        h
    }

    fn launch_vesperd(&mut self, cfg: &str) {
        let h = self;
        let cfg_path = h.dir.path().join("vesper.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(h.dir.path().join("vesperd.log")).unwrap();
        let child = Command::new(bin("vesperd"))
            .arg("--config")
            .arg(&cfg_path)
            .stderr(log)
            .spawn()
            .expect("start vesperd");
        h.vesperd = Some(Proc {
            child,
            name: "vesperd".into(),
        });
        let sock = h.socket();
        wait_until(
            Duration::from_secs(5),
            || sock.exists(),
            "vesperd control socket",
        );
    }

    /// Runs the CLI against this harness's vesperd.
    pub fn vesper(&self, args: &[&str]) -> Output {
        Command::new(bin("vesper"))
            .env("VESPER_SOCKET", self.socket())
            .args(args)
            .output()
            .expect("run vesper")
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn vesper_ok(&self, args: &[&str]) -> String {
        let o = self.vesper(args);
        assert!(
            o.status.success(),
            "vesper {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn events_json(&self, vm: &str, probe: &str) -> Vec<Value> {
        self.vesper_ok(&["events", vm, "--probe", probe, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("record is JSON"))
            .collect()
    }

    pub fn vm_status(&self, vm: &str) -> Value {
        let out = self.vesper_ok(&["status", "--json"]);
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["name"] == vm)
            .unwrap_or_else(|| panic!("{vm} not in status: {out}"))
    }

    /// Waits until `vm`'s agent is connected and has said hello.
    pub fn wait_ready(&self, vm: &str) {
        wait_until(
            Duration::from_secs(30),
            || self.vm_status(vm)["state"] == "ready",
            "the agent to connect",
        );
    }

    /// Waits until `vm`'s probe is loaded in the agent.
    pub fn wait_loaded(&self, vm: &str, probe: &str) {
        wait_until(
            Duration::from_secs(10),
            || {
                self.vm_status(vm)["probes"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == probe && p["phase"] == "loaded")
                })
            },
            "probe loaded",
        );
    }

    /// `vesper events VM -f --json` in the background; lines arrive on the receiver.
    pub fn follow(&self, vm: &str) -> (Proc, mpsc::Receiver<(Instant, Value)>) {
        let mut child = Command::new(bin("vesper"))
            .env("VESPER_SOCKET", self.socket())
            .args(["events", vm, "-f", "--json", "--last", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("vesper events -f");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send((Instant::now(), v)).is_err()
                {
                    return;
                }
            }
        });
        (
            Proc {
                child,
                name: "follower".into(),
            },
            rx,
        )
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Polls `fetch` (a probe's records) until one satisfies `pred`; returns it.
pub fn wait_record(
    what: &str,
    fetch: impl Fn() -> Vec<Value>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut found = None;
    wait_until(
        Duration::from_secs(10),
        || {
            found = fetch().into_iter().find(|r| pred(r));
            found.is_some()
        },
        what,
    );
    found.expect("wait_until returned, so a record was found")
}

/// Starts `vesper-testkit victim` (it ignores SIGTERM); returns it and its pid.
pub fn victim(comm: &str) -> (Proc, u32) {
    start_victim(comm, &[])
}

/// A victim that SIGTERM kills, like a real service.
pub fn mortal_victim(comm: &str) -> (Proc, u32) {
    start_victim(comm, &["--mortal"])
}

fn start_victim(comm: &str, extra: &[&str]) -> (Proc, u32) {
    let mut child = Command::new(bin("vesper-testkit"))
        .args(["victim", "--comm", comm])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start victim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line.trim().parse().expect("victim pid");
    (
        Proc {
            child,
            name: "victim".into(),
        },
        pid,
    )
}

/// Sends `count` signals from a process named `comm`; returns the sender's pid.
pub fn send_signals(comm: &str, to: u32, sig: i32, count: u32) -> u32 {
    let out = Command::new(bin("vesper-testkit"))
        .args([
            "signal",
            "--comm",
            comm,
            "--to",
            &to.to_string(),
            "--sig",
            &sig.to_string(),
            "--count",
            &count.to_string(),
        ])
        .output()
        .expect("run signal sender");
    assert!(
        out.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sender pid")
}

/// A memory cgroup (v1 or v2) limited to `mib`; removed on drop.
pub struct MemCgroup(pub PathBuf);

impl MemCgroup {
    pub fn new(name: &str, mib: u64) -> MemCgroup {
        let bytes = (mib << 20).to_string();
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let dir = if v1.join("memory.limit_in_bytes").exists() {
            let d = v1.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.limit_in_bytes"), &bytes).unwrap();
            d
        } else {
            let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .map(Path::new)
                .find(|p| p.join("cgroup.controllers").exists())
                .expect("no memory cgroup hierarchy (v1 memory controller or cgroup2)");
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.max"), &bytes).unwrap();
            let _ = std::fs::write(d.join("memory.swap.max"), "0");
            d
        };
        MemCgroup(dir)
    }

    /// Runs `vesper-testkit memhog` in this cgroup until the OOM killer takes it.
    pub fn run_memhog(&self, comm: &str) {
        let st = Command::new(bin("vesper-testkit"))
            .args([
                "memhog",
                "--comm",
                comm,
                "--cgroup",
                self.0.to_str().unwrap(),
                "256",
            ])
            .status()
            .unwrap();
        assert!(!st.success(), "memhog should have been OOM-killed");
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A process's resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// vesperd started on the configuration `text(dir)` (dir: a fresh directory) must refuse to
/// start with exit status 1; returns the directory, the configuration's path and what
/// vesperd said.
pub fn vesperd_refuses(text: impl FnOnce(&Path) -> String) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vesper.toml");
    std::fs::write(&cfg, text(dir.path())).unwrap();
    let o = Command::new(bin("vesperd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (dir, cfg, err)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of a native probe's `ts_ns`
/// (bpf_ktime_get_ns), so the age of a record read on this host is known.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
