//! What Pacemaker holds about a VM's resource, across every node: where it runs, the
//! causes vesperds put in (`vesper-cause-RESOURCE` node attributes), its failures and
//! fail-counts. Read for `vesper why` on whichever node the operator is on, so the node a
//! VM moved to can tell why it is there. Never read at fault time.

pub use vesper_api::{FailCount, Failure, FenceEvent, NodeCause, ResourceView};

pub fn cause_attribute(resource: &str) -> String {
    format!("vesper-cause-{resource}")
}

/// Reads `resource` out of `crm_mon --output-as=xml` (with attributes and fail-counts).
pub fn parse_crm_mon(xml: &str, resource: &str) -> Result<ResourceView, String> {
    // crm_mon may print warnings before the document.
    let xml = xml.find("<pacemaker-result").map_or(xml, |i| &xml[i..]);
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("crm_mon's XML: {e}"))?;
    let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap_or_default().to_string();
    let mut view = ResourceView {
        resource: resource.to_string(),
        ..Default::default()
    };
    let cause_name = cause_attribute(resource);
    for n in doc.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "resource" if n.attribute("id") == Some(resource) => {
                view.running_on.extend(
                    n.children()
                        .filter(|c| c.has_tag_name("node"))
                        .map(|c| attr(c, "name")),
                );
            }
            "attribute" if n.attribute("name") == Some(cause_name.as_str()) => {
                let node = n.parent().map(|p| attr(p, "name")).unwrap_or_default();
                view.causes.push(NodeCause {
                    node,
                    cause: attr(n, "value"),
                });
            }
            "failure"
                if n.attribute("op_key")
                    .is_some_and(|k| k.starts_with(&format!("{resource}_"))) =>
            {
                view.failures.push(Failure {
                    node: attr(n, "node"),
                    op: attr(n, "op_key"),
                    status: attr(n, "exitstatus"),
                    reason: attr(n, "exitreason"),
                    when: attr(n, "last-rc-change"),
                });
            }
            "fence_event" => {
                let by = n.attribute("delegate").or(n.attribute("origin"));
                view.fencing.push(FenceEvent {
                    target: attr(n, "target"),
                    action: attr(n, "action"),
                    status: attr(n, "status"),
                    by: by.unwrap_or_default().to_string(),
                    completed: attr(n, "completed"),
                });
            }
            "resource_history" if n.attribute("id") == Some(resource) => {
                let count = attr(n, "fail-count");
                if !count.is_empty() && count != "0" {
                    let node = n.parent().map(|p| attr(p, "name")).unwrap_or_default();
                    view.fail_counts.push(FailCount {
                        node,
                        count,
                        migration_threshold: attr(n, "migration-threshold"),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(view)
}

/// Asks the cluster about `resource` (one `crm_mon`).
pub async fn resource_view(resource: &str) -> Result<ResourceView, String> {
    let xml = crate::actions::run_tool(
        "crm_mon",
        &[
            "--one-shot",
            "--output-as=xml",
            "--show-node-attributes",
            "--failcounts",
            "--fence-history=1",
        ],
        None,
    )
    .await?;
    parse_crm_mon(&xml, resource)
}

/// The nodes Pacemaker runs `resource` on (one `crm_resource --locate`).
pub async fn resource_nodes(resource: &str) -> Result<Vec<String>, String> {
    let out = crate::actions::run_tool("crm_resource", &["--locate", "--resource", resource], None)
        .await?;
    Ok(parse_locate(&out))
}

/// `crm_resource --locate`: "resource R is running on: NODE" per node (or "… is NOT running").
pub fn parse_locate(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_once("is running on:"))
        .map(|(_, node)| node.split_whitespace().next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"warning: crm_mon may warn first
<pacemaker-result api-version="2.25" request="crm_mon --output-as=xml">
  <resources>
    <resource id="vm-web1" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" nodes_running_on="1">
      <node name="node2" id="2" cached="true"/>
    </resource>
    <resource id="other" resource_agent="ocf:pacemaker:Dummy" role="Started" active="true" nodes_running_on="1">
      <node name="node1" id="1" cached="true"/>
    </resource>
  </resources>
  <node_attributes>
    <node name="node1">
      <attribute name="vesper-cause-vm-web1" value="httpd (pid 80) killed by SIGTERM from pkill (pid 91)"/>
      <attribute name="vesper-cause-other" value="not this one"/>
    </node>
    <node name="node2"/>
  </node_attributes>
  <node_history>
    <node name="node1">
      <resource_history id="vm-web1" orphan="false" migration-threshold="1" fail-count="1" last-failure="Wed Dec  2 18:04:11 2026"/>
    </node>
    <node name="node2">
      <resource_history id="vm-web1" orphan="false" migration-threshold="1"/>
    </node>
  </node_history>
  <failures>
    <failure op_key="vm-web1_asyncmon_0" node="node1" exitstatus="error" exitreason="Simulated failure" exitcode="1" call="-1" status="complete" last-rc-change="Wed Dec  2 18:04:11 2026" queued="0" exec="0" interval="0" task="asyncmon"/>
    <failure op_key="other_monitor_10000" node="node1" exitstatus="error" exitreason="" exitcode="1" call="9" status="complete" last-rc-change="x" queued="0" exec="0" interval="10000" task="monitor"/>
  </failures>
  <fence_history>
    <fence_event action="reboot" target="node3" client="pacemaker-controld.80" origin="node1" status="success" delegate="node2" completed="2026-12-02 18:10:01 +00:00"/>
  </fence_history>
</pacemaker-result>"#;

    #[test]
    fn reads_where_it_runs_the_causes_failures_and_counts_of_one_resource() {
        let v = parse_crm_mon(SAMPLE, "vm-web1").unwrap();
        assert_eq!(v.running_on, ["node2"]);
        assert_eq!(
            v.causes,
            [NodeCause {
                node: "node1".into(),
                cause: "httpd (pid 80) killed by SIGTERM from pkill (pid 91)".into()
            }]
        );
        assert_eq!(v.failures.len(), 1);
        assert_eq!(v.failures[0].node, "node1");
        assert_eq!(v.failures[0].op, "vm-web1_asyncmon_0");
        assert_eq!(v.failures[0].when, "Wed Dec  2 18:04:11 2026");
        assert_eq!(
            v.fail_counts,
            [FailCount {
                node: "node1".into(),
                count: "1".into(),
                migration_threshold: "1".into()
            }]
        );
        assert_eq!(
            v.fencing,
            [FenceEvent {
                target: "node3".into(),
                action: "reboot".into(),
                status: "success".into(),
                by: "node2".into(),
                completed: "2026-12-02 18:10:01 +00:00".into()
            }]
        );
    }

    #[test]
    fn locate_names_each_node_and_none_when_stopped() {
        let two = "resource vm-web1 is running on: node1\nresource vm-web1 is running on: node2 Promoted\n";
        assert_eq!(parse_locate(two), ["node1", "node2"]);
        assert!(parse_locate("resource vm-web1 is NOT running\n").is_empty());
    }

    #[test]
    fn a_resource_the_cluster_does_not_have_is_empty_and_bad_xml_is_an_error() {
        let v = parse_crm_mon(SAMPLE, "vm-db9").unwrap();
        assert!(v.running_on.is_empty() && v.causes.is_empty() && v.failures.is_empty());
        assert!(parse_crm_mon("<unclosed", "vm-web1").is_err());
    }
}
