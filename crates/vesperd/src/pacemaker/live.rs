//! A live copy of what a fail needs from the cluster: where each resource runs, its
//! agent (class, provider, type), and the cluster's nodes. Kept current from the CIB's
//! change notifications, so that a fault reads nothing.
//!
//! Two halves. The `pacemaker-cib` thread holds a read-only libcib connection subscribed
//! to every CIB change ([`super::cib_ffi`]); each notification bumps [`CHANGES`]. A tokio
//! task then reads the cluster's state once (one `crm_mon`, the scheduler's own view of
//! where things run, for every resource at once), however many changes came in
//! meanwhile, and publishes it tagged with the change count it covers.
//!
//! The copy is *current* when it covers every change notified so far. A fault uses a
//! current copy at once; during a read it waits for that read (bounded); without a CIB
//! connection it reads Pacemaker itself, as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::Agent;
use super::cib_ffi::{CibConnection, CibLib};

/// How long a fault waits for a read of the cluster already under way.
const CATCH_UP: Duration = Duration::from_millis(1500);

/// Changes notified (plus connects and losses, which make any copy stale).
static CHANGES: AtomicU64 = AtomicU64::new(0);
static CONNECTED: AtomicBool = AtomicBool::new(false);
static LOST: AtomicBool = AtomicBool::new(false);
static WAKE: Notify = Notify::const_new();
static COPY: OnceLock<watch::Sender<Arc<ClusterCopy>>> = OnceLock::new();
static STATE: Mutex<String> = Mutex::new(String::new());

/// One resource in the copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The nodes it is active on (none: stopped).
    pub nodes: Vec<String>,
    pub agent: Option<Agent>,
    /// Its fail-count per node (all operations together), where not zero.
    pub fail_counts: BTreeMap<String, u64>,
    /// As the scheduler applies it (INFINITY is 1000000).
    pub migration_threshold: Option<u64>,
}

/// The cluster as last read.
#[derive(Debug, Clone, Default)]
pub struct ClusterCopy {
    /// The value of [`CHANGES`] when the read started: it covers every change up to it.
    generation: u64,
    pub resources: HashMap<String, Placement>,
    pub nodes: BTreeSet<String>,
    read_ms: u64,
    reads: u64,
}

/// What the copy says of a resource, at fault time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Pacemaker manages it: where it runs and its agent.
    Resource(Placement, ClusterFacts),
    /// The copy is current and has no such resource.
    NoSuchResource { known: Vec<String> },
}

/// Facts beside the resource that a fail is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    pub nodes: BTreeSet<String>,
}

fn bump() {
    CHANGES.fetch_add(1, Ordering::SeqCst);
    WAKE.notify_one();
}

/// libcib's notify callback: runs on the CIB thread, inside an iteration. Never unwinds.
unsafe extern "C" fn on_change(_event: *const c_char, _msg: *mut c_void) {
    bump();
}

/// libcib's lost-connection callback, on the CIB thread.
unsafe extern "C" fn on_lost(_cib: *mut c_void) {
    CONNECTED.store(false, Ordering::SeqCst);
    LOST.store(true, Ordering::SeqCst);
    bump();
}

fn set_state(s: String) {
    match STATE.lock() {
        Ok(mut g) => *g = s,
        Err(p) => *p.into_inner() = s,
    }
}

/// One line for `vesper status`.
pub fn describe() -> String {
    let state = match STATE.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let Some(tx) = COPY.get() else {
        return if state.is_empty() {
            "no CIB copy (no Pacemaker library)".into()
        } else {
            state
        };
    };
    let c = tx.borrow().clone();
    let current =
        CONNECTED.load(Ordering::SeqCst) && c.generation == CHANGES.load(Ordering::SeqCst);
    format!(
        "{state}; CIB copy {} ({} resources, {} reads, the last took {} ms)",
        if current { "current" } else { "behind" },
        c.resources.len(),
        c.reads,
        c.read_ms
    )
}

/// Starts the watch (a thread) and the copy (a tokio task) for the libcrmcommon series
/// in use. Call once, inside the runtime.
pub fn start(crmcommon: &'static str) {
    if COPY.get().is_some() {
        return;
    }
    let lib = match CibLib::open(crmcommon) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("no live CIB copy: {e}; a fail reads Pacemaker at fault time");
            set_state(format!("no CIB watch ({e})"));
            return;
        }
    };
    let (tx, _) = watch::channel(Arc::new(ClusterCopy::default()));
    if COPY.set(tx).is_err() {
        return;
    }
    set_state(format!("{}: not connected yet", lib.layout.soname));
    if let Err(e) = std::thread::Builder::new()
        .name("pacemaker-cib".into())
        .spawn(move || watch_cib(lib))
    {
        set_state(format!("no CIB watch (thread: {e})"));
        return;
    }
    tokio::spawn(keep_copy());
}

/// The CIB thread: one connection at a time, reconnecting every second when there is none.
fn watch_cib(lib: CibLib) {
    let soname = lib.layout.soname;
    let mut last_error = String::new();
    loop {
        LOST.store(false, Ordering::SeqCst);
        match CibConnection::open(&lib, on_change, on_lost) {
            Ok(conn) => {
                CONNECTED.store(true, Ordering::SeqCst);
                bump();
                tracing::info!("watching the CIB's changes ({soname})");
                set_state(format!("{soname}: watching the CIB's changes"));
                last_error.clear();
                while !LOST.load(Ordering::SeqCst) {
                    lib.iterate();
                }
                drop(conn);
                tracing::warn!("lost the CIB connection; reconnecting");
                set_state(format!("{soname}: CIB connection lost, reconnecting"));
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::info!("no CIB connection yet: {e}");
                    set_state(format!("{soname}: not connected to the CIB ({e})"));
                    last_error = e;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Reads the cluster again whenever the copy is behind.
async fn keep_copy() {
    let Some(tx) = COPY.get() else { return };
    loop {
        let generation = CHANGES.load(Ordering::SeqCst);
        if CONNECTED.load(Ordering::SeqCst) && tx.borrow().generation != generation {
            let t = Instant::now();
            match read_cluster().await {
                Ok((resources, nodes)) => {
                    let reads = tx.borrow().reads + 1;
                    tx.send_replace(Arc::new(ClusterCopy {
                        generation,
                        resources,
                        nodes,
                        read_ms: t.elapsed().as_millis() as u64,
                        reads,
                    }));
                }
                Err(e) => {
                    tracing::warn!("reading the cluster for the CIB copy: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        WAKE.notified().await;
    }
}

async fn read_cluster() -> Result<(HashMap<String, Placement>, BTreeSet<String>), String> {
    let xml = crate::actions::run_tool(
        "crm_mon",
        &["--one-shot", "--output-as=xml", "--inactive"],
        None,
    )
    .await?;
    parse_cluster(&xml)
}

/// Every resource (with its agent and nodes) and every node of `crm_mon --output-as=xml`.
pub fn parse_cluster(xml: &str) -> Result<(HashMap<String, Placement>, BTreeSet<String>), String> {
    let xml = xml.find("<pacemaker-result").map_or(xml, |i| &xml[i..]);
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("crm_mon's XML: {e}"))?;
    let mut resources: HashMap<String, Placement> = HashMap::new();
    let mut nodes = BTreeSet::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "resource" => {
                let Some(id) = n.attribute("id") else {
                    continue;
                };
                let p = resources.entry(id.to_string()).or_default();
                p.nodes = n
                    .children()
                    .filter(|c| c.has_tag_name("node"))
                    .filter_map(|c| c.attribute("name").map(str::to_string))
                    .collect();
                p.agent = n.attribute("resource_agent").and_then(parse_agent);
            }
            // Per node, after the resources: its fail-count and migration-threshold.
            "resource_history" => {
                let (Some(id), Some(node)) = (
                    n.attribute("id"),
                    n.parent().and_then(|p| p.attribute("name")),
                ) else {
                    continue;
                };
                let p = resources.entry(id.to_string()).or_default();
                if let Some(t) = n.attribute("migration-threshold").and_then(count) {
                    p.migration_threshold = Some(t);
                }
                if let Some(fc) = n.attribute("fail-count").and_then(count).filter(|c| *c > 0) {
                    p.fail_counts.insert(node.to_string(), fc);
                }
            }
            "node" if n.parent().is_some_and(|p| p.has_tag_name("nodes")) => {
                if let Some(name) = n.attribute("name") {
                    nodes.insert(name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((resources, nodes))
}

/// A Pacemaker score as a count: "3", "INFINITY" (1000000).
fn count(s: &str) -> Option<u64> {
    let s = s.trim().trim_start_matches('+');
    if s.eq_ignore_ascii_case("INFINITY") {
        return Some(1_000_000);
    }
    s.parse().ok()
}

/// Waits (up to `within`) for a copy in which `resource`'s fail-count on `node` is above
/// `before`; the new count, or `None` if it did not rise.
pub async fn count_rises(resource: &str, node: &str, before: u64, within: Duration) -> Option<u64> {
    let mut rx = COPY.get()?.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let copy = rx.borrow_and_update().clone();
        let now = copy
            .resources
            .get(resource)
            .and_then(|p| p.fail_counts.get(node).copied())
            .unwrap_or(0);
        if now > before {
            return Some(now);
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// "ocf:heartbeat:VirtualDomain", "stonith:fence_x", "systemd:httpd".
fn parse_agent(s: &str) -> Option<Agent> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [class, provider, kind] => Some(Agent {
            class: class.to_string(),
            provider: Some(provider.to_string()),
            kind: kind.to_string(),
        }),
        [class, kind] => Some(Agent {
            class: class.to_string(),
            provider: None,
            kind: kind.to_string(),
        }),
        _ => None,
    }
}

/// What the copy says of `resource` now; `None` when there is no current copy to say it
/// (no CIB connection, or a read that did not finish in time): read Pacemaker instead.
pub async fn lookup(resource: &str) -> Option<Known> {
    let mut rx = COPY.get()?.subscribe();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        if !CONNECTED.load(Ordering::SeqCst) {
            return None;
        }
        let copy = rx.borrow_and_update().clone();
        if copy.generation == CHANGES.load(Ordering::SeqCst) {
            return Some(known(&copy, resource));
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}

fn known(copy: &ClusterCopy, resource: &str) -> Known {
    match copy.resources.get(resource) {
        Some(p) => Known::Resource(
            p.clone(),
            ClusterFacts {
                nodes: copy.nodes.clone(),
            },
        ),
        None => {
            let mut known: Vec<String> = copy.resources.keys().cloned().collect();
            known.sort();
            Known::NoSuchResource { known }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRM_MON: &str = r#"<pacemaker-result api-version="2.25" request="crm_mon --output-as=xml --inactive">
  <nodes>
    <node name="node1" id="1" online="true"/>
    <node name="node2" id="2" online="false"/>
  </nodes>
  <resources>
    <resource id="vm-web1" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" nodes_running_on="1">
      <node name="node2" id="2" cached="true"/>
    </resource>
    <resource id="fence-lab" resource_agent="stonith:fence_vesperlab" role="Stopped" active="false" nodes_running_on="0"/>
  </resources>
  <node_history>
    <node name="node2">
      <resource_history id="vm-web1" orphan="false" migration-threshold="3" fail-count="2" last-failure="Thu Dec  3 08:29:41 2026"/>
    </node>
    <node name="node1">
      <resource_history id="vm-web1" orphan="false" migration-threshold="3"/>
    </node>
  </node_history>
</pacemaker-result>"#;

    #[test]
    fn the_copy_holds_where_each_resource_runs_its_agent_and_the_nodes() {
        let (r, nodes) = parse_cluster(&format!("warning first\n{CRM_MON}")).unwrap();
        assert_eq!(r["vm-web1"].nodes, vec!["node2"]);
        let a = r["vm-web1"].agent.clone().unwrap();
        assert_eq!(
            (a.class.as_str(), a.provider.as_deref(), a.kind.as_str()),
            ("ocf", Some("heartbeat"), "VirtualDomain")
        );
        assert_eq!(r["vm-web1"].migration_threshold, Some(3));
        assert_eq!(
            r["vm-web1"].fail_counts.iter().collect::<Vec<_>>(),
            vec![(&"node2".to_string(), &2)]
        );
        assert_eq!(count("INFINITY"), Some(1_000_000));
        assert!(r["fence-lab"].nodes.is_empty());
        assert_eq!(r["fence-lab"].agent.clone().unwrap().provider, None);
        assert_eq!(
            nodes.into_iter().collect::<Vec<_>>(),
            vec!["node1", "node2"]
        );
        assert!(parse_cluster("<not xml").is_err());
    }

    #[test]
    fn a_resource_missing_from_a_current_copy_is_named_with_those_it_has() {
        let (resources, nodes) = parse_cluster(CRM_MON).unwrap();
        let copy = ClusterCopy {
            resources,
            nodes,
            ..Default::default()
        };
        assert!(matches!(known(&copy, "vm-web1"), Known::Resource(..)));
        assert_eq!(
            known(&copy, "vm-web2"),
            Known::NoSuchResource {
                known: vec!["fence-lab".into(), "vm-web1".into()]
            }
        );
    }
}
