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
    std::fs::create_dir_all(&cfg.daemon.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.daemon.state_dir.display()))?;
    let listener = vesperd::control::bind(&cfg.daemon.socket, &access).await?;
    let metrics = match cfg.daemon.metrics {
        Some(addr) => Some(vesperd::metrics::bind(addr).await.with_context(|| {
            format!(
                "{}: key `daemon.metrics`: cannot listen on {addr}; choose a free address or remove the key",
                args.config.display()
            )
        })?),
        None => None,
    };
    let vms = vesperd::start_sessions(&cfg);
    if let Some(l) = metrics {
        tracing::info!(address = %l.local_addr()?, "metrics served at /metrics");
        tokio::spawn(vesperd::metrics::serve(l, vms.clone()));
    }
    tracing::info!(socket = %cfg.daemon.socket.display(), vms = vms.len(), "vesperd started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = vesperd::control::serve(listener, vms, access) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(&cfg.daemon.socket);
    tracing::info!("vesperd stopped");
    Ok(())
}
