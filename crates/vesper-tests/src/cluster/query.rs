//! Asking a running cluster: each node's view, where a resource runs, the sockets the
//! host reaches, and waiting for a state.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Cluster, ClusterError, READY_TIMEOUT, TOOL_TIMEOUT, View, status};

impl Cluster {
    /// One running node's view of the cluster (`crm_mon`), if it answers.
    pub fn view(&self, node: &str) -> Option<View> {
        let (out, rc) = self
            .exec(node, "crm_mon --output-as=xml", TOOL_TIMEOUT)
            .ok()?;
        (rc == 0).then(|| status::parse_crm_mon(&out)).flatten()
    }

    /// `crm_mon -1` from the first running node that answers.
    pub fn crm_mon(&self) -> Option<String> {
        self.state.nodes.iter().find_map(|n| {
            let (out, rc) = self.exec(n, "crm_mon -1 -A", TOOL_TIMEOUT).ok()?;
            (rc == 0).then_some(out)
        })
    }

    /// The node running `rsc`, as the first running node that knows says (while it
    /// migrates: the source).
    pub fn locate(&self, rsc: &str) -> Option<String> {
        self.locate_all(rsc).into_iter().next()
    }

    /// Every node running `rsc` (two during a live migration).
    pub fn locate_all(&self, rsc: &str) -> Vec<String> {
        self.state
            .nodes
            .iter()
            .find_map(|n| {
                let cmd = format!("crm_resource --locate --resource {rsc}");
                let (out, _) = self.exec(n, &cmd, TOOL_TIMEOUT).ok()?;
                let on = status::parse_locate(&out);
                (!on.is_empty()).then_some(on)
            })
            .unwrap_or_default()
    }

    /// The host path of the node's vesperd control socket (`VESPER_SOCKET`).
    pub fn vesper_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("run-vesper/vesper.sock")
    }

    /// The host path of the VM's lab port on whichever node runs it: of the nodes
    /// Pacemaker names (resource `vm-VM`), else of all, the first whose socket answers (a
    /// killed node leaves its socket file behind).
    pub fn lab_socket(&self, vm: &str) -> Option<PathBuf> {
        let sock = |n: &String| self.node_dir(n).join(format!("run-vesper/{vm}.lab.sock"));
        let answers = |p: &PathBuf| std::os::unix::net::UnixStream::connect(p).is_ok();
        let located = self.locate_all(&format!("vm-{vm}"));
        located
            .iter()
            .rev()
            .map(sock)
            .find(answers)
            .or_else(|| self.state.nodes.iter().map(sock).find(answers))
    }

    /// Waits until every node in `nodes` is online in the view of each of them, they agree
    /// on a DC, and (if `idle`) the DC's controller is idle (S_IDLE).
    pub(super) fn wait_ready(&self, nodes: &[String], idle: bool) -> Result<(), ClusterError> {
        let mut last = String::new();
        let t = Instant::now();
        while t.elapsed() < READY_TIMEOUT {
            let views: Vec<Option<View>> = nodes.iter().map(|n| self.view(n)).collect();
            last = format!("{views:?}");
            let dc = views.first().cloned().flatten().and_then(|v| v.dc);
            let agreed = views.iter().all(|v| {
                v.as_ref().is_some_and(|v| {
                    v.dc.is_some() && v.dc == dc && nodes.iter().all(|n| v.online.contains(n))
                })
            });
            if let (true, Some(dc)) = (agreed, dc) {
                let ready = !idle
                    || self
                        .exec(&dc, &format!("crmadmin -q -S {dc}"), TOOL_TIMEOUT)
                        .is_ok_and(|(out, _)| out.contains("S_IDLE"));
                if ready {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ClusterError::Timeout {
            what: format!("{} online with an idle DC", nodes.join(", ")),
            detail: format!(
                "last views: {last}; logs in {}/nodeN/",
                self.state.dir.display()
            ),
        })
    }

    /// Waits until `rsc` runs somewhere; fails early once its start failed on every node.
    pub fn wait_started(&self, rsc: &str) -> Result<(), ClusterError> {
        let start = format!("{rsc}_start_0");
        let t = Instant::now();
        while t.elapsed() < READY_TIMEOUT {
            if self.locate(rsc).is_some() {
                return Ok(());
            }
            let failed = self.state.nodes.iter().find_map(|n| self.view(n)).map(|v| {
                v.failures
                    .iter()
                    .filter(|(op, _)| *op == start)
                    .map(|(_, node)| node.clone())
                    .collect::<Vec<_>>()
            });
            if failed.is_some_and(|f| f.len() >= self.state.nodes.len()) {
                return Err(ClusterError::Command {
                    cmd: format!("start of {rsc}"),
                    output: format!(
                        "failed on every node; see {}/nodeN/libvirt-log/ and pacemaker-log/\n{}",
                        self.state.dir.display(),
                        self.crm_mon().unwrap_or_default()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ClusterError::Timeout {
            what: format!("{rsc} to start"),
            detail: self.crm_mon().unwrap_or_else(|| "no node answers".into()),
        })
    }

    /// Polls `ok` every 200 ms for up to `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<(), ClusterError> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ClusterError::Timeout {
            what: what.into(),
            detail: format!(
                "see {}",
                self.crm_mon().unwrap_or_else(|| "no node answers".into())
            ),
        })
    }
}
