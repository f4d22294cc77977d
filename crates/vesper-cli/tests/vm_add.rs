//! `vesper vm add --libvirt`: a VM is added from a domain's XML (saved `virsh dumpxml`
//! output of a running domain, and the shipped example) without hand-editing the config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIG: &str = "# Our host's vesperd.\n[daemon]\nsocket = \"/run/vesper/vesper.sock\"\n\n[[vm]]\nname = \"db1\"   # the database\nchannel = \"unix:/run/vesper/db1.sock\"\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/libvirt/web1.xml")
}

fn vm_add(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vesper"))
        .args(["vm", "add", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_running_domain_is_added_with_its_generated_channel_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vesper.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let xml = fixture("web2-running.xml");
    let o = vm_add(
        &cfg,
        &[
            "--libvirt",
            "web2",
            "--xml",
            xml.to_str().unwrap(),
            "--resource",
            "web2-vm",
            "--watch",
            "httpd,postgres",
            "--probe",
            "signal",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.starts_with(CONFIG),
        "comments and layout kept:\n{text}"
    );
    let loaded = vesper_config::config::Config::load(&cfg).unwrap();
    let vm = loaded.vm("web2").unwrap();
    assert_eq!(
        vm.channel, "unix:/var/lib/libvirt/qemu/channel/target/domain-3-web2/org.vesper.0",
        "the org.vesper.0 channel, not the guest agent's"
    );
    assert_eq!(vm.resource.as_deref(), Some("web2-vm"));
    assert_eq!(vm.watch, ["httpd", "postgres"]);
    assert_eq!(vm.probes, ["signal"]);
    assert_eq!(vm.qmp, None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("systemctl reload vesperd"));

    // Once only: the second time names the clash, and the file is unchanged.
    let again = vm_add(&cfg, &["--libvirt", "web2", "--xml", xml.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is defined twice"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    // Another VM on the same socket is refused.
    let copy = dir.path().join("web3.xml");
    std::fs::write(
        &copy,
        std::fs::read_to_string(&xml)
            .unwrap()
            .replace("<name>web2</name>", "<name>web3</name>"),
    )
    .unwrap();
    let same = vm_add(
        &cfg,
        &["--libvirt", "web3", "--xml", copy.to_str().unwrap()],
    );
    assert_eq!(same.status.code(), Some(1));
    assert!(
        stderr(&same).contains("already uses the channel"),
        "{}",
        stderr(&same)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
}

#[test]
fn the_shipped_example_domain_brings_its_qmp_socket_and_a_new_config_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc/vesper.toml");
    let o = vm_add(
        &cfg,
        &["--libvirt", "web1", "--xml", example().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let loaded = vesper_config::config::Config::load(&cfg).unwrap();
    let vm = loaded.vm("web1").unwrap();
    assert_eq!(vm.channel, "unix:/run/vesper/web1.sock");
    assert_eq!(vm.qmp.as_deref(), Some("unix:/run/vesper/web1.qmp"));
}

#[test]
fn mistakes_name_the_place_and_the_fix_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vesper.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let xml = example();
    // The XML is of another domain.
    let o = vm_add(&cfg, &["--libvirt", "web9", "--xml", xml.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("describes domain \"web1\", not \"web9\""),
        "{}",
        stderr(&o)
    );
    // A domain without the channel.
    let bare = dir.path().join("bare.xml");
    std::fs::write(
        &bare,
        "<domain type='kvm'><name>bare</name><devices></devices></domain>",
    )
    .unwrap();
    let o = vm_add(
        &cfg,
        &["--libvirt", "bare", "--xml", bare.to_str().unwrap()],
    );
    let e = stderr(&o);
    assert!(
        e.contains("domain bare has no virtio channel named org.vesper.0 (channels: none)")
            && e.contains("<source mode='bind' path='/run/vesper/bare.sock'/>"),
        "{e}"
    );
    // A name vesper cannot use.
    let o = vm_add(
        &cfg,
        &[
            "--libvirt",
            "web1",
            "--xml",
            xml.to_str().unwrap(),
            "--name",
            "web 1",
        ],
    );
    assert!(
        stderr(&o).contains("choose the VM's name with --name"),
        "{}",
        stderr(&o)
    );
    // No virsh on PATH: say what to install, or how to do without.
    let o = Command::new(env!("CARGO_BIN_EXE_vesper"))
        .args(["vm", "add", "--config"])
        .arg(&cfg)
        .args(["--libvirt", "web1"])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("virsh dumpxml web1") && stderr(&o).contains("--xml FILE"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), CONFIG);
}
