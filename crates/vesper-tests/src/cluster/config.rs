//! The files every node shares (corosync.conf, the seed CIB, /etc/hosts) and the VM's
//! libvirt domain: plain text from the spec, no I/O.

use std::fmt::Write as _;
use std::path::Path;

/// The lab switch's subnet; node N is `10.99.0.N`.
pub fn addr(n: usize) -> String {
    format!("10.99.0.{n}")
}

pub fn corosync_conf(nodes: usize) -> String {
    let mut s = String::from(
        "totem {
    version: 2
    cluster_name: vesper-lab
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}
nodelist {
",
    );
    for n in 1..=nodes {
        let _ = write!(
            s,
            "    node {{\n        ring0_addr: {}\n        name: node{n}\n        nodeid: {n}\n    }}\n",
            addr(n)
        );
    }
    s.push_str("}\nquorum {\n    provider: corosync_votequorum\n");
    if nodes == 2 {
        // Two nodes keep quorum when one is lost (and so split-brain on a cut).
        s.push_str("    two_node: 1\n");
    }
    s.push_str("}\nlogging {\n    to_stderr: yes\n    to_syslog: no\n}\n");
    s
}

pub fn hosts(nodes: usize) -> String {
    let mut s = String::from("127.0.0.1 localhost\n");
    for n in 1..=nodes {
        let _ = writeln!(s, "{} node{n}", addr(n));
    }
    s
}

/// The one VM resource: a VirtualDomain that may live-migrate.
pub const VM_RESOURCE: &str = "vm-web1";
pub const VM_DOMAIN: &str = "web1";
/// The guest's httpd, inside whichever node runs it.
pub const VM_HTTP_PORT: u16 = 18080;

fn nv(id: &str, name: &str, value: &str) -> String {
    format!("          <nvpair id=\"{id}-{name}\" name=\"{name}\" value=\"{value}\"/>\n")
}

/// The seed CIB, identical on every node: with it the first election does not wait for
/// the default dc-deadtime (20 s).
pub fn cib(nodes: usize, stonith: bool, domain_xml: &Path) -> String {
    let quorum = if nodes == 2 { "ignore" } else { "stop" };
    let r = VM_RESOURCE;
    let mut prims = format!(
        "      <primitive id=\"{r}\" class=\"ocf\" provider=\"heartbeat\" type=\"VirtualDomain\">
        <instance_attributes id=\"{r}-ia\">
{}{}{}{}        </instance_attributes>
        <meta_attributes id=\"{r}-meta\">
{}        </meta_attributes>
        <operations>
          <op id=\"{r}-start\" name=\"start\" interval=\"0s\" timeout=\"120s\"/>
          <op id=\"{r}-stop\" name=\"stop\" interval=\"0s\" timeout=\"60s\"/>
          <op id=\"{r}-monitor\" name=\"monitor\" interval=\"10s\" timeout=\"30s\"/>
          <op id=\"{r}-migrate_to\" name=\"migrate_to\" interval=\"0s\" timeout=\"120s\"/>
          <op id=\"{r}-migrate_from\" name=\"migrate_from\" interval=\"0s\" timeout=\"60s\"/>
        </operations>
      </primitive>
",
        nv(r, "config", &domain_xml.display().to_string()),
        nv(r, "hypervisor", "qemu:///system"),
        nv(r, "migration_transport", "tcp"),
        // The lab guest ignores ACPI shutdown: a graceful stop would only wait out its
        // timeout (and a node that lost quorum would keep its copy running meanwhile).
        nv(r, "force_stop", "true"),
        nv(r, "allow-migrate", "true"),
    );
    if stonith {
        let hosts: Vec<String> = (1..=nodes).map(|n| format!("node{n}")).collect();
        let _ = write!(
            prims,
            "      <primitive id=\"fence-lab\" class=\"stonith\" type=\"fence_vesperlab\">
        <instance_attributes id=\"fence-lab-ia\">
{}{}        </instance_attributes>
        <operations>
          <op id=\"fence-lab-monitor\" name=\"monitor\" interval=\"60s\"/>
        </operations>
      </primitive>
",
            nv("fence-lab", "pcmk_host_list", &hosts.join(" ")),
            // A fenced node stays off until `boot`: tests decide when it comes back.
            nv("fence-lab", "pcmk_reboot_action", "off"),
        );
    }
    format!(
        "<cib crm_feature_set=\"3.16.1\" validate-with=\"pacemaker-3.9\" epoch=\"1\" num_updates=\"0\" admin_epoch=\"0\">
  <configuration>
    <crm_config>
      <cluster_property_set id=\"cib-bootstrap-options\">
        <nvpair id=\"opt-stonith\" name=\"stonith-enabled\" value=\"{stonith}\"/>
        <nvpair id=\"opt-quorum\" name=\"no-quorum-policy\" value=\"{quorum}\"/>
        <nvpair id=\"opt-dc-deadtime\" name=\"dc-deadtime\" value=\"2s\"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
{prims}    </resources>
    <constraints/>
    <rsc_defaults>
      <meta_attributes id=\"rsc-options\">
        <!-- A VM stays where it runs when a node (re)joins: moves are the tests' to make. -->
        <nvpair id=\"rsc-stickiness\" name=\"resource-stickiness\" value=\"1\"/>
      </meta_attributes>
    </rsc_defaults>
  </configuration>
  <status/>
</cib>
"
    )
}

/// The lab guest as a libvirt domain: TCG, direct kernel boot, the agent's channel and the
/// lab port as virtio-serial sockets under the node's /run/vesper (which the host sees),
/// pvpanic, and the guest's httpd forwarded to 127.0.0.1 of the node running it.
pub fn domain_xml(kernel: &Path, initrd: &Path) -> String {
    let d = VM_DOMAIN;
    let port = VM_HTTP_PORT;
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{d}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
    <initrd>{}</initrd>
    <cmdline>console=ttyS0 panic=0 loglevel=4 vesper.early</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'>
      <source path='/run/vesper/{d}.console.log' append='on'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/run/vesper/{d}.sock'/>
      <target type='virtio' name='org.vesper.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/vesper/{d}.lab.sock'/>
      <target type='virtio' name='org.vesper.lab.0'/>
    </channel>
    <panic model='isa'/>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <!-- The guest's network: user mode (no bridge on the node), httpd forwarded. A NIC
       with its own PCI slot: libvirt places its devices from slot 2 and knows nothing of
       this one (`-nic` would take slot 2 first). -->
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=lan,hostfwd=tcp:127.0.0.1:{port}-:80'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='e1000,netdev=lan,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>
",
        kernel.display(),
        initrd.display()
    )
}

/// The host's users and groups plus `libvirt-qemu`, without which Debian's libvirtd
/// refuses to start.
pub fn passwd_group(passwd: &str, group: &str) -> (String, String) {
    let mut p = passwd.to_string();
    let mut g = group.to_string();
    if !p.lines().any(|l| l.starts_with("libvirt-qemu:")) {
        p.push_str("libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n");
    }
    for (name, gid) in [("libvirt-qemu", 64055), ("kvm", 64056)] {
        if !g.lines().any(|l| l.starts_with(&format!("{name}:"))) {
            let _ = writeln!(g, "{name}:x:{gid}:");
        }
    }
    (p, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_keep_quorum_three_do_not() {
        assert!(corosync_conf(2).contains("two_node: 1"));
        assert!(!corosync_conf(3).contains("two_node"));
        assert!(corosync_conf(3).contains("ring0_addr: 10.99.0.3"));
        let c = cib(3, false, Path::new("/d/web1.xml"));
        assert!(c.contains("value=\"stop\"") && !c.contains("fence_vesperlab"));
        let c = cib(2, true, Path::new("/d/web1.xml"));
        assert!(c.contains("value=\"ignore\"") && c.contains("value=\"node1 node2\""));
        assert!(roxmltree::Document::parse(&c).is_ok());
    }

    #[test]
    fn passwd_gets_libvirt_qemu_once() {
        let (p, g) = passwd_group("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
        assert!(p.contains("libvirt-qemu:x:64055"));
        let (p2, _) = passwd_group(&p, &g);
        assert_eq!(p, p2);
        assert!(roxmltree::Document::parse(&domain_xml(Path::new("/k"), Path::new("/i"))).is_ok());
    }
}
