//! The cluster manager as vesperd's actions see it: every call they make to Pacemaker,
//! behind one trait. [`Pacemaker`] makes the real calls (the controller connection, the
//! live CIB copy, the cluster tools); the unit tests put a scripted cluster in its place,
//! so that counting a fault once, the migration-threshold cases and the retries are
//! checked under plain `cargo test` (the real cluster is checked by tests/pacemaker.rs and
//! tests/cluster.rs).

use std::time::Duration;

use super::live::Known;
use super::version::Release;
use super::{Agent, Sent, Unavailable};
use crate::actions::run_tool;

/// What the actions ask of the cluster manager. Errors are the tool's words, for the
/// why-log.
pub(crate) trait ClusterCalls: Sync {
    /// The DC's Pacemaker release: as last seen, else read now (None: unknown).
    async fn dc_release(&self) -> Option<Release>;
    /// What the live CIB copy says of `resource` (None: no current copy).
    async fn lookup(&self, resource: &str) -> Option<Known>;
    /// The nodes `resource` is active on, asked of the cluster now.
    async fn locate(&self, resource: &str) -> Result<Vec<String>, String>;
    /// A fail over the controller connection.
    async fn fail_ipc(
        &self,
        node: &str,
        resource: &str,
        agent: Option<Agent>,
    ) -> Result<Sent, Unavailable>;
    /// A fail with the tool (`crm_resource --fail`).
    async fn fail_tool(&self, node: &str, resource: &str) -> Result<String, String>;
    /// Which library the controller connection uses, for the why-log.
    fn library(&self) -> String;
    /// A numeric node attribute (absent: 0).
    async fn attr_value(&self, name: &str, node: &str) -> Result<i64, String>;
    async fn attr_set(&self, name: &str, node: &str, value: i64) -> Result<(), String>;
    /// Adds `delta` with attrd's own arithmetic (against attrd's current value).
    async fn attr_add(&self, name: &str, node: &str, delta: i64) -> Result<(), String>;
    /// Every `migration-threshold` setting in the CIB, as XML (empty: none).
    async fn migration_thresholds(&self) -> Result<String, String>;
    /// Waits at most `within` for the fail-count of `resource` on `node` in the live copy
    /// to rise above `above`; the new count, or None.
    async fn count_rises(
        &self,
        resource: &str,
        node: &str,
        above: u64,
        within: Duration,
    ) -> Option<u64>;
    /// Sets a node attribute that lasts until the node reboots (the cause).
    async fn set_transient(&self, node: &str, name: &str, value: &str) -> Result<(), String>;
    /// The resource's fail-count on `node`, as `crm_failcount` prints it.
    async fn failcount(&self, node: &str, resource: &str) -> Result<String, String>;
}

/// The real cluster manager.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pacemaker;

impl ClusterCalls for Pacemaker {
    async fn dc_release(&self) -> Option<Release> {
        match super::version::dc_release() {
            Some(r) => Some(r),
            None => super::version::read_dc_release().await.ok(),
        }
    }

    async fn lookup(&self, resource: &str) -> Option<Known> {
        super::live::lookup(resource).await
    }

    async fn locate(&self, resource: &str) -> Result<Vec<String>, String> {
        crate::cluster::resource_nodes(resource).await
    }

    async fn fail_ipc(
        &self,
        node: &str,
        resource: &str,
        agent: Option<Agent>,
    ) -> Result<Sent, Unavailable> {
        super::controller().fail(node, resource, agent).await
    }

    async fn fail_tool(&self, node: &str, resource: &str) -> Result<String, String> {
        run_tool(
            "crm_resource",
            &["--fail", "--resource", resource, "--node", node],
            None,
        )
        .await
    }

    fn library(&self) -> String {
        match super::controller().library() {
            Ok((soname, series)) => format!("{soname}, Pacemaker {series}"),
            Err(e) => e.to_string(),
        }
    }

    async fn attr_value(&self, name: &str, node: &str) -> Result<i64, String> {
        match run_tool(
            "attrd_updater",
            &["--query", "--name", name, "--node", node],
            None,
        )
        .await
        {
            Ok(line) => {
                let v = line
                    .split("value=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                Ok(v.trim().parse().unwrap_or(0))
            }
            Err(e) if e.contains("does not exist") => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn attr_set(&self, name: &str, node: &str, value: i64) -> Result<(), String> {
        let value = value.to_string();
        let args = ["--name", name, "--update", &value, "--node", node];
        run_tool("attrd_updater", &args, None).await.map(|_| ())
    }

    async fn attr_add(&self, name: &str, node: &str, delta: i64) -> Result<(), String> {
        let update = match delta {
            1 => "value++".to_string(),
            d => format!("value+={d}"),
        };
        let args = ["--name", name, "--update", &update, "--node", node];
        run_tool("attrd_updater", &args, None).await.map(|_| ())
    }

    async fn migration_thresholds(&self) -> Result<String, String> {
        let xpath = "//nvpair[@name='migration-threshold']";
        match run_tool("cibadmin", &["--query", "--xpath", xpath], None).await {
            Ok(xml) => Ok(xml),
            // cibadmin's answer to an XPath that matches nothing.
            Err(e) if e.contains("No such device or address") => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    async fn count_rises(
        &self,
        resource: &str,
        node: &str,
        above: u64,
        within: Duration,
    ) -> Option<u64> {
        super::live::count_rises(resource, node, above, within).await
    }

    async fn set_transient(&self, node: &str, name: &str, value: &str) -> Result<(), String> {
        let args = [
            "--node",
            node,
            "--name",
            name,
            "--update",
            value,
            "--lifetime",
            "reboot",
        ];
        run_tool("crm_attribute", &args, None).await.map(|_| ())
    }

    async fn failcount(&self, node: &str, resource: &str) -> Result<String, String> {
        let args = ["--query", "--resource", resource, "--node", node];
        run_tool("crm_failcount", &args, None).await
    }
}
