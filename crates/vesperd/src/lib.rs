//! vesperd: the host daemon. One [`session::Session`] per VM, a bounded
//! [`store::RecordStore`] per VM, and the [`control`] API for the CLI.

pub mod channel;
pub mod config;
pub mod control;
pub mod qmp;
pub mod session;
pub mod store;
pub mod testing;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{VmHandle, Vms};
use crate::session::Session;
use crate::store::{RecordStore, StoreLimits};

/// Starts one session per configured VM; returns the handles the control API uses.
pub fn start_sessions(cfg: &Config) -> Vms {
    let limits = StoreLimits {
        max_records: cfg.daemon.store_max_records,
        max_bytes: cfg.daemon.store_max_bytes,
        file_max_bytes: cfg.daemon.file_max_bytes,
    };
    let mut vms = BTreeMap::new();
    for vm in &cfg.vm {
        let file = cfg
            .daemon
            .state_dir
            .join("records")
            .join(format!("{}.jsonl", vm.name));
        let store = Arc::new(Mutex::new(RecordStore::new(limits, Some(file))));
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
        );
        tokio::spawn(session.run());
        if let Some(path) = vm.qmp.as_deref().and_then(|q| q.strip_prefix("unix:")) {
            tokio::spawn(qmp::watch(vm.name.clone(), path.into(), tx.clone()));
        }
        vms.insert(vm.name.clone(), VmHandle { cmds: tx, store });
    }
    Arc::new(vms)
}
