//! vesperd: the host daemon. One [`session::Session`] per VM, a bounded
//! [`store::RecordStore`] per VM, and the [`control`] API for the CLI.

pub mod access;
pub mod actions;
pub mod channel;
pub mod config;
pub mod control;
pub mod metrics;
pub mod qmp;
pub mod rate;
pub mod rules;
pub mod session;
pub mod store;
pub mod testing;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{Daemon, VmHandle, Vms};
use crate::session::{Judge, Session};
use crate::store::RecordStore;

/// Starts the action task and one session per configured VM; returns what the control
/// API reaches.
pub fn start_sessions(cfg: &Config) -> Vms {
    let why = Arc::new(Mutex::new(actions::WhyLog::new(Some(
        cfg.daemon.state_dir.join("why.jsonl"),
    ))));
    let vm_actions = cfg
        .vm
        .iter()
        .map(|vm| {
            let a = actions::VmActions {
                pacemaker: vm.pacemaker.unwrap_or(vm.resource.is_some()),
                hooks: vm.hooks.clone(),
                debounce: std::time::Duration::from_millis(vm.debounce_ms),
            };
            (vm.name.clone(), a)
        })
        .collect();
    let verdicts = actions::spawn(cfg.daemon.node.clone(), vm_actions, why.clone());
    let mut vms = BTreeMap::new();
    for vm in &cfg.vm {
        let file = cfg
            .daemon
            .state_dir
            .join("records")
            .join(format!("{}.jsonl", vm.name));
        let store = Arc::new(Mutex::new(RecordStore::new(
            vm.store_limits(&cfg.daemon),
            Some(file),
        )));
        let (tx, rx) = mpsc::channel(64);
        // Validated at load time.
        let connector = match vm.channel_spec() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(vm = %vm.name, error = %e, "bad channel");
                continue;
            }
        };
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
            verdicts: verdicts.clone(),
        })
        .with_rate_limits(vm.rate_limits(&cfg.daemon))
        .with_boot_timeout(std::time::Duration::from_millis(vm.boot_timeout_ms))
        .with_seen_file(
            cfg.daemon
                .state_dir
                .join("records")
                .join(format!("{}.seen", vm.name)),
        );
        tokio::spawn(session.run());
        if let Some(path) = vm.qmp.as_deref().and_then(|q| q.strip_prefix("unix:")) {
            tokio::spawn(qmp::watch(vm.name.clone(), path.into(), tx.clone()));
        }
        vms.insert(
            vm.name.clone(),
            VmHandle {
                resource: vm.resource.clone(),
                cmds: tx,
                store,
            },
        );
    }
    Arc::new(Daemon { vms, why })
}
