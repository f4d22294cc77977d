//! vesper: the operator's tool. Talks to vesperd's control socket.

mod build;
mod client;
mod libvirt;
mod render;
mod top;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use client::{CallError, call, call_streaming};
use serde_json::Value;
use vesper_api::{
    CheckReply, Empty, ErrorCode, KernelInfoReply, LoadOutcome, LoadReply, MapsReply, ProbesReply,
    Request, StatusReply, WhyReply,
};

#[derive(Debug, Parser)]
#[command(
    name = "vesper",
    version,
    about = "Probe the kernels of running VMs from the host"
)]
struct Cli {
    /// vesperd's control socket.
    #[arg(
        long,
        env = "VESPER_SOCKET",
        default_value = "/run/vesper/vesper.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every VM's session state, agent, probes and loss accounting.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A live view of every VM: state, records/s, KiB/s, drops in the guest and on the
    /// host, rate limiting and the last verdict (Ctrl-C quits).
    Top {
        /// Seconds between frames.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Draw this many frames and exit (without: until interrupted).
        #[arg(long)]
        frames: Option<u64>,
    },
    /// The probes of one VM.
    Probes {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Load probes into a VM: built-in names (`signal`), scripts (`FILE.vsp`, compiled by
    /// vesperd for that VM's kernel) or objects built with `vesper build` (`FILE.o`). Each
    /// is reported as it loads; one that fails does not stop the others.
    Load {
        vm: String,
        #[arg(required = true)]
        probes: Vec<String>,
    },
    /// Why a VM or resource failed: the latest verdicts, each with its evidence, the
    /// actions taken and the cluster's reaction.
    Why {
        target: String,
        #[arg(long)]
        json: bool,
        /// How many verdicts (latest last).
        #[arg(long, default_value_t = 5)]
        last: usize,
        /// With --json: first a line {"cluster": …} with what Pacemaker holds about the
        /// VM's resource on every node (the text output always shows it).
        #[arg(long)]
        cluster: bool,
    },
    /// Health for a cluster monitor (VirtualDomain monitor_scripts): exit 0 healthy,
    /// 1 (OCF_ERR_GENERIC) while a verdict stands, 6 (OCF_ERR_CONFIGURED) for an unknown VM.
    /// If vesperd cannot be reached, exit 0 with a warning: a dead monitor must not fail a
    /// healthy VM.
    Check { vm: String },
    /// Print a VM's kernel layouts as JSON, for `vesper build --kernel-info`.
    KernelInfo {
        vm: String,
        /// Take the keys a script needs.
        #[arg(long = "for")]
        script: Option<PathBuf>,
        /// Keys: `category:name` tracepoints, `kprobe:FUNCTION`.
        keys: Vec<String>,
    },
    /// Compile a probe script into a BPF object (manifest embedded), without a VM.
    Build {
        /// The script.
        file: PathBuf,
        /// Output object (default: FILE with .o).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Compile against this kernel's layouts (JSON KernelInfo) instead of the running kernel.
        #[arg(long)]
        kernel_info: Option<PathBuf>,
        /// Print the disassembly of every program.
        #[arg(long)]
        asm: bool,
    },
    /// Unload a probe from a VM (its maps' last values are printed).
    Unload {
        vm: String,
        probe: String,
        /// The maps as JSON (one line).
        #[arg(long)]
        json: bool,
    },
    /// Show a probe's maps and aggregations, read from the guest's kernel now.
    Maps {
        vm: String,
        probe: String,
        /// As JSON (one line: a list of maps).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (vesper.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Edit the VMs in vesperd's configuration.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Show a VM's records.
    Events {
        vm: String,
        /// Only this probe's records.
        #[arg(long)]
        probe: Option<String>,
        /// Keep printing new records as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only the last N stored records.
        #[arg(long)]
        last: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// Add a libvirt domain: its org.vesper.0 channel socket (and a QMP socket from
    /// <qemu:commandline>, if any) are read from `virsh dumpxml DOMAIN`.
    Add {
        /// The libvirt domain.
        #[arg(long, value_name = "DOMAIN")]
        libvirt: String,
        /// Read the domain's XML from this file (saved `virsh dumpxml` output) instead.
        #[arg(long, value_name = "FILE")]
        xml: Option<PathBuf>,
        /// vesperd's configuration file.
        #[arg(long, env = "VESPER_CONFIG", default_value = "/etc/vesper/vesper.toml")]
        config: PathBuf,
        /// The VM's name in vesper (default: the domain's name).
        #[arg(long)]
        name: Option<String>,
        /// The Pacemaker resource the VM backs.
        #[arg(long)]
        resource: Option<String>,
        /// Services whose death fails the resource (comma-separated).
        #[arg(long, value_delimiter = ',')]
        watch: Vec<String>,
        /// A probe loaded on every agent connect (repeatable).
        #[arg(long = "probe", value_name = "PROBE")]
        probes: Vec<String>,
        /// Print the section without changing the file.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `cmd`'s man page and its visible subcommands' (`vesper-vm-add.1`), into `dir`.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut stack = vec![(cmd.clone(), cmd.get_name().to_string())];
    while let Some((c, name)) = stack.pop() {
        let c = c
            .display_name(name.clone())
            .bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.clone()).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            stack.push((sub.clone(), format!("{name}-{}", sub.get_name())));
        }
    }
    written.sort();
    Ok(written)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("vesper: {e:#}");
        std::process::exit(1);
    }
}

/// A load request: a built-in by name, or a file's script or object.
fn load_request(vm: &str, probe: &str) -> anyhow::Result<Request> {
    let is_file = probe.ends_with(".vsp") || probe.ends_with(".o") || probe.contains('/');
    let load = |name: &str, source, file, object_hex| Request::Load {
        vm: vm.into(),
        probe: name.into(),
        source,
        file,
        object_hex,
    };
    if !is_file {
        return Ok(load(probe, None, None, None));
    }
    let name = vesper_probe::probe_name_from_path(probe).ok_or_else(|| {
        anyhow!("{probe}: the file name must be letters, digits, '-' or '_' (it names the probe)")
    })?;
    if probe.ends_with(".o") {
        let bytes = std::fs::read(probe).with_context(|| format!("reading {probe}"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(load(&name, None, None, Some(hex)))
    } else {
        let text = std::fs::read_to_string(probe).with_context(|| format!("reading {probe}"))?;
        Ok(load(&name, Some(text), Some(probe.into()), None))
    }
}

/// OCF exit codes (resource-agents' ocf-returncodes).
const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_ERR_CONFIGURED: i32 = 6;

/// The OCF exit code for a check's answer: decided by vesperd's error code, never by
/// its words.
fn check_code(answer: &Result<CheckReply, CallError>) -> i32 {
    match answer {
        Ok(c) if c.healthy => OCF_SUCCESS,
        Ok(_) => OCF_ERR_GENERIC,
        // No vesperd, no judgement: the resource agent's own monitor decides.
        Err(CallError::Unreachable { .. }) => OCF_SUCCESS,
        Err(e) if e.code() == Some(ErrorCode::UnknownVm) => OCF_ERR_CONFIGURED,
        Err(_) => OCF_ERR_GENERIC,
    }
}

fn check(socket: &Path, vm: &str) -> anyhow::Result<()> {
    let answer: Result<CheckReply, CallError> = call(socket, &Request::Check { vm: vm.into() });
    let code = check_code(&answer);
    match &answer {
        Ok(c) if c.healthy => println!(
            "{vm}: healthy (agent {}, guest {})",
            render::name_of(&c.state),
            render::name_of(&c.guest)
        ),
        Ok(c) => println!(
            "{vm}: FAILED: {}",
            render::clean(c.cause.as_deref().unwrap_or("unknown cause"))
        ),
        Err(e @ CallError::Unreachable { .. }) => {
            eprintln!("vesper check {vm}: {e}; not judging (exit 0)")
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownVm) => eprintln!("vesper check: {e}"),
        Err(e) => eprintln!("vesper check {vm}: {e}"),
    }
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    match cli.cmd {
        Cmd::Status { json } => {
            let v: StatusReply = call(&cli.socket, &Request::Status)?;
            if json {
                for vm in &v.vms {
                    writeln!(out, "{}", serde_json::to_string(vm)?)?;
                }
            } else {
                render::status(out, &v.vms)?;
                for u in &v.unanswered {
                    writeln!(out, "{}: no answer from its session ({})", u.vm, u.error)?;
                }
                let d = v.disk;
                // Only worth a line when the disk is behind.
                if d.oldest_wait_ms >= 1000 || d.dropped_bytes > 0 {
                    writeln!(
                        out,
                        "disk: {} bytes queued, oldest for {} ms, {} bytes dropped (records kept in memory)",
                        d.queued_bytes, d.oldest_wait_ms, d.dropped_bytes
                    )?;
                }
                writeln!(out, "pacemaker: {}", v.pacemaker)?;
            }
        }
        Cmd::Top { interval, frames } => {
            if !(0.1..=3600.0).contains(&interval) {
                bail!("--interval {interval}: give seconds between 0.1 and 3600");
            }
            let socket = cli.socket.clone();
            let status = move || -> anyhow::Result<Vec<vesper_api::VmStatus>> {
                let v: StatusReply = call(&socket, &Request::Status)?;
                Ok(v.vms)
            };
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            top::run(
                out,
                status,
                std::time::Duration::from_secs_f64(interval),
                frames,
                terminal,
            )?;
        }
        Cmd::Probes { vm, json } => {
            let v: ProbesReply = call(&cli.socket, &Request::Probes { vm })?;
            if json {
                for p in &v.vm.probes {
                    writeln!(out, "{}", serde_json::to_string(p)?)?;
                }
            } else {
                render::probes(out, &v.vm)?;
            }
        }
        Cmd::Load { vm, probes } => {
            let n = probes.len();
            let mut failed = Vec::new();
            for (i, probe) in probes.iter().enumerate() {
                let step = if n > 1 {
                    format!("[{}/{n}] ", i + 1)
                } else {
                    String::new()
                };
                let loaded = load_request(&vm, probe).and_then(|req| {
                    let name = match &req {
                        Request::Load { probe, .. } => probe.clone(),
                        _ => probe.clone(),
                    };
                    call::<LoadReply>(&cli.socket, &req)
                        .map(|v| (name, v.result))
                        .map_err(anyhow::Error::from)
                });
                match loaded {
                    Ok((name, LoadOutcome::Loaded { load_us, .. })) => writeln!(
                        out,
                        "{step}{name} loaded in {vm} (attached in {load_us} us)"
                    )?,
                    Ok((name, LoadOutcome::Pending)) => writeln!(
                        out,
                        "{step}{name} will load in {vm} when its agent connects"
                    )?,
                    // One clear line per failure; an unreachable vesperd ends the run.
                    Err(e)
                        if n == 1
                            || matches!(
                                e.downcast_ref::<CallError>(),
                                Some(CallError::Unreachable { .. })
                            ) =>
                    {
                        return Err(e);
                    }
                    Err(e) => {
                        eprintln!("vesper: {step}{probe}: {e:#}");
                        failed.push(probe.clone());
                    }
                }
                out.flush()?;
            }
            if !failed.is_empty() {
                bail!(
                    "{} of {n} probes loaded into {vm}; not loaded: {}",
                    n - failed.len(),
                    failed.join(", ")
                );
            }
        }
        Cmd::Why {
            target,
            json,
            last,
            cluster,
        } => {
            let v: WhyReply = call(
                &cli.socket,
                &Request::Why {
                    target: target.clone(),
                    last: Some(last),
                },
            )?;
            if json {
                if cluster {
                    let c = serde_json::json!({ "cluster": v.cluster });
                    writeln!(out, "{c}")?;
                }
                for e in &v.entries {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
            } else {
                if v.entries.is_empty() {
                    writeln!(
                        out,
                        "{target}: no verdicts on this node (nothing has failed here since vesperd started)"
                    )?;
                }
                for e in &v.entries {
                    render::why(out, e)?;
                }
                if let Some(c) = &v.cluster {
                    render::cluster(out, &target, c)?;
                }
            }
        }
        Cmd::Check { vm } => {
            out.flush()?;
            check(&cli.socket, &vm)?;
        }
        Cmd::KernelInfo {
            vm,
            script,
            mut keys,
        } => {
            if let Some(path) = script {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let shown = path.display().to_string();
                keys.extend(
                    vesper_probe::required_kernel_keys(&text, &shown)
                        .map_err(|d| anyhow!("{d}"))?,
                );
            }
            if keys.is_empty() {
                bail!(
                    "name the keys (signal:signal_generate, kprobe:do_exit) or a script with --for FILE.vsp"
                );
            }
            let v: KernelInfoReply = call(&cli.socket, &Request::KernelInfo { vm, keys })?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v.kernel)?)?;
        }
        Cmd::Build {
            file,
            output,
            kernel_info,
            asm,
        } => build::run(out, &file, output, kernel_info, asm)?,
        Cmd::Vm {
            cmd:
                VmCmd::Add {
                    libvirt: domain,
                    xml,
                    config,
                    name,
                    resource,
                    watch,
                    probes,
                    dry_run,
                },
        } => {
            let (text, source_name) = match &xml {
                Some(f) => (
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?,
                    f.display().to_string(),
                ),
                None => (
                    libvirt::dumpxml(&domain)?,
                    format!("virsh dumpxml {domain}"),
                ),
            };
            let d = libvirt::parse_domain(&text, &source_name)?;
            if d.name != domain {
                bail!(
                    "{source_name} describes domain {:?}, not {domain:?}; pass the matching --libvirt",
                    d.name
                );
            }
            let opts = libvirt::Options {
                name,
                resource,
                watch,
                probes,
            };
            let section = libvirt::section(&d, &opts);
            if dry_run {
                write!(out, "{section}")?;
            } else {
                libvirt::append(&config, &section)?;
                write!(out, "{section}")?;
                writeln!(
                    out,
                    "\nadded to {}; `systemctl reload vesperd` (or SIGHUP) starts its session",
                    config.display()
                )?;
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vesper", out);
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for written in write_man_pages(&Cli::command(), &dir)? {
                writeln!(out, "{}", written.display())?;
            }
        }
        Cmd::Unload { vm, probe, json } => {
            let req = Request::Unload {
                vm: vm.clone(),
                probe: probe.clone(),
            };
            let v: MapsReply = call(&cli.socket, &req)?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&v.maps)?)?;
            } else {
                writeln!(out, "{probe} unloaded from {vm}")?;
                write!(out, "{}", render::maps(&v.maps))?;
            }
        }
        Cmd::Maps { vm, probe, json } => {
            let req = Request::Maps {
                vm: vm.clone(),
                probe: probe.clone(),
            };
            let v: MapsReply = call(&cli.socket, &req)?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&v.maps)?)?;
            } else {
                let text = render::maps(&v.maps);
                if text.is_empty() {
                    writeln!(out, "{probe} in {vm} has no maps")?;
                }
                write!(out, "{text}")?;
            }
        }
        Cmd::Events {
            vm,
            probe,
            follow,
            json,
            last,
        } => {
            let req = Request::Events {
                vm,
                probe,
                follow,
                last,
            };
            let (Empty {}, reader) = call_streaming(&cli.socket, &req)?;
            for line in reader.lines() {
                let line = line.context("reading records from vesperd")?;
                if json {
                    writeln!(out, "{line}")?;
                } else {
                    let v: Value = serde_json::from_str(&line)
                        .context("vesperd sent a record that is not JSON")?;
                    writeln!(out, "{}", render::record(&v))?;
                }
                if follow {
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesper_api::{ApiError, GuestState, State};

    fn refused(code: ErrorCode) -> Result<CheckReply, CallError> {
        // The words say "unknown VM" in every case: only the code may decide.
        Err(CallError::Refused(ApiError::new(
            code,
            "unknown VM \"web1\"",
        )))
    }

    #[test]
    fn the_ocf_code_comes_from_the_answer_and_its_error_code() {
        let reply = |healthy| {
            Ok(CheckReply {
                vm: "web1".into(),
                healthy,
                state: State::Ready,
                guest: GuestState::Running,
                cause: None,
            })
        };
        assert_eq!(check_code(&reply(true)), OCF_SUCCESS);
        assert_eq!(check_code(&reply(false)), OCF_ERR_GENERIC);
        assert_eq!(
            check_code(&refused(ErrorCode::UnknownVm)),
            OCF_ERR_CONFIGURED
        );
        assert_eq!(check_code(&refused(ErrorCode::NoAnswer)), OCF_ERR_GENERIC);
        assert_eq!(check_code(&refused(ErrorCode::Other)), OCF_ERR_GENERIC);
        let gone = Err(CallError::Unreachable {
            socket: "/run/vesper/vesper.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(check_code(&gone), OCF_SUCCESS, "no vesperd: not judging");
    }
}
