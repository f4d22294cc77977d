//! The lab: a real Linux guest under QEMU (TCG by default) with the static agent in its
//! initramfs, reached over a virtio-serial port as in production, and a vesperd that
//! knows it.
//!
//! Everything lives under `target/lab/`: the Debian kernels (each downloaded once, into
//! `kernel/<series>/`; see `crate::kernel`), one initramfs per kernel (rebuilt when its
//! inputs change), and one directory per running VM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::kernel::{self, GuestKernel, Kernel};
use crate::util::{self, progress};

/// The default guest's kernel release, for reports.
pub const GUEST_KERNEL: &str = "6.1.0-56-amd64 (Debian)";
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

fn lab_dir() -> anyhow::Result<PathBuf> {
    Ok(util::target_dir()?.join("lab"))
}

pub fn vm_dir(name: &str) -> anyhow::Result<PathBuf> {
    Ok(lab_dir()?.join("vms").join(name))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let usage = "usage: cargo xtask lab up NAME [--kernel 5.10|6.1|6.12] [--port P] [--kvm] | exec NAME -- CMD... | down NAME\n  --kernel: the guest's Debian kernel: 5.10 (Debian 11), 6.1 (Debian 12, the default) or 6.12 (Debian 12 backports)";
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("up"), Some(name)) => {
            let port = args
                .iter()
                .position(|a| a == "--port")
                .and_then(|i| args.get(i + 1))
                .map(|p| p.parse())
                .transpose()?;
            let kvm = args.iter().any(|a| a == "--kvm");
            let kernel = args
                .iter()
                .position(|a| a == "--kernel")
                .map(|i| {
                    args.get(i + 1)
                        .with_context(|| format!("--kernel takes {}", Kernel::CHOICES))
                        .and_then(|k| Kernel::parse(k))
                })
                .transpose()?
                .unwrap_or_default();
            up(name, port.unwrap_or(18080), kvm, kernel)
        }
        (Some("exec"), Some(name)) => {
            let Some(cmd) = util::command_after_dashes(args) else {
                bail!("{usage}");
            };
            let (out, rc) = exec(name, &cmd, Duration::from_secs(120))?;
            print!("{out}");
            std::process::exit(rc);
        }
        (Some("down"), Some(name)) => down(name),
        _ => bail!("{usage}"),
    }
}

/// A guest kernel (downloaded once): its vmlinuz, release and unpacked package root.
pub fn kernel(k: Kernel) -> anyhow::Result<GuestKernel> {
    kernel::fetch(k)
}

/// Builds the static agent and test kit (separate target dir: static flags must not
/// invalidate the host build).
pub fn static_binaries() -> anyhow::Result<PathBuf> {
    progress("building the static vesper-agent and test kit");
    util::run(
        Command::new(util::cargo_bin())
            .args([
                "build",
                "--release",
                "-p",
                "vesper-agent",
                "-p",
                "vesper-tests",
                "--target",
                STATIC_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(util::target_dir()?.join(STATIC_TARGET).join("release"))
}

/// The guest's initramfs for kernel `k` (busybox, the static agent, the kernel's modules
/// and their load order, httpd page, memhog), one per kernel, rebuilt when its inputs change.
pub fn initramfs(k: &GuestKernel, bins: &Path) -> anyhow::Result<PathBuf> {
    let series = k.kernel.series();
    let out = lab_dir()?.join(format!("initramfs-{series}.cpio.gz"));
    let here = util::workspace_root().join("xtask/lab");
    // The guest package's initramfs script starts the agent, as in a packaged guest.
    let init_top = util::workspace_root().join("packaging/guest/initramfs-init-top");
    let inputs = [
        bins.join("vesper-agent"),
        bins.join("vesper-testkit"),
        here.join("init"),
        here.join("lab-exec"),
        init_top.clone(),
        // A kernel downloaded again (a newer package) gets its own modules.
        k.stamp.clone(),
    ];
    let newest = inputs
        .iter()
        .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
        .max();
    let built = out.metadata().and_then(|m| m.modified()).ok();
    if let (Some(n), Some(b)) = (newest, built)
        && b >= n
    {
        return Ok(out);
    }
    progress(&format!(
        "building the initramfs for {} (busybox, static agent, modules, httpd page, memhog)",
        k.release
    ));
    let root = lab_dir()?.join(format!("initramfs-{series}"));
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "lib/modules",
        "www",
        "proc",
        "sys",
        "dev",
        "tmp",
        "scripts/init-top",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is not installed")?;
    std::fs::copy(bins.join("vesper-agent"), root.join("sbin/vesper-agent"))?;
    std::fs::copy(bins.join("vesper-testkit"), root.join("bin/vesper-testkit"))?;
    std::fs::copy(here.join("init"), root.join("init"))?;
    std::fs::copy(here.join("lab-exec"), root.join("bin/lab-exec"))?;
    std::fs::copy(&init_top, root.join("scripts/init-top/vesper-agent"))?;
    std::fs::write(
        root.join("bin/memhog"),
        "#!/bin/sh\nexec /bin/vesper-testkit memhog \"$@\"\n",
    )?;
    std::fs::write(root.join("www/index.html"), "<h1>vesper lab guest</h1>\n")?;
    // In dependency order: the init insmods them as listed.
    let modules = kernel::modules(k)?;
    let mut order = String::new();
    for m in &modules {
        std::fs::write(root.join("lib/modules").join(&m.file_name), &m.data)?;
        order.push_str(m.file_name.trim_end_matches(".ko"));
        order.push('\n');
    }
    std::fs::write(root.join("lib/modules/load-order"), order)?;
    for f in [
        "init",
        "bin/lab-exec",
        "bin/memhog",
        "scripts/init-top/vesper-agent",
    ] {
        util::run(Command::new("chmod").arg("755").arg(root.join(f)))?;
    }
    let sh = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        out.display()
    );
    util::run(Command::new("sh").arg("-c").arg(sh))?;
    Ok(out)
}

/// Boots guest `name` on kernel `kernel` with its httpd on 127.0.0.1:`port`, and a
/// vesperd for it; returns once the guest's agent is connected.
pub fn up(name: &str, port: u16, kvm: bool, kernel: Kernel) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the lab runs QEMU and a vesperd as root: run `cargo xtask lab up` as root");
    }
    util::ensure_packages(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
    ])?;
    let k = self::kernel(kernel)?;
    let bins = static_binaries()?;
    let initrd = initramfs(&k, &bins)?;
    progress("building vesperd and the CLI");
    util::cargo(&["build", "--release", "-p", "vesperd", "-p", "vesper-cli"])?;
    let host_bins = util::target_dir()?.join("release");

    let dir = vm_dir(name)?;
    if dir.join("qemu.pid").exists() {
        let _ = down(name);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // What the guest's `uname -r` says, for the tests.
    std::fs::write(dir.join("kernel-release"), format!("{}\n", k.release))?;
    progress(&format!(
        "booting {name} under QEMU ({}; kernel {}; port {port} → guest httpd)",
        if kvm { "KVM" } else { "TCG" },
        k.release
    ));
    let chardev = |id: &str, sock: &str| {
        format!(
            "socket,id={id},path={},server=on,wait=off",
            dir.join(sock).display()
        )
    };
    let st = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            if kvm { "kvm" } else { "tcg" },
            "-m",
            "256",
            "-smp",
            "1",
            // A guest reboot resets the VM (as libvirt's default on_reboot=restart); a
            // panic ends it, so a panicked guest is seen as gone.
            "-action",
            "panic=shutdown",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=0 loglevel=4 vesper.early"])
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args([
            "-device",
            "virtio-serial-pci",
            "-chardev",
            &chardev("vsp", "channel.sock"),
        ])
        .args(["-device", "virtserialport,chardev=vsp,name=org.vesper.0"])
        .args([
            "-chardev",
            &chardev("lab", "lab.sock"),
            "-device",
            "virtserialport,chardev=lab,name=org.vesper.lab.0",
        ])
        .args(["-device", "pvpanic"])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .args([
            "-nic",
            &format!("user,model=e1000,hostfwd=tcp:127.0.0.1:{port}-:80"),
        ])
        .arg("-pidfile")
        .arg(dir.join("qemu.pid"))
        .arg("-daemonize")
        .status()
        .context("starting qemu-system-x86_64")?;
    if !st.success() {
        bail!("QEMU failed to start ({st})");
    }
    let cfg = format!(
        // The guest backs a Pacemaker resource named after it, watching its httpd and
        // memhog; with no cluster running, the actions fail and are reported.
        "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\nnode = \"node1\"\n\n[[vm]]\nname = \"{name}\"\nchannel = \"unix:{}\"\nqmp = \"unix:{}\"\nprobes = []\ndeadtime_ms = 3000\nresource = \"{name}\"\nwatch = [\"httpd\", \"memhog\"]\ndebounce_ms = 1000\n",
        dir.join("vesper.sock").display(),
        dir.join("state").display(),
        dir.join("channel.sock").display(),
        dir.join("qmp.sock").display()
    );
    std::fs::write(dir.join("vesper.toml"), cfg)?;
    let child = Command::new(host_bins.join("vesperd"))
        .arg("--config")
        .arg(dir.join("vesper.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vesperd.log"))?)
        .spawn()
        .context("starting vesperd")?;
    std::fs::write(dir.join("vesperd.pid"), child.id().to_string())?;
    progress("waiting for the guest's agent to connect (TCG boot takes a few seconds)");
    let t = Instant::now();
    let vesper = host_bins.join("vesper");
    let mut told = 0;
    loop {
        let o = Command::new(&vesper)
            .env("VESPER_SOCKET", dir.join("vesper.sock"))
            .args(["status", "--json"])
            .output();
        if o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"state\":\"ready\"")) {
            break;
        }
        if t.elapsed() > Duration::from_secs(180) {
            bail!(
                "the guest's agent did not connect in 180 s; see {}",
                dir.join("console.log").display()
            );
        }
        // The last line the guest printed says how far the boot got.
        let waited = t.elapsed().as_secs();
        if waited >= told + 10 {
            told = waited;
            let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            let last = console
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            progress(&format!("  {waited} s; guest console: {}", last.trim()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    progress(&format!(
        "{name} is up in {:.1} s (kernel {})",
        t.elapsed().as_secs_f64(),
        k.release
    ));
    println!("VESPER_SOCKET={}", dir.join("vesper.sock").display());
    Ok(())
}

/// Runs a shell command in the guest over the lab-only port; returns output and status.
/// A guest not booted by `lab up` may run in the cluster lab, on whichever node holds it.
pub fn exec(name: &str, cmd: &str, timeout: Duration) -> anyhow::Result<(String, i32)> {
    let own = vm_dir(name)?.join("lab.sock");
    let sock = if std::os::unix::net::UnixStream::connect(&own).is_ok() {
        own
    } else {
        vesper_tests::cluster::Cluster::attach(&crate::cluster::dir()?)
            .ok()
            .and_then(|c| c.lab_socket(name))
            .unwrap_or(own)
    };
    Ok(vesper_tests::lab_port::exec(&sock, cmd, timeout)?)
}

/// Stops the vesperd `up` started for the VM (the guest keeps running).
pub fn stop_vesperd(name: &str) -> anyhow::Result<()> {
    let pidfile = vm_dir(name)?.join("vesperd.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").arg(pid.trim()).status();
        let _ = std::fs::remove_file(&pidfile);
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

pub fn down(name: &str) -> anyhow::Result<()> {
    let dir = vm_dir(name)?;
    for pidfile in ["vesperd.pid", "qemu.pid"] {
        if let Ok(pid) = std::fs::read_to_string(dir.join(pidfile)) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_file(dir.join("qemu.pid"));
    let _ = std::fs::remove_file(dir.join("vesperd.pid"));
    progress(&format!("{name} is down (logs kept in {})", dir.display()));
    Ok(())
}
