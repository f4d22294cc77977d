//! The native demo: an agent on this machine (standing in for a guest), vesperd, the
//! built-in `signal` probe, and `pkill`-style SIGTERM to an `httpd`, caught and shown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{self, progress};

struct Killer(Vec<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{what} did not appear at {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the demo loads a BPF program into this machine's kernel: run `cargo xtask demo` as root"
        );
    }
    util::ensure_tracefs()?;
    progress("building vesper-agent, vesperd, vesper (release)");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin = util::target_dir()?.join("release");
    let dir = std::env::temp_dir().join(format!("vesper-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("vesper.sock");
    let agent_sock = dir.join("demo1.sock");
    std::fs::write(
        dir.join("vesper.toml"),
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\n\n[[vm]]\nname = \"demo1\"\nchannel = \"unix:{}\"\nprobes = [\"signal\"]\n",
            sock.display(),
            dir.join("state").display(),
            agent_sock.display()
        ),
    )?;
    let mut procs = Killer(Vec::new());
    progress("starting vesper-agent (on this machine, standing in for a guest's agent)");
    procs.0.push(
        Command::new(bin.join("vesper-agent"))
            .arg("--channel")
            .arg(format!("unix-listen:{}", agent_sock.display()))
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("starting vesper-agent")?,
    );
    wait_for(&agent_sock, "the agent's socket")?;
    progress("starting vesperd; it connects to the agent and loads the `signal` probe");
    procs.0.push(
        Command::new(bin.join("vesperd"))
            .arg("--config")
            .arg(dir.join("vesper.toml"))
            .stderr(std::fs::File::create(dir.join("vesperd.log"))?)
            .spawn()
            .context("starting vesperd")?,
    );
    wait_for(&sock, "vesperd's control socket")?;
    let vesper = |args: &[&str]| -> anyhow::Result<String> {
        let o = Command::new(bin.join("vesper"))
            .env("VESPER_SOCKET", &sock)
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!("vesper {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let t = Instant::now();
    while !vesper(&["status", "--json"])?.contains("\"phase\":\"loaded\"") {
        if t.elapsed() > Duration::from_secs(15) {
            bail!(
                "the signal probe did not load; see {}",
                dir.join("vesperd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    print!("\n$ vesper status\n{}", vesper(&["status"])?);

    progress("starting a process named httpd, then SIGTERM to it from a process named pkill");
    let testkit = bin.join("vesper-testkit");
    let mut httpd = Command::new(&testkit)
        .args(["victim", "--comm", "httpd", "--mortal"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(httpd.stdout.take().context("httpd stdout")?).read_line(&mut line)?;
    let pid = line.trim().to_string();
    procs.0.push(httpd);
    let sent = Instant::now();
    let out = Command::new(&testkit)
        .args(["signal", "--comm", "pkill", "--to", &pid, "--sig", "15"])
        .output()?;
    if !out.status.success() {
        bail!(
            "sending the signal failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown = loop {
        let ev = vesper(&["events", "demo1", "--probe", "signal"])?;
        if let Some(l) = ev
            .lines()
            .find(|l| l.contains("from pkill") && l.contains(&format!("pid {pid})")))
        {
            break l.to_string();
        }
        if sent.elapsed() > Duration::from_secs(5) {
            bail!(
                "the signal was not caught; see {}",
                dir.join("vesperd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let latency = sent.elapsed();
    println!("\n$ vesper events demo1 --probe signal | grep pkill\n{shown}");
    println!(
        "\ncaught and shown {:.1} ms after the kill() (polling the CLI)",
        latency.as_secs_f64() * 1000.0
    );
    print!("\n$ vesper probes demo1\n{}", vesper(&["probes", "demo1"])?);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    progress("demo done");
    Ok(())
}
