//! Faults that arrive awkwardly for the fail: many at once, and a controller that stalls
//! while a fail is in flight. Same cluster, same rules as the scenarios beside them.

use super::*;

/// Verdicts of `rule` since `t0` in `host`'s why-log: (acted on, debounced).
fn verdicts_since(c: &Cluster, host: &str, rule: &str, t0: u64) -> (Vec<Value>, usize) {
    let entries: Vec<Value> = why(c, host)
        .into_iter()
        .filter(|e| {
            e["verdict"]["rule"] == rule
                && e["verdict"]["time_ms"].as_u64() >= Some(t0)
                && e["pending"] == false
        })
        .collect();
    let debounced = entries.iter().filter(|e| e["debounced"] == true).count();
    let acted = entries
        .into_iter()
        .filter(|e| e["debounced"] != true)
        .collect();
    (acted, debounced)
}

/// Waits for `host`'s vesperd to act on a `service-killed` verdict since `t0`; asserts
/// its Pacemaker action succeeded and returns the action's detail.
fn failed_ok(c: &Cluster, host: &str, t0: u64) -> String {
    wait_until(
        Duration::from_secs(30),
        || !verdicts_since(c, host, "service-killed", t0).0.is_empty(),
        "the verdict acted on",
    );
    let (acted, _) = verdicts_since(c, host, "service-killed", t0);
    assert_eq!(acted[0]["actions"][0]["ok"], true, "{}", acted[0]);
    acted[0]["actions"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The VM's host, once the VM is watched there and its httpd answers.
fn ready_host(c: &Cluster) -> String {
    let host = wait_watched(c, "the VM watched on its host");
    wait_until(
        Duration::from_secs(60),
        || c.http_answers(&host),
        "httpd answering",
    );
    host
}

/// Once the VM is back (on a node other than `not_on`, if given) and answering: the
/// cluster's total fail-count.
fn count_after_recovery(c: &Cluster, not_on: &str) -> i64 {
    let recovered = wait_watched_off(c, not_on, "the VM recovered");
    wait_until(
        Duration::from_secs(90),
        || c.http_answers(&recovered),
        "httpd answering again",
    );
    std::thread::sleep(Duration::from_secs(2));
    total(&failcounts(c))
}

#[test]
fn cluster_8_a_burst_of_faults_is_one_failure() {
    let Some(c) = cluster("cluster_8_burst") else {
        return;
    };
    let host = ready_host(&c);
    let before = total(&failcounts(&c));
    let t0 = now_ms();
    // Six watched services die within a millisecond of each other: six verdicts.
    in_guest(
        &c,
        "for p in 8081 8082 8083 8084 8085; do httpd -h /www -p $p; done; sleep 0.3; /bin/kill -TERM $(pidof httpd)",
    );
    wait_until(
        Duration::from_secs(30),
        || {
            let (acted, debounced) = verdicts_since(&c, &host, "service-killed", t0);
            !acted.is_empty() && debounced >= 3
        },
        "one verdict acted on and the rest of the burst debounced",
    );
    let (acted, debounced) = verdicts_since(&c, &host, "service-killed", t0);
    assert_eq!(acted.len(), 1, "one fail for the burst: {acted:?}");
    assert_eq!(acted[0]["actions"][0]["ok"], true, "{}", acted[0]);
    let after = count_after_recovery(&c, "");
    eprintln!(
        "burst: {} verdicts, 1 acted on, {debounced} debounced; fail-count {before} -> {after}",
        debounced + 1
    );
    assert_eq!(after, before + 1, "a burst of faults is one failure");
    cleanup(&c);
}

#[test]
fn cluster_9_a_controller_that_stalls_mid_fail_still_counts_it_once() {
    let Some(c) = cluster("cluster_9_stalled_controller") else {
        return;
    };
    let host = ready_host(&c);
    let before = total(&failcounts(&c));
    let t0 = now_ms();
    // The controller stops answering for 2 s (within vesperd's 3 s reply timeout): the
    // fail waits in its socket, nothing is sent twice, and it is counted once.
    on(&c, &host, "pkill -STOP -x pacemaker-contr");
    let resume = std::thread::spawn({
        let host = host.clone();
        let dir = c.dir().to_path_buf();
        move || {
            std::thread::sleep(Duration::from_secs(2));
            let c = Cluster::attach(&dir).unwrap();
            c.exec(&host, "pkill -CONT -x pacemaker-contr", TOOL)
                .unwrap()
        }
    });
    let _ = c.guest(VM, "/bin/kill -TERM $(pidof httpd)", TOOL);
    let (_, rc) = resume.join().unwrap();
    assert_eq!(rc, 0, "the controller resumed");
    let detail = failed_ok(&c, &host, t0);
    assert!(detail.contains("over the controller's IPC"), "{detail}");
    let after = count_after_recovery(&c, "");
    eprintln!("stalled controller: {detail}; fail-count {before} -> {after}");
    assert_eq!(after, before + 1, "one failure: {detail}");
    cleanup(&c);
}

/// The DC as `crm_mon` on `node` sees it ("" while there is none).
fn dc_seen_by(c: &Cluster, node: &str) -> String {
    let (out, _) = c.exec(node, "crm_mon -1", TOOL).unwrap();
    out.lines()
        .find_map(|l| l.split_once("Current DC:"))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .filter(|n| *n != "NONE")
        .unwrap_or_default()
        .to_string()
}

fn dc_release(c: &Cluster, node: &str) -> Vec<u32> {
    let v = on(
        c,
        node,
        "crm_attribute --type crm_config --name dc-version --query --quiet",
    );
    let v = v.trim().split('-').next().unwrap_or_default().to_string();
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn cluster_10_a_fault_during_a_dc_election() {
    let Some(c) = cluster("cluster_10_dc_election") else {
        return;
    };
    let restore = Restore(&c);
    let mut host = wait_watched(&c, "the VM watched on its host");
    // The DC must be another node: losing it starts an election the VM's host takes part in.
    if dc_seen_by(&c, &host) == host {
        let to = running(&c).into_iter().find(|n| *n != host).unwrap();
        on(
            &c,
            &host,
            &format!("crm_resource --move --resource {VM_RESOURCE} --node {to}"),
        );
        host = wait_watched_off(&c, &host, "the VM moved off the DC");
        on(
            &c,
            &host,
            &format!("crm_resource --clear --resource {VM_RESOURCE}"),
        );
    }
    let dc = dc_seen_by(&c, &host);
    assert!(!dc.is_empty() && dc != host, "DC {dc:?}, host {host}");
    let counts_once = dc_release(&c, &host) >= vec![2, 1, 6];
    wait_until(
        Duration::from_secs(60),
        || c.http_answers(&host),
        "httpd answering",
    );
    let before = total(&failcounts(&c));
    let t0 = now_ms();
    // The DC's cable is pulled; the fault comes as the survivors notice (corosync's token
    // is 1 s) and elect a new DC.
    c.cut(&dc);
    std::thread::sleep(Duration::from_millis(1200));
    let _ = c.guest(VM, "/bin/kill -TERM $(pidof httpd)", TOOL);
    let dc_at_fault = dc_seen_by(&c, &host);
    let detail = failed_ok(&c, &host, t0);
    let after = count_after_recovery(&c, &dc);
    eprintln!(
        "fault during the election after {dc} was cut (DC seen at the fault: {:?}): {detail}; fail-count {before} -> {after}",
        dc_at_fault
    );
    // Pacemaker (2.1.5 and 3.0.0 alike) may act on a fail sent during an election without
    // counting it; vesperd then counts it itself (docs/pacemaker.md).
    assert_eq!(after, before + 1, "one failure: {detail}");
    if counts_once && !detail.contains("so vesperd raised") {
        assert!(detail.contains("nothing corrected"), "{detail}");
    }
    // The majority fences the node it lost; then it is healed and booted.
    wait_until(
        Duration::from_secs(90),
        || !c.is_running(&dc),
        &format!("{dc} fenced"),
    );
    drop(restore);
    cleanup(&c);
}
