//! Development tasks. `cargo xtask test` runs every test (the README's test command);
//! `cargo xtask demo` is the main job on a fresh machine.

mod bench;
mod cluster;
mod demo;
mod kernel;
mod lab;
mod native;
mod package;
mod rootfs;
mod util;

use anyhow::bail;

const USAGE: &str = "usage: cargo xtask <test|demo|package|bench [--quick] [--render] [--probe] [--scale] [--cluster [--debian 13] [--publish]]|soak [SECONDS]|lab up|exec|down NAME [--kernel 5.10|6.1|6.12]|cluster ...>
  test   build everything and run all tests, including the root-only end-to-end tests
  demo   a 2-node Pacemaker cluster with the lab guest: httpd killed in the guest, explained,
         failed over by Pacemaker, answering again (--native: agent and vesperd on this machine alone)
  package  the host (vesper) and guest (vesper-agent) Debian packages, in target/debian/
  soak   floods and restarts for SECONDS (default 300, at most 600), checking vesperd's invariants
  lab    boot a QEMU guest with the agent (up NAME [--kernel 5.10|6.1|6.12] [--port P] [--kvm]: Debian 11's
         5.10, Debian 12's 6.1 (the default) or Debian 12 backports' 6.12), run a command in it
         (exec NAME -- CMD), stop it (down NAME)
  cluster  a Pacemaker cluster of 2 or 3 nodes on this machine (namespaces) with the lab guest
         as the VirtualDomain resource vm-web1: up [--nodes 2|3] [--stonith] [--debian 13], status, down,
         exec NODE -- CMD, kill|cut|heal|boot NODE
  bench  the evaluation: failure-notification latency against Pacemaker polling, throughput,
         overhead and footprint against bpftrace (--quick: short, native only; --render: the
         report and plots again from the last results; --cluster: only the cluster part,
         into target/bench/cluster.json and cluster.md, on Debian 13's Pacemaker with
         --debian 13, and into the published results with --publish; --scale: only one
         vesperd serving 500 VMs, published unless --quick)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo::run(&args[1..]),
        Some("lab") => lab::run(&args[1..]),
        Some("cluster") => cluster::run(&args[1..]),
        Some("package") => package::run().map(|_| ()),
        Some("soak") => soak(&args[1..]),
        Some("bench") => {
            let quick = args.iter().any(|a| a == "--quick");
            if args.iter().any(|a| a == "--cluster") {
                let debian = args
                    .iter()
                    .position(|a| a == "--debian")
                    .and_then(|i| args.get(i + 1))
                    .map(String::as_str);
                bench::run_cluster(debian, args.iter().any(|a| a == "--publish"))
            } else if args.iter().any(|a| a == "--render") {
                bench::render(quick)
            } else if args.iter().any(|a| a == "--probe") {
                bench::run_probe()
            } else if args.iter().any(|a| a == "--scale") {
                bench::run_scale(quick)
            } else {
                bench::run(quick)
            }
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// The bounded soak test (`tests/soak.rs`), outside the default run.
fn soak(args: &[String]) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the soak test loads BPF programs: run `cargo xtask soak` as root");
    }
    util::ensure_tracefs()?;
    let secs: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(300);
    if secs > 600 {
        bail!("the soak test is bounded at 600 s; asked for {secs}");
    }
    util::progress("building the binaries (release)");
    util::cargo(&["build", "--release", "--workspace", "--bins"])?;
    util::run(
        std::process::Command::new(util::cargo_bin())
            .args(["test", "--release", "-p", "vesper-tests", "--test", "soak"])
            .args(["--", "--ignored", "--nocapture"])
            .env("VESPER_SOAK_SECS", secs.to_string())
            .env("VESPER_REQUIRE_ROOT_TESTS", "1")
            .env("VESPER_BIN_DIR", util::target_dir()?.join("release")),
    )
}

/// The fuzz targets (`fuzz/`), each for `seconds`, from the checked-in seeds: a guest's
/// frames, records and BTF, the configuration, the probe compiler. cargo-fuzz needs nightly
/// features: RUSTC_BOOTSTRAP lets the stable toolchain use them.
fn fuzz(seconds: u32) -> anyhow::Result<()> {
    let has_cargo_fuzz = std::process::Command::new(util::cargo_bin())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        util::progress("installing cargo-fuzz");
        util::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let dir = util::workspace_root().join("fuzz");
    for target in FUZZ_TARGETS {
        util::progress(&format!("fuzzing {target} for {seconds} s"));
        util::run(
            std::process::Command::new(util::cargo_bin())
                .args(["fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                .arg("-print_final_stats=1")
                .env("RUSTC_BOOTSTRAP", "1")
                .current_dir(&dir),
        )?;
    }
    Ok(())
}

const FUZZ_TARGETS: [&str; 5] = [
    "frame_decoder",
    "record_decoder",
    "config",
    "compiler",
    "kernel_types",
];

fn test() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the end-to-end tests load BPF programs into the kernel: run `cargo xtask test` as root (plain `cargo test` runs the rest without root)"
        );
    }
    util::ensure_tracefs()?;
    util::ensure_packages(&[
        ("bpftool", "bpftool"),
        // A real single-node cluster for the failover tests.
        ("pacemakerd", "pacemaker"),
        ("crm_resource", "pacemaker-cli-utils"),
        ("corosync", "corosync"),
        // Validates the example libvirt domain.
        ("virt-xml-validate", "libvirt-clients"),
        ("xmllint", "libxml2-utils"),
        // A FUSE file system whose server can be stopped: the stalled disk of tests/stall.rs.
        ("bindfs", "bindfs"),
    ])?;
    util::progress("rustfmt --check");
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::progress("clippy (warnings are errors)");
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::progress("building the workspace binaries");
    util::cargo(&["build", "--workspace", "--bins"])?;
    package::run()?;
    util::progress("running all tests (root tests required) but the lab's and the cluster's");
    let bin_dir = util::target_dir()?.join("debug");
    util::run(
        std::process::Command::new(util::cargo_bin())
            .args([
                "test",
                "--workspace",
                "--",
                "--skip",
                "lab_",
                "--skip",
                "kernels::kernels_",
                "--skip",
                "cluster_",
            ])
            .env("VESPER_REQUIRE_ROOT_TESTS", "1")
            .env("VESPER_REQUIRE_PACKAGES", "1")
            .env("VESPER_DEB_DIR", package::out_dir()?)
            .env("VESPER_BIN_DIR", &bin_dir),
    )?;
    fuzz(if std::env::var_os("CI").is_some() {
        60
    } else {
        20
    })?;
    util::progress("lab tests: one QEMU guest, booted once");
    let name = "ci-lab";
    let port = 18181;
    lab::up(name, port, false, kernel::Kernel::default())?;
    let result = util::run(&mut lab_suite(&bin_dir, name, port)?);
    let _ = lab::down(name);
    if result.is_err() {
        print_lab_logs(name)?;
    }
    result?;
    other_kernels_tests(&bin_dir)?;
    cluster_tests(&bin_dir, None)?;
    // The same scenarios on Debian 13's Pacemaker 3.0 (the nodes in a Debian 13 root
    // file system): the in-process path is checked against both library versions.
    cluster_tests(&bin_dir, Some("13"))?;
    util::progress("all tests passed");
    Ok(())
}

/// The lab suite against the booted guest `name`.
fn lab_suite(
    bin_dir: &std::path::Path,
    name: &str,
    port: u16,
) -> anyhow::Result<std::process::Command> {
    let mut cmd = suite("lab", bin_dir);
    cmd.env("VESPER_REQUIRE_LAB", "1")
        .env("VESPER_LAB", name)
        .env("VESPER_LAB_DIR", lab::vm_dir(name)?)
        .env("VESPER_LAB_PORT", port.to_string());
    Ok(cmd)
}

/// A failed lab run's evidence: the guest's console and its vesperd's log.
fn print_lab_logs(name: &str) -> anyhow::Result<()> {
    let dir = lab::vm_dir(name)?;
    for log in ["console.log", "vesperd.log"] {
        util::print_tail(log, &dir.join(log), 40);
    }
    Ok(())
}

/// The lab suite's `kernels_*` tests on the other guest kernels, one guest at a time:
/// Debian 11's 5.10 and Debian 12 backports' 6.12 (the whole suite ran on 6.1). Both run
/// even if the first fails, so one CI run tells about each kernel.
fn other_kernels_tests(bin_dir: &std::path::Path) -> anyhow::Result<()> {
    // libtest's filter matches anywhere in a path (`kernels_` is in lab_0's name too):
    // list the tests and pass those named `kernels_*` (in any module) exactly.
    let listed = suite("lab", bin_dir)
        .args(["--list", "--format", "terse"])
        .output()?;
    if !listed.status.success() {
        bail!(
            "listing the lab tests failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let tests: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|t| {
            t.rsplit("::")
                .next()
                .is_some_and(|n| n.starts_with("kernels_"))
        })
        .map(str::to_string)
        .collect();
    let mut failed = Vec::new();
    for (k, name, port) in [
        (kernel::Kernel::V5_10, "ci-lab-k510", 18183),
        (kernel::Kernel::V6_12, "ci-lab-k612", 18184),
    ] {
        util::progress(&format!(
            "lab tests on kernel {}: {} kernels_* test(s), one guest",
            k.series(),
            tests.len()
        ));
        let result = lab::up(name, port, false, k).and_then(|()| {
            let mut cmd = lab_suite(bin_dir, name, port)?;
            cmd.env("VESPER_LAB_KERNEL", k.series()).arg("--exact");
            // With none yet, a name no test has: the suite runs 0 tests.
            if tests.is_empty() {
                cmd.arg("kernels_");
            } else {
                cmd.args(&tests);
            }
            util::run(&mut cmd)
        });
        let _ = lab::down(name);
        if let Err(e) = result {
            print_lab_logs(name)?;
            failed.push(format!("kernel {}: {e:#}", k.series()));
        }
    }
    if !failed.is_empty() {
        bail!("the lab's kernels_* tests failed on {}", failed.join("; "));
    }
    Ok(())
}

/// One of vesper-tests' suites that share a booted guest or cluster: in name order on one
/// thread, root tests required.
fn suite(test: &str, bin_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(util::cargo_bin());
    cmd.args(["test", "-p", "vesper-tests", "--test", test])
        .args(["--", "--test-threads=1"])
        .env("VESPER_REQUIRE_ROOT_TESTS", "1")
        .env("VESPER_BIN_DIR", bin_dir);
    cmd
}

/// The cluster scenarios (`tests/cluster.rs`) on one three-node cluster with fencing,
/// brought up once and torn down on every path.
fn cluster_tests(bin_dir: &std::path::Path, debian: Option<&str>) -> anyhow::Result<()> {
    util::progress(&format!(
        "cluster tests: three Pacemaker nodes with fencing and the lab guest, up once{}",
        debian
            .map(|d| format!(", nodes in Debian {d}"))
            .unwrap_or_else(|| ", nodes on the host's system".into())
    ));
    let c = cluster::up(3, true, debian)?;
    let result = util::run(
        suite("cluster", bin_dir)
            .env("VESPER_REQUIRE_CLUSTER", "1")
            .env("VESPER_CLUSTER_DIR", c.dir()),
    );
    if result.is_err() {
        for node in c.node_names() {
            let dir = c.dir().join(&node);
            for log in ["vesperd.log", "pacemakerd.log", "node.log"] {
                util::print_tail(&format!("{node}/{log}"), &dir.join(log), 30);
            }
        }
        if let Some(mon) = c.crm_mon() {
            eprintln!("----- crm_mon\n{mon}");
        }
    }
    c.down();
    result
}
