//! The native demo: an agent on this machine (standing in for a guest), vesperd, the
//! built-in `signal` probe, and `pkill`-style SIGTERM to an `httpd`, caught, shown and
//! explained as a verdict on the VM's resource (no cluster here, so no Pacemaker action).

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::native::NativeStack;
use crate::util::{self, progress};

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
    progress(
        "starting vesper-agent (on this machine, standing in for a guest's agent) and vesperd",
    );
    let mut stack = NativeStack::start(
        &bin,
        "demo1",
        &["signal"],
        "resource = \"web\"\nwatch = [\"httpd\"]\npacemaker = false",
    )?;
    stack.wait_loaded("signal")?;
    // Watching a service also loads `oom` (the rules read it).
    stack.wait_loaded("oom")?;
    print!("\n$ vesper status\n{}", stack.vesper(&["status"])?);

    progress("starting a process named httpd, then SIGTERM to it from a process named pkill");
    let httpd = stack.spawn_testkit(&["victim", "--comm", "httpd", "--mortal"])?;
    let mut line = String::new();
    BufReader::new(httpd.stdout.take().context("httpd stdout")?).read_line(&mut line)?;
    let pid = line.trim().to_string();
    let sent = Instant::now();
    let out = Command::new(bin.join("vesper-testkit"))
        .args(["signal", "--comm", "pkill", "--to", &pid, "--sig", "15"])
        .output()?;
    if !out.status.success() {
        bail!(
            "sending the signal failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown = loop {
        let ev = stack.vesper(&["events", "demo1", "--probe", "signal"])?;
        if let Some(l) = ev
            .lines()
            .find(|l| l.contains("from pkill") && l.contains(&format!("pid {pid})")))
        {
            break l.to_string();
        }
        if sent.elapsed() > Duration::from_secs(5) {
            bail!(
                "the signal was not caught; see {}",
                stack.dir.join("vesperd.log").display()
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
    print!(
        "\n$ vesper probes demo1\n{}",
        stack.vesper(&["probes", "demo1"])?
    );
    // The verdict is shown at once, pending until its (here: no) actions are done.
    let t = Instant::now();
    let why = loop {
        let why = stack.vesper(&["why", "demo1"])?;
        if why.contains("verdict") && !why.contains("running…") {
            break why;
        }
        if t.elapsed() > Duration::from_secs(5) {
            bail!("no verdict for the killed httpd:\n{why}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    print!("\n$ vesper why demo1\n{why}");
    let check = Command::new(bin.join("vesper"))
        .env("VESPER_SOCKET", &stack.socket)
        .args(["check", "demo1"])
        .output()?;
    print!(
        "\n$ vesper check demo1; echo $?\n{}{}\n",
        String::from_utf8_lossy(&check.stdout),
        check.status.code().unwrap_or(-1)
    );
    drop(stack);
    progress("demo done");
    Ok(())
}
