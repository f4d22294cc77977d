//! `cargo xtask bench [--quick]`: the evaluation.
//!
//! Builds the release binaries and the static agent, boots the lab VM (full run only),
//! measures probe compile times and start-to-first-event here, then runs the evaluation
//! program (`crates/vesper-tests/benches/evaluation`: latency against Pacemaker's polling
//! monitor, throughput, overhead, footprint). Everything lands in one JSON file, rendered
//! into Markdown tables and SVG plots.
//!
//! A full run then brings up a 2-node Pacemaker cluster (`crate::cluster`) and runs the
//! evaluation's cluster section against it; `--cluster` runs only that section and writes
//! `target/bench/cluster.json` and `cluster.md`.
//!
//! `--scale` runs only the section of one vesperd serving 500 VMs (`run_scale`).
//!
//! A full run writes `bench/results.json`, `bench/*.svg` and `docs/evaluation.md`, the
//! published figures; `--quick` (native only, a few trials) writes the same under
//! `target/bench/`, so a short run never replaces them.

mod probe;
mod report;
mod report_cluster;
mod report_scale;
mod svg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::lab;
use crate::util::{self, progress};

const LAB: &str = "bench-lab";
const LAB_PORT: u16 = 18282;

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "date": first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "kernel": first_line("uname", &["-r"]),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_kib as f64 / 1048576.0,
        "rustc": first_line("rustc", &["--version"]),
        "bpftrace": first_line("bpftrace", &["--version"]),
        "pacemaker": first_line("pacemakerd", &["--version"]),
        "corosync": first_line("corosync", &["-v"]),
        "qemu": first_line("qemu-system-x86_64", &["--version"]),
        "guest_kernel": lab::GUEST_KERNEL,
    })
}

/// `--render`: the report and plots again from the results of the last run (after editing
/// `bench/analysis.md`, or the report's layout), measuring nothing.
pub fn render(quick: bool) -> anyhow::Result<()> {
    let out_dir = out_dir(quick)?;
    let file = out_dir.join("results.json");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(&file)
            .with_context(|| format!("{}: run `cargo xtask bench` first", file.display()))?,
    )?;
    publish(&results, quick, &out_dir)
}

/// Where a run's results go: published (`bench/`) or a quick run's (`target/bench/`).
fn out_dir(quick: bool) -> anyhow::Result<PathBuf> {
    Ok(if quick {
        util::target_dir()?.join("bench")
    } else {
        util::workspace_root().join("bench")
    })
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmarks load BPF programs and run a cluster: run `cargo xtask bench` as root"
        );
    }
    util::ensure_tracefs()?;
    util::ensure_packages(&[
        ("bpftrace", "bpftrace"),
        ("pacemakerd", "pacemaker"),
        ("crm_resource", "pacemaker-cli-utils"),
        ("corosync", "corosync"),
        ("curl", "curl"),
    ])?;
    let out_dir = out_dir(quick)?;
    std::fs::create_dir_all(&out_dir)?;
    progress("building the release binaries");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin = util::target_dir()?.join("release");
    let static_agent = lab::static_binaries()?.join("vesper-agent");

    let mut results = serde_json::Map::new();
    results.insert("machine".into(), machine());
    progress("probe compile time and start-to-first-event");
    results.insert("probe".into(), probe::run(&bin, quick)?);

    if !quick {
        lab::up(LAB, LAB_PORT, false, crate::kernel::Kernel::default())?;
        // The evaluation starts vesperds of its own for the guest.
        lab::stop_vesperd(LAB)?;
    }
    let raw = util::target_dir()?.join("bench/evaluation.json");
    std::fs::create_dir_all(raw.parent().context("target/bench")?)?;
    let _ = std::fs::remove_file(&raw);
    progress("the evaluation: footprint, overhead, throughput, notification latency");
    let mut cmd = Command::new(util::cargo_bin());
    cmd.args(["bench", "-p", "vesper-tests", "--bench", "evaluation", "--"])
        .arg("--out")
        .arg(&raw)
        .env("VESPER_BIN_DIR", &bin)
        .env("VESPER_STATIC_AGENT", &static_agent);
    if quick {
        cmd.arg("--quick");
    } else {
        cmd.env("VESPER_LAB", LAB)
            .env("VESPER_LAB_DIR", lab::vm_dir(LAB)?)
            .env("VESPER_LAB_PORT", LAB_PORT.to_string());
    }
    let ran = util::run(&mut cmd);
    if !quick {
        let _ = lab::down(LAB);
    }
    ran?;
    let eval: Value = serde_json::from_str(
        &std::fs::read_to_string(&raw).with_context(|| raw.display().to_string())?,
    )?;
    if let Value::Object(m) = eval {
        results.extend(m);
    }
    if !quick {
        // After the lab VM is down: the cluster's guests need both cores. A cluster section
        // that fails keeps what ran before it (written, not published), so that section can
        // be run alone with `--cluster --publish` instead of the whole evaluation again.
        for debian in [None, Some("13")] {
            match cluster_section(&bin, &static_agent, debian) {
                Ok(section) => {
                    results.insert(cluster_key(debian), section);
                }
                Err(e) => {
                    write(
                        &out_dir.join("results.json"),
                        &serde_json::to_string_pretty(&Value::Object(results))?,
                    )?;
                    return Err(e.context(format!(
                        "the cluster section {}; the rest is in results.json: run \
                         `cargo xtask bench --cluster{} --publish` for this section",
                        cluster_key(debian),
                        debian.map(|d| format!(" --debian {d}")).unwrap_or_default()
                    )));
                }
            }
        }
    }
    let results = Value::Object(results);
    write(
        &out_dir.join("results.json"),
        &serde_json::to_string_pretty(&results)?,
    )?;
    publish(&results, quick, &out_dir)
}

/// Downs the cluster on every path out, failures included.
struct Down(Option<vesper_tests::cluster::Cluster>);

impl Drop for Down {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.down();
        }
    }
}

/// One lab cluster per machine (fixed namespace names): waits for anyone else's to go
/// (up to 10 minutes) rather than replacing it.
fn wait_no_cluster() -> anyhow::Result<()> {
    for i in 0..60 {
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.lines().any(|l| l.starts_with("vesper-")) {
            return Ok(());
        }
        if i == 0 {
            progress("another lab cluster is up: waiting for it to go down");
        }
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
    bail!("a lab cluster (netns vesper-*) was still up after 10 minutes")
}

/// Where a cluster section lands in the results: the host's Pacemaker, or a Debian
/// release's (`--debian`).
fn cluster_key(debian: Option<&str>) -> String {
    match debian {
        None => "cluster".into(),
        Some(d) => format!("cluster_debian{d}"),
    }
}

/// Brings a 2-node cluster up (two nodes without fencing lose a node cleanly), on the
/// host's system or in `debian`'s, runs the evaluation's cluster section against it, and
/// downs it.
fn cluster_section(bin: &Path, static_agent: &Path, debian: Option<&str>) -> anyhow::Result<Value> {
    wait_no_cluster()?;
    progress(&format!(
        "the evaluation on a 2-node cluster{}: use cases, node loss, live migration",
        debian
            .map(|d| format!(" in Debian {d}"))
            .unwrap_or_default()
    ));
    let c = Down(Some(crate::cluster::up(2, false, debian)?));
    let pacemaker =
        c.0.as_ref()
            .and_then(|c| {
                c.exec("node1", "pacemakerd --version", Duration::from_secs(20))
                    .ok()
            })
            .and_then(|(out, _)| out.lines().next().map(str::to_string))
            .unwrap_or_default();
    let raw = util::target_dir()?.join("bench/evaluation-cluster.json");
    let _ = std::fs::remove_file(&raw);
    let dir = c.0.as_ref().context("cluster")?.dir().to_path_buf();
    util::run(
        Command::new(util::cargo_bin())
            .args(["bench", "-p", "vesper-tests", "--bench", "evaluation", "--"])
            .args(["--only", "cluster", "--out"])
            .arg(&raw)
            .env("VESPER_BIN_DIR", bin)
            .env("VESPER_STATIC_AGENT", static_agent)
            .env("VESPER_CLUSTER_DIR", &dir),
    )?;
    drop(c);
    let eval: Value = serde_json::from_str(
        &std::fs::read_to_string(&raw).with_context(|| raw.display().to_string())?,
    )?;
    let mut section = eval["cluster"].clone();
    section["pacemaker"] = json!(pacemaker);
    section["system"] = json!(
        debian.map_or("the host's (Debian 12)".to_string(), |d| format!(
            "Debian {d} (a root file system from Debian's archive)"
        ))
    );
    Ok(section)
}

/// `--cluster [--debian 13]`: only that cluster section, into `target/bench/cluster.json`
/// and `cluster.md`; with `--publish`, also into the published results (`bench/`) and the
/// report.
pub fn run_cluster(debian: Option<&str>, publish_it: bool) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the cluster lab makes namespaces and mounts: run `cargo xtask bench --cluster` as root"
        );
    }
    util::ensure_packages(&[("curl", "curl")])?;
    progress("building the release binaries");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin = util::target_dir()?.join("release");
    let static_agent = lab::static_binaries()?.join("vesper-agent");
    let out_dir = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let key = cluster_key(debian);
    let section = cluster_section(&bin, &static_agent, debian)?;
    let results = json!({ "machine": machine(), key.clone(): section.clone() });
    write(
        &out_dir.join("cluster.json"),
        &serde_json::to_string_pretty(&results)?,
    )?;
    write(
        &out_dir.join("cluster.md"),
        &report_cluster::section(&results),
    )?;
    if !publish_it {
        return Ok(());
    }
    let published = self::out_dir(false)?;
    let file = published.join("results.json");
    let mut all: Value = serde_json::from_str(
        &std::fs::read_to_string(&file).with_context(|| file.display().to_string())?,
    )?;
    all[key] = section;
    write(&file, &serde_json::to_string_pretty(&all)?)?;
    publish(&all, false, &published)
}

/// `--probe`: only the compiler's section (compile times, with the kernel's types, start
/// to first event), at the full run's counts, into the published results and the report.
pub fn run_probe() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the probe section loads BPF programs: run `cargo xtask bench --probe` as root");
    }
    util::ensure_tracefs()?;
    progress("building the release binaries");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin = util::target_dir()?.join("release");
    let section = probe::run(&bin, false)?;
    let published = self::out_dir(false)?;
    let file = published.join("results.json");
    let mut all: Value = serde_json::from_str(
        &std::fs::read_to_string(&file).with_context(|| file.display().to_string())?,
    )?;
    all["probe"] = section;
    write(&file, &serde_json::to_string_pretty(&all)?)?;
    publish(&all, false, &published)
}

/// `--scale [--quick]`: only the scale section (one vesperd, 500 VMs; see
/// `benches/evaluation/scale.rs`), into `target/bench/scale.json`; a full-length run
/// (without `--quick`) also into the published results and the report.
pub fn run_scale(quick: bool) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the scale section loads BPF programs: run `cargo xtask bench --scale` as root");
    }
    util::ensure_tracefs()?;
    progress("building the release binaries");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin = util::target_dir()?.join("release");
    let raw = util::target_dir()?.join("bench/scale.json");
    std::fs::create_dir_all(raw.parent().context("target/bench")?)?;
    let _ = std::fs::remove_file(&raw);
    progress("the evaluation's scale section: one vesperd, 500 VMs");
    let mut cmd = Command::new(util::cargo_bin());
    cmd.args(["bench", "-p", "vesper-tests", "--bench", "evaluation", "--"])
        .args(["--only", "scale", "--out"])
        .arg(&raw)
        .env("VESPER_BIN_DIR", &bin);
    if quick {
        cmd.arg("--quick");
    }
    util::run(&mut cmd)?;
    if quick {
        return Ok(());
    }
    let eval: Value = serde_json::from_str(
        &std::fs::read_to_string(&raw).with_context(|| raw.display().to_string())?,
    )?;
    let published = self::out_dir(false)?;
    let file = published.join("results.json");
    let mut all: Value = serde_json::from_str(
        &std::fs::read_to_string(&file).with_context(|| file.display().to_string())?,
    )?;
    all["scale"] = eval["scale"].clone();
    write(&file, &serde_json::to_string_pretty(&all)?)?;
    publish(&all, false, &published)
}

/// Plots and the report from `results`.
fn publish(results: &Value, quick: bool, out_dir: &Path) -> anyhow::Result<()> {
    let root = util::workspace_root();
    let plots = svg::plots(results);
    for (name, text) in &plots {
        write(&out_dir.join(name), text)?;
    }
    let doc = if quick {
        out_dir.join("evaluation.md")
    } else {
        root.join("docs/evaluation.md")
    };
    let plot_dir = relative(doc.parent().context("doc dir")?, out_dir);
    let analysis = std::fs::read_to_string(root.join("bench/analysis.md")).unwrap_or_default();
    write(
        &doc,
        &report::render(results, &plot_dir.to_string_lossy(), &analysis),
    )?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| path.display().to_string())?;
    progress(&format!("wrote {}", path.display()));
    Ok(())
}

/// `to` as seen from `from` (both under the workspace): `../bench` or `.`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    if from == to {
        return PathBuf::from(".");
    }
    let up = from
        .strip_prefix(util::workspace_root())
        .map_or(0, |p| p.components().count());
    let mut p = PathBuf::new();
    for _ in 0..up {
        p.push("..");
    }
    p.join(to.strip_prefix(util::workspace_root()).unwrap_or(to))
}
