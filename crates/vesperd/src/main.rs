//! vesperd: the Vesper host daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Probes guest kernels from the host: sessions to guest agents, record store, control API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = vesperd::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log filter (tracing's EnvFilter syntax), e.g. info or vesperd=debug.
    #[arg(long, env = "VESPER_LOG", default_value = "info")]
    log: String,
    /// Check the configuration (and every rule's condition), print a summary and exit.
    #[arg(long)]
    check_config: bool,
    /// Write vesperd.8 into DIR and exit (for packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    man: Option<PathBuf>,
}

/// SIGHUP: VMs added to the configuration start, VMs taken out stop. A configuration that
/// does not load changes nothing: vesperd goes on with the one it has, and says why.
fn reload(
    path: &std::path::Path,
    current: &mut vesperd::config::Config,
    vms: &vesperd::control::Vms,
) {
    let cfg = match vesperd::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration not reloaded; vesperd goes on with the previous one");
            return;
        }
    };
    let done = vesperd::reload(vms, &cfg);
    tracing::info!(added = ?done.added, removed = ?done.removed, "configuration reloaded");
    for vm in &done.changed {
        tracing::warn!(vm = %vm, "this VM's settings changed; they take effect when vesperd restarts");
    }
    if format!("{:?}", cfg.daemon) != format!("{:?}", current.daemon) {
        tracing::warn!("[daemon] settings changed; they take effect when vesperd restarts");
    }
    *current = cfg;
}

/// The open-file limit. Each VM holds about three descriptors (its channel, its record
/// file and its seen file in the disk writer, a QMP socket): 500 VMs need more than the
/// 1024 a service gets by default, so vesperd raises its soft limit to the hard one.
mod nofile {
    /// (soft limit before, hard limit, soft limit now); None if it cannot be read.
    pub fn raise() -> Option<(u64, u64, u64)> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid, exclusive pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads one valid rlimit; raising soft to hard needs no privilege.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some((before, lim.rlim_max, lim.rlim_cur))
    }
}

/// Descriptors vesperd needs for `vms` VMs, with room for CLI connections and followers.
fn fds_needed(vms: usize) -> u64 {
    vms as u64 * 3 + 256
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(args).await {
        eprintln!("vesperd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.man {
        let path = dir.join("vesperd.8");
        let mut page = Vec::new();
        clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .section("8")
            .render(&mut page)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
        return Ok(());
    }
    let cfg = vesperd::config::Config::load(&args.config)?;
    let access = vesperd::access::Access::new(cfg.daemon.socket_group.as_deref())?;
    if args.check_config {
        for vm in &cfg.vm {
            let rules: Vec<String> = cfg.rules_for(vm).into_iter().map(|r| r.name).collect();
            println!(
                "vm {}: channel {}, resource {}, rules: {}",
                vm.name,
                vm.channel,
                vm.resource.as_deref().unwrap_or("none"),
                if rules.is_empty() {
                    "none".into()
                } else {
                    rules.join(", ")
                }
            );
        }
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    match nofile::raise() {
        Some((before, hard, now)) => {
            if now < fds_needed(cfg.vm.len()) {
                tracing::warn!(
                    limit = now,
                    hard,
                    vms = cfg.vm.len(),
                    needed = fds_needed(cfg.vm.len()),
                    "the open-file limit is low for this many VMs: record files and connections will fail with \"Too many open files\"; raise the hard limit (LimitNOFILE= in the service unit)"
                );
            } else if now > before {
                tracing::debug!(from = before, to = now, "open-file limit raised");
            }
        }
        None => tracing::warn!("cannot read the open-file limit"),
    }
    std::fs::create_dir_all(&cfg.daemon.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.daemon.state_dir.display()))?;
    let listener = vesperd::control::bind(&cfg.daemon.socket, &access).await?;
    // A metrics address that cannot be bound stops vesperd at start, with the key named.
    let metrics = match cfg.daemon.metrics {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "{}: key `daemon.metrics`: cannot listen on {addr}; choose a free address or remove the key",
                args.config.display()
            )
        })?),
        None => None,
    };
    let vms = vesperd::start_sessions(&cfg).context("starting the disk writer thread")?;
    if let Some(l) = metrics {
        tracing::info!(address = %l.local_addr()?, "metrics served at /metrics");
        tokio::spawn(vesperd::metrics::serve(l, vms.clone()));
    }
    tracing::info!(socket = %cfg.daemon.socket.display(), vms = vms.len(), "vesperd started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let serve = vesperd::control::serve(listener, vms.clone(), access);
    tokio::pin!(serve);
    let mut current = cfg.clone();
    loop {
        tokio::select! {
            _ = &mut serve => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&args.config, &mut current, &vms),
        }
    }
    let _ = std::fs::remove_file(&current.daemon.socket);
    // What is queued for the disk is written, unless the disk is stalled: then it is lost
    // (counted in the log line), as it would be in a crash.
    if !vms.disk.flush(std::time::Duration::from_secs(2)) {
        let s = vms.disk.stats();
        tracing::warn!(
            queued_bytes = s.queued_bytes,
            "stopping with writes still queued for a stalled disk"
        );
    }
    tracing::info!("vesperd stopped");
    Ok(())
}
