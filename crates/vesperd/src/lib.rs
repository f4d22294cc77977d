//! vesperd: the host daemon. One [`session::Session`] per VM, a bounded
//! [`store::RecordStore`] per VM, and the [`control`] API for the CLI.

pub mod access;
pub use vesper_config::{config, rules};
pub mod actions;
pub mod channel;
pub mod cluster;
pub mod control;
pub mod disk;
pub mod kernels;
pub mod metrics;
pub mod pacemaker;
pub mod qmp;
pub mod rate;
pub mod session;
pub mod store;
pub mod testing;

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{Daemon, VmHandle, Vms};
use crate::session::{Judge, Session};
use crate::store::RecordStore;

/// Starts the action task and one session per configured VM; returns what the control
/// API reaches.
pub fn start_sessions(cfg: &Config) -> std::io::Result<Vms> {
    let disk = disk::DiskWriter::start(disk::QUEUE_MAX_BYTES)?;
    let why = Arc::new(Mutex::new(actions::WhyLog::load(actions::WhyFile {
        path: cfg.daemon.state_dir.join("why.jsonl"),
        disk: disk.clone(),
    })));
    // The Pacemaker thread loads its library now, so `vesper status` can say which; the
    // copy of the cluster a fail is checked against follows the CIB's changes through the
    // same library series.
    if let Ok((soname, _)) = pacemaker::controller().library() {
        pacemaker::live::start(soname);
    }
    // Whether the DC counts a fail once decides how a fail is sent: known before a fault.
    pacemaker::version::spawn_watch();
    let configs = actions::ActionConfigs::default();
    let verdicts = actions::spawn(cfg.daemon.node.clone(), configs.clone(), why.clone());
    let kernels = kernels::KernelCache::new(Some(cfg.daemon.state_dir.join("kernels")));
    let daemon = Arc::new(Daemon::new(why, verdicts, configs, kernels, disk));
    reload(&daemon, cfg);
    Ok(daemon)
}

/// What a reload did to the set of VMs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Still running with their old settings: a session's settings change at restart, so
    /// that a standing verdict and the session's counters are not lost to a reload.
    pub changed: Vec<String>,
}

/// Brings the running VMs in line with `cfg`: sessions for new VMs start, sessions of VMs
/// no longer configured stop (their record files stay).
pub fn reload(daemon: &Daemon, cfg: &Config) -> Reloaded {
    let mut done = Reloaded::default();
    let running = daemon.handles();
    for vm in &cfg.vm {
        let settings = settings(cfg, vm);
        match running.iter().find(|(n, _)| *n == vm.name) {
            Some((_, h)) if h.settings != settings => done.changed.push(vm.name.clone()),
            Some(_) => {}
            None => {
                if let Some(h) = start_vm(daemon, cfg, vm, settings) {
                    daemon.with_vms(|v| v.insert(vm.name.clone(), h));
                    done.added.push(vm.name.clone());
                }
            }
        }
    }
    for (name, h) in running {
        if cfg.vm(&name).is_none() {
            for t in &h.tasks {
                t.abort();
            }
            daemon.with_vms(|v| v.remove(&name));
            write_actions(daemon, |a| a.remove(&name));
            done.removed.push(name);
        }
    }
    done
}

/// Everything that shapes a VM's session, as text to compare.
fn settings(cfg: &Config, vm: &config::VmConfig) -> String {
    format!(
        "{vm:?} {:?} {:?} {:?}",
        cfg.rules_for(vm),
        vm.rate_limits(&cfg.daemon),
        vm.store_limits(&cfg.daemon)
    )
}

fn write_actions<R>(
    daemon: &Daemon,
    f: impl FnOnce(&mut std::collections::HashMap<String, actions::VmActions>) -> R,
) -> R {
    match daemon.actions.write() {
        Ok(mut a) => f(&mut a),
        Err(p) => f(&mut p.into_inner()),
    }
}

/// Starts one VM's session (and QMP watcher).
fn start_vm(
    daemon: &Daemon,
    cfg: &Config,
    vm: &config::VmConfig,
    settings: String,
) -> Option<VmHandle> {
    // Validated at load time.
    let connector = match vm.channel_spec() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(vm = %vm.name, error = %e, "bad channel");
            return None;
        }
    };
    write_actions(daemon, |a| {
        a.insert(
            vm.name.clone(),
            actions::VmActions {
                pacemaker: vm.pacemaker.unwrap_or(vm.resource.is_some()),
                hooks: vm.hooks.clone(),
                debounce: std::time::Duration::from_millis(vm.debounce_ms),
            },
        )
    });
    let records = cfg.daemon.state_dir.join("records");
    let file = records.join(format!("{}.jsonl", vm.name));
    let store = Arc::new(Mutex::new(RecordStore::new(
        vm.store_limits(&cfg.daemon),
        Some(store::RecordFile {
            path: file,
            disk: daemon.disk.clone(),
        }),
    )));
    let (tx, rx) = mpsc::channel(64);
    let session = Session::new(
        vm.name.clone(),
        Box::new(connector),
        vm.sources.clone(),
        vm.resource.clone(),
        vm.deadtime(),
        store.clone(),
        rx,
    )
    .with_judge(Judge {
        rules: cfg.rules_for(vm),
        verdicts: daemon.verdicts.clone(),
    })
    .with_rate_limits(vm.rate_limits(&cfg.daemon))
    .with_boot_timeout(std::time::Duration::from_millis(vm.boot_timeout_ms))
    .with_seen_file(
        records.join(format!("{}.seen", vm.name)),
        daemon.disk.clone(),
    )
    .with_kernel_cache(daemon.kernels.clone());
    let mut tasks = vec![tokio::spawn(session.run()).abort_handle()];
    if let Some(path) = vm.qmp.as_deref().and_then(|q| q.strip_prefix("unix:")) {
        tasks.push(
            tokio::spawn(qmp::watch(vm.name.clone(), path.into(), tx.clone())).abort_handle(),
        );
    }
    Some(VmHandle {
        resource: vm.resource.clone(),
        cmds: tx,
        store,
        tasks,
        settings,
    })
}
