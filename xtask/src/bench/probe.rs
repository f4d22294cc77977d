//! The probe measurements of `cargo xtask bench`, printed as tables (never asserted on):
//!
//! - compile: each built-in probe compiled against this machine's kernel, in process.
//! - compile with kernel types: this kernel's BTF parsed (cold), and each `examples/tools`
//!   script compiled with the parsed types (cached).
//! - start-to-first-event: from the command that loads a probe (`vesper load`, or starting
//!   `bpftrace -e`) to the first record of an event that fires every 2 ms, seen by the user.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use vesper_probe::{KernelInfo, builtin};

use crate::native::NativeStack;

pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(mut xs: Vec<f64>) -> Stats {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len().max(1) as f64;
    Stats {
        mean: xs.iter().sum::<f64>() / n,
        p50: xs.get(xs.len() / 2).copied().unwrap_or(0.0),
        min: xs.first().copied().unwrap_or(0.0),
        max: xs.last().copied().unwrap_or(0.0),
    }
}

/// Compile times and start-to-first-event, as JSON for the results.
pub fn run(bin: &Path, quick: bool) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "compile": compile_times(if quick { 50 } else { 500 })?,
        "compile_with_types": compile_with_types(if quick { 5 } else { 20 }, if quick { 50 } else { 500 })?,
        "start_to_first_event": start_to_first_event(bin, if quick { 3 } else { 10 })?,
    }))
}

fn compile_times(n: usize) -> anyhow::Result<serde_json::Value> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    println!(
        "\ncompile time per built-in probe, against this kernel ({release}), {n} runs each (target: < 20 ms)\n"
    );
    println!("| probe | programs | BPF insns | object bytes | mean µs | p50 µs | max µs |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for name in builtin::names() {
        let keys = builtin::events(name)?;
        let kernel = KernelInfo::read_tracefs(Path::new("/sys/kernel/tracing"), &release, &keys);
        let mut times = Vec::with_capacity(n);
        let mut last = None;
        for _ in 0..n {
            let t = Instant::now();
            let p = builtin::build(name, &kernel)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            last = Some(p);
        }
        let p = last.context("no runs")?;
        // Instructions across the probe's programs (a 16-byte ld_imm64 counts once).
        let insns = vesper_probe::disasm::disasm_object(&p.object, &p.manifest)
            .lines()
            .filter(|l| l.starts_with(' '))
            .count();
        let s = stats(times);
        println!(
            "| {name} | {} | {insns} | {} | {:.0} | {:.0} | {:.0} |",
            p.manifest.attach.len(),
            p.object.len(),
            s.mean,
            s.p50,
            s.max
        );
        rows.push(serde_json::json!({"probe": name, "programs": p.manifest.attach.len(), "insns": insns, "object_bytes": p.object.len(), "mean_us": s.mean, "p50_us": s.p50, "max_us": s.max}));
    }
    Ok(serde_json::Value::Array(rows))
}

/// The examples that read kernel types, compiled against this machine's own BTF: the BTF's
/// parse (what a new kernel build costs once, "cold") and each compile with the parsed types
/// in hand (what every later load costs, "cached").
fn compile_with_types(parses: usize, n: usize) -> anyhow::Result<serde_json::Value> {
    let path = "/sys/kernel/btf/vmlinux";
    let blob = std::fs::read(path).with_context(|| format!("{path} (this kernel's BTF)"))?;
    let mut parse_ms = Vec::new();
    let mut types = None;
    for _ in 0..parses {
        let t = Instant::now();
        let parsed = vesper_probe::kernel_types::KernelTypes::parse(&blob)?;
        parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
        types = Some(std::sync::Arc::new(parsed));
    }
    let types = types.context("no parse")?;
    let p = stats(parse_ms);
    println!(
        "
kernel types: this kernel's BTF ({} bytes, {} types) parsed in {:.1} ms mean ({:.1}–{:.1}), {parses} runs
",
        blob.len(),
        types.len(),
        p.mean,
        p.min,
        p.max
    );
    println!("| script | BPF insns | mean µs | p50 µs | max µs |");
    println!("|---|---|---|---|---|");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut rows = Vec::new();
    let dir = crate::util::workspace_root().join("examples/tools");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "vsp"))
        .collect();
    scripts.sort();
    for script in scripts {
        let file = script.display().to_string();
        let text = std::fs::read_to_string(&script)?;
        let keys =
            vesper_probe::required_kernel_keys(&text, &file).map_err(|d| anyhow::anyhow!("{d}"))?;
        let mut kernel =
            KernelInfo::read_tracefs(Path::new("/sys/kernel/tracing"), release.trim(), &keys);
        kernel.types = Some(types.clone());
        // This host has no kprobes: its functions count as present, as a guest's would.
        for k in keys.iter().filter(|k| k.starts_with("kprobe:")) {
            kernel.formats.entry(k.clone()).or_insert_with(|| {
                Some(vesper_probe::TracepointFormat {
                    event: k.clone(),
                    id: None,
                    fields: vec![],
                })
            });
        }
        let name = vesper_probe::probe_name_from_path(&file).context("script name")?;
        let mut times = Vec::with_capacity(n);
        let mut last = None;
        for _ in 0..n {
            let t = Instant::now();
            let c = vesper_probe::compile(&text, &file, &name, &kernel)
                .map_err(|d| anyhow::anyhow!("{d}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            last = Some(c);
        }
        let c = last.context("no runs")?;
        let insns = vesper_probe::disasm::disasm_object(&c.object, &c.manifest)
            .lines()
            .filter(|l| l.starts_with(' '))
            .count();
        let s = stats(times);
        println!(
            "| {name} | {insns} | {:.0} | {:.0} | {:.0} |",
            s.mean, s.p50, s.max
        );
        rows.push(serde_json::json!({"script": name, "insns": insns, "mean_us": s.mean, "p50_us": s.p50, "max_us": s.max}));
    }
    Ok(serde_json::json!({
        "btf_bytes": blob.len(),
        "types": types.len(),
        "parse_ms": {"mean": p.mean, "min": p.min, "max": p.max, "runs": parses},
        "scripts": rows,
    }))
}

/// Reads lines from a child's stdout on a thread.
fn lines_of(child: &mut std::process::Child) -> anyhow::Result<mpsc::Receiver<(Instant, String)>> {
    let out = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn start_to_first_event(bin: &Path, trials: usize) -> anyhow::Result<serde_json::Value> {
    let mut stack = NativeStack::start(bin, "bench1", &[], "")?;
    let victim = stack.spawn_testkit(&["victim", "--comm", "tickee"])?;
    let mut line = String::new();
    BufReader::new(victim.stdout.take().context("victim stdout")?).read_line(&mut line)?;
    let pid = line.trim().to_string();
    stack.spawn_testkit(&[
        "ticker",
        "--comm",
        "ticker",
        "--to",
        &pid,
        "--sig",
        "10",
        "--every-ms",
        "2",
    ])?;
    let script = stack.dir.join("tick.vsp");
    std::fs::write(
        &script,
        "tracepoint:signal:signal_generate /comm == \"ticker\"/ { emit { sig = args.sig, target = args.pid } }\n",
    )?;
    let script_s = script.to_string_lossy().into_owned();

    let mut vesper_ms = Vec::new();
    for _ in 0..trials {
        let mut follow = Command::new(bin.join("vesper"))
            .env("VESPER_SOCKET", &stack.socket)
            .args([
                "events", "bench1", "--probe", "tick", "-f", "--json", "--last", "0",
            ])
            .stdout(Stdio::piped())
            .spawn()?;
        let rx = lines_of(&mut follow)?;
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        stack.vesper(&["load", "bench1", &script_s])?;
        let (t1, _) = rx
            .recv_timeout(Duration::from_secs(10))
            .context("no record from the vesper probe")?;
        vesper_ms.push((t1 - t0).as_secs_f64() * 1000.0);
        let _ = follow.kill();
        let _ = follow.wait();
        stack.vesper(&["unload", "bench1", "tick"])?;
    }
    let mut bpftrace_ms = Vec::new();
    for _ in 0..trials {
        let t0 = Instant::now();
        let mut bt = Command::new("bpftrace")
            .args(["-e", "tracepoint:signal:signal_generate /comm == \"ticker\"/ { printf(\"%d %d\\n\", args->sig, args->pid); }"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let rx = lines_of(&mut bt)?;
        let t1 = loop {
            let (t, l) = rx
                .recv_timeout(Duration::from_secs(30))
                .context("no output from bpftrace")?;
            if l.starts_with("10 ") {
                break t;
            }
        };
        bpftrace_ms.push((t1 - t0).as_secs_f64() * 1000.0);
        let _ = bt.kill();
        let _ = bt.wait();
    }
    let bt_version = Command::new("bpftrace")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "\nstart-to-first-event: command start → first record of an event firing every 2 ms, {trials} trials\n"
    );
    println!("| tool | mean ms | p50 ms | min ms | max ms |");
    println!("|---|---|---|---|---|");
    let v = stats(vesper_ms.clone());
    let b = stats(bpftrace_ms.clone());
    println!(
        "| vesper load (compile on host + ship + verify + attach) | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.mean, v.p50, v.min, v.max
    );
    println!(
        "| {bt_version} -e | {:.1} | {:.1} | {:.1} | {:.1} |",
        b.mean, b.p50, b.min, b.max
    );
    Ok(
        serde_json::json!({"vesper_ms": vesper_ms, "bpftrace_ms": bpftrace_ms, "bpftrace_version": bt_version}),
    )
}
