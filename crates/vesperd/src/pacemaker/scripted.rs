//! A scripted cluster manager in place of Pacemaker, and the cases it checks: one fault
//! counted once whatever the DC's version and the migration-threshold, the tool's retries,
//! and refusals that send nothing. The clock is tokio's, paused: retries and waits cost
//! no real time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::calls::ClusterCalls;
use super::live::{ClusterFacts, Known, Placement};
use super::version::Release;
use super::{Agent, LoadError, Sent, Unavailable};

const NODE: &str = "node1";
const RSC: &str = "vm-web1";
const COUNTER: &str = "fail-count-vm-web1#asyncmon_0";

/// What the scripted cluster is, and what was done to it.
#[derive(Debug)]
struct Script {
    release: Option<Release>,
    /// Increments one fail makes: 1, 2 (Pacemaker 2.1.5 at times), 0 (a DC election).
    counts: i64,
    /// The live CIB copy is current (else the tools are asked).
    live: bool,
    /// `migration-threshold` as the live copy has it.
    live_threshold: Option<u64>,
    /// What `cibadmin --query --xpath` answers about thresholds.
    threshold_xml: Result<String, String>,
    runs_on: Vec<String>,
    /// The controller connection is there (else the tool is used).
    ipc: bool,
    /// Times the tool fails before it succeeds (u32::MAX: always).
    tool_failures: u32,
    counter: i64,
    /// Every value the counter took: the scheduler saw each.
    history: Vec<i64>,
    fails: u32,
    attrs: HashMap<String, String>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            release: Some(Release(2, 1, 6)),
            counts: 1,
            live: true,
            live_threshold: Some(1_000_000),
            threshold_xml: Ok(String::new()),
            runs_on: vec![NODE.into()],
            ipc: true,
            tool_failures: 0,
            counter: 3,
            history: Vec::new(),
            fails: 0,
            attrs: HashMap::new(),
        }
    }
}

struct Scripted(Mutex<Script>);

impl Scripted {
    fn new(s: Script) -> Scripted {
        Scripted(Mutex::new(s))
    }
    fn with<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
    fn fail(&self) {
        self.with(|s| {
            s.fails += 1;
            s.counter += s.counts;
            s.history.push(s.counter);
        });
    }
}

impl ClusterCalls for Scripted {
    async fn dc_release(&self) -> Option<Release> {
        self.with(|s| s.release)
    }
    async fn lookup(&self, _: &str) -> Option<Known> {
        self.with(|s| {
            s.live.then(|| {
                let nodes: BTreeSet<String> = [NODE.to_string(), "node2".into()].into();
                Known::Resource(
                    Placement {
                        nodes: s.runs_on.clone(),
                        agent: None,
                        fail_counts: BTreeMap::from([(NODE.to_string(), s.counter as u64)]),
                        migration_threshold: s.live_threshold,
                    },
                    ClusterFacts { nodes },
                )
            })
        })
    }
    async fn locate(&self, _: &str) -> Result<Vec<String>, String> {
        Ok(self.with(|s| s.runs_on.clone()))
    }
    async fn fail_ipc(&self, _: &str, _: &str, _: Option<Agent>) -> Result<Sent, Unavailable> {
        if !self.with(|s| s.ipc) {
            return Err(Unavailable::Library(LoadError::Absent));
        }
        self.fail();
        Ok(Sent::Accepted {
            us: 300,
            reconnected: false,
        })
    }
    async fn fail_tool(&self, _: &str, _: &str) -> Result<String, String> {
        let refuse = self.with(|s| {
            let r = s.tool_failures > 0;
            s.tool_failures = s.tool_failures.saturating_sub(1);
            r
        });
        if refuse {
            return Err("crm_resource exit status: 102: connection refused".into());
        }
        self.fail();
        Ok(String::new())
    }
    fn library(&self) -> String {
        "libcrmcommon.so.34, Pacemaker 2.1".into()
    }
    async fn attr_value(&self, _: &str, _: &str) -> Result<i64, String> {
        Ok(self.with(|s| s.counter))
    }
    async fn attr_set(&self, name: &str, _: &str, value: i64) -> Result<(), String> {
        assert_eq!(name, COUNTER);
        self.with(|s| {
            s.counter = value;
            s.history.push(value);
        });
        Ok(())
    }
    async fn attr_add(&self, name: &str, _: &str, delta: i64) -> Result<(), String> {
        assert_eq!(name, COUNTER);
        self.with(|s| {
            s.counter += delta;
            s.history.push(s.counter);
        });
        Ok(())
    }
    async fn migration_thresholds(&self) -> Result<String, String> {
        self.with(|s| s.threshold_xml.clone())
    }
    async fn count_rises(&self, _: &str, _: &str, above: u64, within: Duration) -> Option<u64> {
        let now = self.with(|s| s.counter as u64);
        if now > above {
            return Some(now);
        }
        tokio::time::sleep(within).await;
        None
    }
    async fn set_transient(&self, _: &str, name: &str, value: &str) -> Result<(), String> {
        self.with(|s| s.attrs.insert(name.into(), value.into()));
        Ok(())
    }
    async fn failcount(&self, node: &str, _: &str) -> Result<String, String> {
        let n = self.with(|s| s.counter);
        Ok(format!(
            "scope=status  name=fail-count-{RSC} value={n} node={node}"
        ))
    }
}

const FINITE: &str =
    r#"<xpath-query><nvpair id="t" name="migration-threshold" value="3"/></xpath-query>"#;

async fn fail(cm: &Scripted) -> crate::actions::ActionOutcome {
    super::fail::fail_once(cm, NODE, RSC, Instant::now()).await
}

/// The fault counted once: the counter ends one above where it was, and never went
/// higher on the way.
fn counted_once(cm: &Scripted, before: i64) {
    cm.with(|s| {
        assert_eq!(s.counter, before + 1, "counted once: {:?}", s.history);
        assert!(
            s.history.iter().all(|&v| v <= before + 1),
            "the scheduler saw a count too high: {:?}",
            s.history
        );
    });
}

#[tokio::test(start_paused = true)]
async fn a_dc_that_counts_once_gets_the_fail_and_nothing_else() {
    let cm = Scripted::new(Script::default());
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail.contains("counts it once: nothing corrected"),
        "{}",
        out.detail
    );
    counted_once(&cm, 3);
    assert_eq!(
        cm.with(|s| (s.fails, s.history.len())),
        (1, 1),
        "one fail, nothing written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fail_lost_to_a_dc_election_is_counted_by_vesperd() {
    let cm = Scripted::new(Script {
        counts: 0,
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert!(out.detail.contains("so vesperd raised"), "{}", out.detail);
    counted_once(&cm, 3);
}

#[tokio::test(start_paused = true)]
async fn a_double_count_without_a_threshold_is_taken_back() {
    let cm = Scripted::new(Script {
        release: Some(Release(2, 1, 5)),
        counts: 2,
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert!(out.detail.contains("sent at once"), "{}", out.detail);
    assert!(
        out.detail.contains("2 times, 1 taken back"),
        "{}",
        out.detail
    );
    assert_eq!(cm.with(|s| s.counter), 4);
}

#[tokio::test(start_paused = true)]
async fn with_a_threshold_the_count_is_lowered_first_and_never_seen_too_high() {
    for (counts, what) in [(2, "twice"), (1, "once")] {
        let cm = Scripted::new(Script {
            release: Some(Release(2, 1, 5)),
            counts,
            live: false,
            threshold_xml: Ok(FINITE.into()),
            ..Script::default()
        });
        let out = fail(&cm).await;
        assert!(out.ok, "{what}: {out:?}");
        assert!(
            out.detail.contains("counter lowered first"),
            "{}",
            out.detail
        );
        assert_eq!(cm.with(|s| s.history[0]), 2, "lowered before the fail");
        counted_once(&cm, 3);
        if counts == 1 {
            assert!(
                out.detail.contains("lowered counter was restored"),
                "{}",
                out.detail
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_cib_is_taken_as_a_threshold() {
    let cm = Scripted::new(Script {
        release: None,
        counts: 2,
        live: false,
        threshold_xml: Err("cibadmin: timed out".into()),
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail.contains("a Pacemaker of unknown version"),
        "{}",
        out.detail
    );
    counted_once(&cm, 3);
}

#[tokio::test(start_paused = true)]
async fn the_tool_is_retried_and_the_fault_still_counts_once() {
    let cm = Scripted::new(Script {
        ipc: false,
        tool_failures: 2,
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.attempts, 3, "two refusals, then the fail");
    assert!(out.detail.contains("crm_resource --fail"), "{}", out.detail);
    counted_once(&cm, 3);
}

#[tokio::test(start_paused = true)]
async fn a_tool_that_never_answers_leaves_the_counter_as_it_was() {
    let cm = Scripted::new(Script {
        release: Some(Release(2, 1, 5)),
        live: false,
        threshold_xml: Ok(FINITE.into()),
        ipc: false,
        tool_failures: u32::MAX,
        ..Script::default()
    });
    let t = tokio::time::Instant::now();
    let out = fail(&cm).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(out.attempts, 4, "the first try and three retries");
    assert!(
        t.elapsed() >= Duration::from_millis(6200),
        "backed off 0.2 + 1 + 5 s"
    );
    assert_eq!(
        cm.with(|s| (s.fails, s.counter)),
        (0, 3),
        "lowered, then restored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resource_running_elsewhere_is_not_failed() {
    let cm = Scripted::new(Script {
        runs_on: vec!["node2".into()],
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(!out.ok);
    assert!(
        out.detail.contains("runs vm-web1 on node2, not on node1"),
        "{}",
        out.detail
    );
    assert_eq!(cm.with(|s| (s.fails, s.counter)), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn the_action_fails_the_resource_then_records_the_cause() {
    let cm = Scripted::new(Script::default());
    let out = crate::actions::pacemaker(
        &cm,
        Some(NODE),
        RSC,
        "httpd killed by SIGTERM from pkill",
        Instant::now(),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail
            .ends_with("cause in node attribute vesper-cause-vm-web1")
    );
    assert_eq!(
        cm.with(|s| s.attrs.get("vesper-cause-vm-web1").cloned()),
        Some("httpd killed by SIGTERM from pkill".into())
    );
    counted_once(&cm, 3);
}

#[tokio::test(start_paused = true)]
async fn a_double_count_read_from_the_tools_is_taken_back() {
    let cm = Scripted::new(Script {
        release: Some(Release(2, 1, 5)),
        counts: 2,
        live: false,
        ..Script::default()
    });
    let out = fail(&cm).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail
            .contains("counted the failure twice, one was taken back"),
        "{}",
        out.detail
    );
    assert_eq!(cm.with(|s| s.counter), 4);
}
