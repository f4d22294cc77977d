//! A fail sent to Pacemaker, counted exactly once: where the resource runs and whether
//! the DC counts a fail once decide what is done around it (docs/pacemaker.md, section 6).

use std::time::{Duration, Instant};

use super::Agent;
use super::calls::ClusterCalls;
use crate::actions::{ActionOutcome, retrying, with_retries};

/// The counter `crm_resource --fail` raises: its synthetic operation is "asyncmon".
fn counter(resource: &str) -> String {
    format!("fail-count-{resource}#asyncmon_0")
}

/// The fail-count before the fail, and whether it was lowered by one first.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    before: i64,
    lowered: bool,
}

/// A fail, counted exactly once.
///
/// From Pacemaker 2.1.6 on, the DC counts a fail once: it is sent, and nothing is read
/// or corrected around it. Pacemaker 2.1.5 and earlier count it twice, though not
/// always: the DC handles both history entries of the synthetic operation (`_last_0`
/// and `_last_failure_0`) as unexpected results. One fault must be one failure, so there
/// the count is corrected, in one of two ways:
///
/// - Where a finite `migration-threshold` is configured anywhere in the CIB, the scheduler
///   acts on the count (it moves the resource away at the threshold), so it must never see
///   one that is too high: the counter is set one lower first, and checked after; a
///   Pacemaker that counts once gets the missing one back. This costs about 30 ms of tool
///   calls before the failure.
/// - Otherwise (the default, `INFINITY`) a count shows only to the operator: the failure
///   goes in at once, and a double count is taken back afterwards. With a current live
///   copy nothing is read before the fail and the count is watched in the copy.
///
/// A DC whose version is not known yet is treated as one that may count twice.
pub(crate) async fn fail_once(
    cm: &impl ClusterCalls,
    node: &str,
    resource: &str,
    started: Instant,
) -> ActionOutcome {
    let dc = cm.dc_release().await;
    if let Some(dc) = dc.filter(|r| r.counts_once()) {
        let placed = match where_it_runs(cm, node, resource, started).await {
            Ok(w) => w,
            Err(refused) => return refused,
        };
        if let Some(refused) = not_ours(node, resource, &placed.nodes, started) {
            return refused;
        }
        let (fail, path) = fail_request(cm, node, resource, placed.agent, started).await;
        let from = placed.from;
        let counted = match placed.fail_count {
            Some(before) if fail.ok => count_kept(cm, node, resource, before).await,
            _ => String::new(),
        };
        let counted = if counted.is_empty() {
            ": nothing corrected".to_string()
        } else {
            counted
        };
        return ActionOutcome {
            detail: format!(
                "{path}; where it runs from {from}; the DC runs Pacemaker {dc}, which counts it once{counted}"
            ),
            ..fail
        };
    }
    let dc_is = dc.map_or("a Pacemaker of unknown version".into(), |r| {
        format!("Pacemaker {r}")
    });
    let placed = match where_it_runs(cm, node, resource, started).await {
        Ok(w) => w,
        Err(refused) => return refused,
    };
    // No threshold: the count moves nothing, so the fail goes at once and a double count
    // is taken back afterwards, all from the live copy (nothing read on the fail's path).
    if let (Some(before), Some(INFINITY)) = (placed.fail_count, placed.migration_threshold) {
        if let Some(refused) = not_ours(node, resource, &placed.nodes, started) {
            return refused;
        }
        let from = placed.from;
        let (fail, path) = fail_request(cm, node, resource, placed.agent, started).await;
        let fixed = if fail.ok {
            settle(cm, node, resource, before).await
        } else {
            String::new()
        };
        return ActionOutcome {
            detail: format!(
                "{path}; where it runs from {from}; the DC runs {dc_is}, which may count a fail twice; migration-threshold is INFINITY, so it was sent at once{fixed}"
            ),
            ..fail
        };
    }
    let counter = counter(resource);
    let prepare = retrying("pacemaker", started, || async {
        let (before, threshold) =
            tokio::join!(cm.attr_value(&counter, node), cm.migration_thresholds());
        let before = before?;
        // An unreadable CIB is treated as "a threshold is set": the careful way.
        if !threshold.is_ok_and(|xml| !has_finite_threshold(&xml)) {
            cm.attr_set(&counter, node, before - 1).await?;
            // attrd_updater returns before attrd applies the value; the controller's
            // increments must come after it.
            for _ in 0..50 {
                if cm.attr_value(&counter, node).await? == before - 1 {
                    return Ok(Prepared {
                        before,
                        lowered: true,
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return Err(format!(
                "attrd did not apply {counter}={} within 0.5 s",
                before - 1
            ));
        }
        Ok(Prepared {
            before,
            lowered: false,
        })
    });
    let Prepared { before, lowered } = match prepare.await {
        Ok((p, _)) => p,
        Err(failed) => return failed,
    };
    let (place, agent, from) = (placed.nodes, placed.agent, placed.from);
    if let Some(refused) = not_ours(node, resource, &place, started) {
        if lowered {
            let _ = cm.attr_set(&counter, node, before).await;
        }
        return refused;
    }
    let (fail, path) = fail_request(cm, node, resource, agent, started).await;
    if !fail.ok {
        if lowered {
            let _ = cm.attr_set(&counter, node, before).await;
        }
        return fail;
    }
    // Whether Pacemaker counts once or twice varies from call to call (both were seen on
    // 2.1.5). Its increments come within milliseconds of each other: wait for the first,
    // then briefly for a second.
    let start_value = if lowered { before - 1 } else { before };
    let mut after = start_value;
    let mut first_seen: Option<tokio::time::Instant> = None;
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        after = cm.attr_value(&counter, node).await.unwrap_or(after);
        if after >= start_value + 2 {
            break;
        }
        if after == start_value + 1 {
            let seen = *first_seen.get_or_insert_with(tokio::time::Instant::now);
            if seen.elapsed() > Duration::from_millis(300) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fixed = match after - before {
        1 => String::new(),
        0 if lowered => match cm.attr_set(&counter, node, before + 1).await {
            Ok(()) => {
                "; Pacemaker counted the failure once, the lowered counter was restored".into()
            }
            Err(e) => format!("; the fail-count could not be restored: {e}"),
        },
        2 if !lowered => match cm.attr_set(&counter, node, before + 1).await {
            Ok(()) => "; Pacemaker counted the failure twice, one was taken back".into(),
            Err(e) => format!("; the double count could not be taken back: {e}"),
        },
        // Not counted at all: the DC changed while the fail was sent (see count_kept).
        0 if !lowered => match cm.attr_set(&counter, node, before + 1).await {
            Ok(()) => "; Pacemaker did not count the failure (the DC changed while it was sent?), so vesperd counted it".into(),
            Err(e) => format!("; Pacemaker did not count the failure, and counting it failed: {e}"),
        },
        -1 if lowered => match cm.attr_set(&counter, node, before + 1).await {
            Ok(()) => "; Pacemaker did not count the failure (the DC changed while it was sent?), so vesperd counted it".into(),
            Err(e) => format!("; Pacemaker did not count the failure, and counting it failed: {e}"),
        },
        d => format!("; the fail-count counter moved by {d} (expected 1)"),
    };
    let dc = dc_is;
    let how = if lowered {
        format!(
            "; the DC runs {dc}, which may count a fail twice: counter lowered first (a migration-threshold is set)"
        )
    } else {
        format!("; the DC runs {dc}, which may count a fail twice")
    };
    ActionOutcome {
        detail: format!("{path}; where it runs from {from}{how}{fixed}"),
        ..fail
    }
}

/// Where a resource runs, as a fail is checked against it.
struct Placed {
    nodes: Result<Vec<String>, String>,
    agent: Option<Agent>,
    /// Where that came from, for the why-log.
    from: &'static str,
    /// Its fail-count on this node before the fail, when the live copy has it.
    fail_count: Option<u64>,
    /// Its migration-threshold, when the live copy has it.
    migration_threshold: Option<u64>,
}

/// How long a counted fail takes to show in the live copy before it is taken as lost.
const COUNT_SHOWS: Duration = Duration::from_secs(5);
/// After the first increment shows, how long a second one (2.1.5's double count) may take.
const SECOND_SHOWS: Duration = Duration::from_millis(500);
/// `migration-threshold=INFINITY` as the scheduler reports it.
const INFINITY: u64 = 1_000_000;

/// After a fail to a DC that may count it twice, with no threshold the count could move:
/// takes back what Pacemaker counted beyond one, or counts it if Pacemaker did not, with
/// attrd's own arithmetic (`value+=N`, applied by attrd against its current value).
async fn settle(cm: &impl ClusterCalls, node: &str, resource: &str, before: u64) -> String {
    let Some(first) = cm.count_rises(resource, node, before, COUNT_SHOWS).await else {
        return count_lost(cm, node, resource).await;
    };
    let last = if first > before + 1 {
        first
    } else {
        cm.count_rises(resource, node, first, SECOND_SHOWS)
            .await
            .unwrap_or(first)
    };
    match correction(before, last) {
        0 => String::new(),
        n => match cm.attr_add(&counter(resource), node, n).await {
            Ok(()) => format!(
                "; Pacemaker counted the failure {} times, {} taken back",
                last - before,
                -n
            ),
            Err(e) => format!("; the double count could not be taken back: {e}"),
        },
    }
}

/// What to add to the counter so that a fault that moved the count from `before` to
/// `after` counts once.
fn correction(before: u64, after: u64) -> i64 {
    1 - (after as i64 - before as i64)
}

/// After a fail the DC took: whether it was counted. A fail sent while the DC changes is
/// acted on but not counted (seen on Pacemaker 2.1.5 and 3.0.0): an operator's
/// migration-threshold would then never be reached, so vesperd counts it itself, once,
/// with attrd's own increment (`value++`).
async fn count_kept(cm: &impl ClusterCalls, node: &str, resource: &str, before: u64) -> String {
    if cm
        .count_rises(resource, node, before, COUNT_SHOWS)
        .await
        .is_some()
    {
        return String::new();
    }
    count_lost(cm, node, resource).await
}

/// Counts a failure Pacemaker acted on but did not count.
async fn count_lost(cm: &impl ClusterCalls, node: &str, resource: &str) -> String {
    let counter = counter(resource);
    tracing::warn!(
        resource,
        node,
        "Pacemaker did not count the failure (a DC election?); counting it"
    );
    match cm.attr_add(&counter, node, 1).await {
        Ok(()) => format!(
            "; Pacemaker had not counted it after {} s (the DC changed while it was sent?), so vesperd raised {counter} by one",
            COUNT_SHOWS.as_secs()
        ),
        Err(e) => format!("; Pacemaker had not counted it, and raising {counter} failed: {e}"),
    }
}

/// Where Pacemaker runs `resource` and its agent, from the live CIB copy when it is
/// current, else read now (`crm_resource --locate`); and where it says so. A resource or
/// node the cluster does not have is refused with the fix (the verdict stays).
async fn where_it_runs(
    cm: &impl ClusterCalls,
    node: &str,
    resource: &str,
    started: Instant,
) -> Result<Placed, ActionOutcome> {
    use crate::pacemaker::live::Known;
    let refuse = |detail: String| {
        tracing::error!(resource, node, "{detail}");
        ActionOutcome {
            kind: "pacemaker".into(),
            ok: false,
            attempts: 1,
            ms: started.elapsed().as_millis() as u64,
            detail,
        }
    };
    match cm.lookup(resource).await {
        Some(Known::NoSuchResource { known }) => Err(refuse(format!(
            "not failed: Pacemaker has no resource {resource} (it has {}): set `resource` of this VM in vesper.toml to its resource's id",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ))),
        Some(Known::Resource(_, facts))
            if !facts.nodes.is_empty() && !facts.nodes.contains(node) =>
        {
            Err(refuse(format!(
                "not failed: Pacemaker has no node {node} (its nodes: {}): set [daemon] node in vesper.toml to this host's cluster node name (`crm_node -n`)",
                facts.nodes.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
        Some(Known::Resource(p, _)) => Ok(Placed {
            fail_count: Some(p.fail_counts.get(node).copied().unwrap_or(0)),
            migration_threshold: p.migration_threshold,
            nodes: Ok(p.nodes),
            agent: p.agent,
            from: "the live CIB copy",
        }),
        None => Ok(Placed {
            nodes: cm.locate(resource).await,
            agent: None,
            from: "crm_resource --locate (no current CIB copy)",
            fail_count: None,
            migration_threshold: None,
        }),
    }
}

/// A copy of the VM on a node where Pacemaker does not run it (split brain, or started
/// outside the cluster) must not fail the resource: Pacemaker would then see it active
/// twice and stop both copies, the good one too. Returns the refusal, if so.
fn not_ours(
    node: &str,
    resource: &str,
    place: &Result<Vec<String>, String>,
    started: Instant,
) -> Option<ActionOutcome> {
    let nodes = place.as_ref().ok()?;
    if nodes.is_empty() || nodes.iter().any(|n| n == node) {
        return None;
    }
    tracing::error!(resource, node, runs_on = ?nodes, "not failing the resource: Pacemaker runs it on another node; this node's copy of the VM is not the cluster's");
    Some(ActionOutcome {
        kind: "pacemaker".into(),
        ok: false,
        attempts: 1,
        ms: started.elapsed().as_millis() as u64,
        detail: format!(
            "not failed: Pacemaker runs {resource} on {}, not on {node}; the VM here is a copy the cluster does not manage (split brain, or started outside the cluster)",
            nodes.join(", ")
        ),
    })
}

/// Sends the fail: over the controller connection when it is there, else with
/// `crm_resource --fail`. Returns the outcome and how it went, for the why-log.
async fn fail_request(
    cm: &impl ClusterCalls,
    node: &str,
    resource: &str,
    agent: Option<Agent>,
    started: Instant,
) -> (ActionOutcome, String) {
    use crate::pacemaker::{Sent, Unavailable};
    let tool = format!("crm_resource --fail --resource {resource} --node {node}");
    let fallback = match cm.fail_ipc(node, resource, agent).await {
        Ok(sent) => {
            let how = match sent {
                Sent::Accepted { us, reconnected } => format!(
                    "failed {resource} on {node} over the controller's IPC ({}) in {:.2} ms, accepted {:.1} ms after the verdict{}",
                    cm.library(),
                    us as f64 / 1000.0,
                    started.elapsed().as_secs_f64() * 1000.0,
                    if reconnected {
                        ", on a new connection"
                    } else {
                        ""
                    }
                ),
                Sent::ReplyLost(why) => format!(
                    "fail of {resource} on {node} sent over the controller's IPC ({}); its reply was lost ({why}), so it was not sent again",
                    cm.library()
                ),
            };
            let out = ActionOutcome {
                kind: "pacemaker".into(),
                ok: true,
                attempts: 1,
                ms: started.elapsed().as_millis() as u64,
                detail: how.clone(),
            };
            return (out, how);
        }
        // A refusal is the controller's answer: the tool would be refused the same way.
        Err(e @ (Unavailable::Refused(_) | Unavailable::Unprivileged(_))) => {
            tracing::error!(resource, node, "Pacemaker refused the fail: {e}");
            let out = ActionOutcome {
                kind: "pacemaker".into(),
                ok: false,
                attempts: 1,
                ms: started.elapsed().as_millis() as u64,
                detail: format!("not failed: {e}"),
            };
            return (out.clone(), out.detail);
        }
        Err(e) => e,
    };
    tracing::info!(resource, node, "fail with crm_resource: {fallback}");
    let out = with_retries("pacemaker", started, || cm.fail_tool(node, resource)).await;
    (out, format!("{tool} ({fallback})"))
}

/// Whether any `migration-threshold` in `xml` is finite (so the scheduler acts on counts).
fn has_finite_threshold(xml: &str) -> bool {
    xml.split("<nvpair")
        .skip(1)
        .filter_map(|el| el.split("value=\"").nth(1)?.split('"').next())
        .any(|v| {
            !v.trim()
                .trim_start_matches('+')
                .eq_ignore_ascii_case("INFINITY")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_settled_at_one_count() {
        assert_eq!(correction(0, 1), 0);
        assert_eq!(correction(0, 2), -1, "2.1.5's double count: one taken back");
        assert_eq!(correction(3, 5), -1);
        assert_eq!(correction(2, 2), 1, "not counted (an election): counted");
    }

    #[test]
    fn only_a_finite_migration_threshold_makes_the_count_matter() {
        assert!(!has_finite_threshold(""));
        assert!(!has_finite_threshold(
            r#"<nvpair id="a" name="migration-threshold" value="INFINITY"/>"#
        ));
        assert!(!has_finite_threshold(
            r#"<xpath-query><nvpair id="a" name="migration-threshold" value="+infinity"/></xpath-query>"#
        ));
        assert!(has_finite_threshold(
            r#"<xpath-query><nvpair id="a" name="migration-threshold" value="INFINITY"/>
<nvpair id="b" name="migration-threshold" value="3"/></xpath-query>"#
        ));
        assert!(has_finite_threshold(
            r#"<nvpair name="migration-threshold" id="c" value="0"/>"#
        ));
    }
}
