//! The shipped examples stay valid for the tools that read them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_libvirt_domain_example_validates() {
    let Some(tool) = common::need_tool("virt-xml-validate") else {
        return;
    };
    // virt-xml-validate runs xmllint.
    if common::need_tool("xmllint").is_none() {
        return;
    }
    let xml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/libvirt/web1.xml");
    let out = Command::new(tool).arg(&xml).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
