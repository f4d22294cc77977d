//! A real single-node Pacemaker cluster for tests: corosync + pacemakerd, started from a
//! fresh CIB and stopped (pacemakerd first, then corosync) on drop. The host's own CIB is
//! set aside and put back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{need_tool, wait_until};

pub const NODE: &str = "node1";
const CIB_DIR: &str = "/var/lib/pacemaker/cib";

const COROSYNC_CONF: &str = "totem {
    version: 2
    cluster_name: vesper-test
    transport: knet
    crypto_cipher: none
    crypto_hash: none
}
nodelist {
    node {
        ring0_addr: 127.0.0.1
        name: node1
        nodeid: 1
    }
}
quorum {
    provider: corosync_votequorum
}
logging {
    to_stderr: yes
    to_syslog: no
}
";

pub struct FailureMark {
    pub failcount: i64,
    failure_call: i64,
}

pub struct Cluster {
    dir: tempfile::TempDir,
    corosync: Option<Child>,
    pacemakerd: Option<Child>,
    cib_backup: PathBuf,
}

/// One `ocf:pacemaker:Dummy` per name, each with a 10 s monitor, the common default.
fn dummies(resources: &[&str]) -> String {
    resources
        .iter()
        .map(|r| {
            format!(
                "      <primitive id=\"{r}\" class=\"ocf\" provider=\"pacemaker\" type=\"Dummy\">\n        <operations>\n          <op id=\"{r}-mon\" name=\"monitor\" interval=\"10s\"/>\n        </operations>\n      </primitive>\n"
            )
        })
        .collect()
}

/// A fresh CIB with these `<primitive>`s and `<alerts>` (XML, either may be empty).
fn cib(prims: &str, alerts: &str) -> String {
    // dc-deadtime 2s: a single node need not wait 20 s for peers before electing itself.
    format!(
        "<cib crm_feature_set=\"3.16.1\" validate-with=\"pacemaker-3.9\" epoch=\"1\" num_updates=\"0\" admin_epoch=\"0\">
  <configuration>
    <crm_config>
      <cluster_property_set id=\"cib-bootstrap-options\">
        <nvpair id=\"opt-stonith\" name=\"stonith-enabled\" value=\"false\"/>
        <nvpair id=\"opt-quorum\" name=\"no-quorum-policy\" value=\"ignore\"/>
        <nvpair id=\"opt-dc-deadtime\" name=\"dc-deadtime\" value=\"2s\"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
{prims}    </resources>
    <constraints/>
{alerts}  </configuration>
  <status/>
</cib>
"
    )
}

fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tool(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("{program}: {e}")),
    }
}

/// The value of `name="…"` in one XML element's text.
fn xml_attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = element.find(&key)? + key.len();
    element[i..].split('"').next()
}

impl Cluster {
    /// A cluster of `ocf:pacemaker:Dummy` resources. None (after printing why) when
    /// Pacemaker is not installed outside CI.
    pub fn start(resources: &[&str]) -> Option<Cluster> {
        Cluster::start_with(&dummies(resources), "", resources)
    }

    /// A cluster whose CIB holds `primitives` and `alerts` (XML); returns once each of
    /// `resources` is started.
    pub fn start_with(primitives: &str, alerts: &str, resources: &[&str]) -> Option<Cluster> {
        need_tool("pacemakerd")?;
        need_tool("corosync")?;
        need_tool("crm_resource")?;
        assert!(
            !running("corosync") && !running("pacemakerd"),
            "a cluster is already running on this host; the Pacemaker tests start their own \
             single-node cluster and would disturb it: run them on a test machine"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cib_backup = dir.path().join("cib-backup");
        std::fs::create_dir_all(&cib_backup).unwrap();
        std::fs::create_dir_all(CIB_DIR).unwrap();
        for e in std::fs::read_dir(CIB_DIR).unwrap().flatten() {
            std::fs::rename(e.path(), cib_backup.join(e.file_name())).unwrap();
        }
        let cib_file = Path::new(CIB_DIR).join("cib.xml");
        std::fs::write(&cib_file, cib(primitives, alerts)).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "hacluster:haclient", CIB_DIR])
            .status();
        let conf = dir.path().join("corosync.conf");
        std::fs::write(&conf, COROSYNC_CONF).unwrap();
        let logs = dir.path().to_path_buf();
        let log = |n: &str| std::fs::File::create(logs.join(n)).unwrap();
        let corosync = Command::new("corosync")
            .arg("-c")
            .arg(&conf)
            .arg("-f")
            .stdout(log("corosync.log"))
            .stderr(log("corosync.err"))
            .spawn()
            .expect("start corosync");
        let mut c = Cluster {
            dir,
            corosync: Some(corosync),
            pacemakerd: None,
            cib_backup,
        };
        std::thread::sleep(Duration::from_millis(500));
        c.pacemakerd = Some(
            Command::new("pacemakerd")
                .stdout(log("pacemakerd.log"))
                .stderr(log("pacemakerd.err"))
                .spawn()
                .expect("start pacemakerd"),
        );
        let t = Instant::now();
        wait_until(
            Duration::from_secs(90),
            || resources.iter().all(|r| c.started(r)),
            "Pacemaker to elect a DC and start the resources",
        );
        eprintln!(
            "cluster up, {resources:?} started, in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Some(c)
    }

    pub fn crm_mon(&self) -> String {
        tool("crm_mon", &["-1", "-A", "-f"]).1
    }

    fn started(&self, rsc: &str) -> bool {
        let (ok, out) = tool("crm_resource", &["--locate", "--resource", rsc]);
        ok && out.contains(&format!("running on: {NODE}"))
    }

    /// The resource's fail-count on the node, as `crm_failcount` reports it.
    pub fn failcount(&self, rsc: &str) -> i64 {
        let (ok, out) = tool(
            "crm_failcount",
            &["--query", "--resource", rsc, "--node", NODE],
        );
        assert!(ok, "crm_failcount: {out}");
        // "scope=status  name=fail-count-R value=N"
        out.trim()
            .rsplit("value=")
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("crm_failcount said {out:?}"))
    }

    /// `crm_attribute` on a transient node attribute (`--lifetime reboot`), doing `op`.
    fn transient_attr(&self, name: &str, op: &[&str]) -> (bool, String) {
        let mut args = vec!["--node", NODE, "--name", name, "--lifetime", "reboot"];
        args.extend_from_slice(op);
        tool("crm_attribute", &args)
    }

    /// A transient node attribute's value.
    pub fn node_attr(&self, name: &str) -> Option<String> {
        let (ok, out) = self.transient_attr(name, &["--query", "--quiet"]);
        ok.then(|| out.trim().to_string())
    }

    /// Deletes a transient node attribute (absent already: nothing to do).
    pub fn delete_node_attr(&self, name: &str) {
        self.transient_attr(name, &["--delete"]);
    }

    /// The resource's operation history entry `id` (`RSC_last_0`, `RSC_last_failure_0`):
    /// (operation, call-id, rc-code).
    pub fn history(&self, id: &str) -> Option<(String, i64, i64)> {
        let (ok, xml) = tool("cibadmin", &["--query", "--scope", "status"]);
        assert!(ok, "cibadmin: {xml}");
        let start = xml.find(&format!("<lrm_rsc_op id=\"{id}\""))?;
        let el = &xml[start..start + xml[start..].find('>')?];
        Some((
            xml_attr(el, "operation")?.to_string(),
            xml_attr(el, "call-id")?.parse().ok()?,
            xml_attr(el, "rc-code")?.parse().ok()?,
        ))
    }

    /// Where the resource's failures stand, to compare with after a fault.
    pub fn mark(&self, rsc: &str) -> FailureMark {
        FailureMark {
            failcount: self.failcount(rsc),
            failure_call: self
                .history(&format!("{rsc}_last_failure_0"))
                .map_or(-1, |f| f.1),
        }
    }

    /// Waits for a new failure of `rsc` after `mark`, for Pacemaker to recover from it and
    /// for `acted` (vesperd reports its action done), then checks, a second later, that the
    /// fail-count rose by exactly one. Returns when the failure was first seen.
    pub fn expect_one_failure(
        &self,
        rsc: &str,
        mark: &FailureMark,
        what: &str,
        acted: impl FnMut() -> bool,
    ) -> Instant {
        wait_until(
            Duration::from_secs(30),
            || {
                self.history(&format!("{rsc}_last_failure_0"))
                    .is_some_and(|f| f.1 > mark.failure_call)
            },
            &format!("Pacemaker to record the failure: {what}"),
        );
        let seen = Instant::now();
        self.wait_recovered(rsc);
        wait_until(
            Duration::from_secs(30),
            acted,
            "vesperd to finish its action",
        );
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            self.failcount(rsc),
            mark.failcount + 1,
            "exactly one failure for {what}"
        );
        seen
    }

    /// Waits until Pacemaker has recovered `rsc` after its latest failure: the last
    /// operation is a successful start that came after the failed one.
    pub fn wait_recovered(&self, rsc: &str) {
        wait_until(
            Duration::from_secs(30),
            || {
                let failed = self.history(&format!("{rsc}_last_failure_0"));
                let last = self.history(&format!("{rsc}_last_0"));
                matches!((failed, last), (Some((_, f, _)), Some((op, l, 0))) if op == "start" && l > f)
            },
            "Pacemaker to restart the failed resource",
        );
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in ["corosync.err", "pacemakerd.err"] {
            s.push_str(&format!(
                "----- {n}\n{}\n",
                std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default()
            ));
        }
        s
    }
}

fn stop(child: &mut Option<Child>, timeout: Duration) {
    let Some(c) = child.as_mut() else { return };
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < timeout {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}\n{}", self.crm_mon(), self.logs());
        }
        stop(&mut self.pacemakerd, Duration::from_secs(60));
        // pacemakerd's children, should any outlive it.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "^/usr/lib/pacemaker/pacemaker-"])
            .status();
        stop(&mut self.corosync, Duration::from_secs(20));
        if let Ok(entries) = std::fs::read_dir(CIB_DIR) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for e in std::fs::read_dir(&self.cib_backup)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::rename(e.path(), Path::new(CIB_DIR).join(e.file_name()));
        }
    }
}
