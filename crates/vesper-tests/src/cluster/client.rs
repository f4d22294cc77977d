//! What the lab's guest and each node's vesperd say, asked from the host: shared by the
//! cluster tests and the demo.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{Cluster, ClusterError, VM_HTTP_PORT};

impl Cluster {
    /// `vesper ARGS` against `node`'s vesperd (with the CLI at `bin`); its output.
    pub fn vesper(&self, bin: &Path, node: &str, args: &[&str]) -> Result<String, ClusterError> {
        let o = Command::new(bin)
            .env("VESPER_SOCKET", self.vesper_socket(node))
            .args(args)
            .output()
            .map_err(|e| ClusterError::io(format!("running {}", bin.display()), e))?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(text)
        } else {
            Err(ClusterError::Command {
                cmd: format!("vesper {} (on {node})", args.join(" ")),
                output: format!("{text}{}", String::from_utf8_lossy(&o.stderr)),
            })
        }
    }

    /// The VM's status in `node`'s vesperd (None if it does not answer).
    pub fn vm_status(&self, bin: &Path, node: &str, vm: &str) -> Option<Value> {
        self.vesper(bin, node, &["status", "--json"])
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["name"] == vm)
    }

    /// The node whose vesperd has the VM ready with every probe it wants attached.
    pub fn watched_on(&self, bin: &Path, vm: &str) -> Option<String> {
        let node = self.locate(&format!("vm-{vm}"))?;
        let st = self.vm_status(bin, &node, vm)?;
        let loaded = |name: &Value| {
            st["probes"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == *name && p["phase"] == "loaded")
            })
        };
        let all = st["desired_probes"]
            .as_array()
            .is_some_and(|want| !want.is_empty() && want.iter().all(loaded));
        (st["state"] == "ready" && all).then_some(node)
    }

    /// One line of shell in the guest, wherever it runs: output and exit status.
    pub fn guest(
        &self,
        vm: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(String, i32), ClusterError> {
        let sock = self.lab_socket(vm).ok_or_else(|| ClusterError::Command {
            cmd: cmd.into(),
            output: format!("no node serves {vm}'s lab port"),
        })?;
        crate::lab_port::exec(&sock, cmd, timeout)
            .map_err(|e| ClusterError::io(format!("{cmd:?} in {vm}"), e))
    }

    /// The guest's httpd answers through `node` (its forwarded port there).
    pub fn http_answers(&self, node: &str) -> bool {
        let cmd = format!("curl -sf -m 2 http://127.0.0.1:{VM_HTTP_PORT}/");
        self.exec(node, &cmd, Duration::from_secs(5))
            .is_ok_and(|(out, rc)| rc == 0 && out.contains("vesper lab guest"))
    }
}
