//! `vesper vm add --libvirt DOMAIN`: a `[[vm]]` section from a libvirt domain's XML.
//!
//! The agent's channel is the `<channel type='unix'>` whose target is `org.vesper.0`;
//! QEMU must be the socket's server (`<source mode='bind'>`), since vesperd connects.
//! A `-qmp unix:PATH,server=on` in `<qemu:commandline>` (see examples/libvirt) becomes the
//! VM's `qmp`. The section is appended to the configuration as text, so comments and
//! layout stay, and the whole file is checked as vesperd would load it before it is
//! replaced.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const CHANNEL_NAME: &str = "org.vesper.0";

/// What vesperd needs from a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    /// The channel's socket (QEMU listens).
    pub channel: PathBuf,
    /// A QMP socket QEMU listens on, from `<qemu:commandline>`.
    pub qmp: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("{source_name}: not a libvirt domain XML: {reason}")]
    NotXml { source_name: String, reason: String },
    #[error("{source_name}: the domain has no <name>")]
    NoName { source_name: String },
    #[error(
        "domain {domain} has no virtio channel named {CHANNEL_NAME} (channels: {found}); add one with `virsh edit {domain}`:\n  <channel type='unix'>\n    <source mode='bind' path='/run/vesper/{domain}.sock'/>\n    <target type='virtio' name='{CHANNEL_NAME}'/>\n  </channel>\n(see examples/libvirt/web1.xml)"
    )]
    NoChannel { domain: String, found: String },
    #[error(
        "domain {domain}: channel {CHANNEL_NAME} is <channel type='{kind}'>; vesperd connects to a unix socket QEMU listens on: use <channel type='unix'> with <source mode='bind' path='…'/>"
    )]
    NotUnix { domain: String, kind: String },
    #[error(
        "domain {domain}: channel {CHANNEL_NAME} has <source mode='connect'> (QEMU would connect to vesperd); vesperd connects to QEMU: use mode='bind'"
    )]
    ConnectMode { domain: String },
    #[error(
        "domain {domain}: channel {CHANNEL_NAME} has no socket path; give one (<source mode='bind' path='/run/vesper/{domain}.sock'/>) or start the domain so that libvirt fills it in"
    )]
    NoPath { domain: String },
    #[error(
        "virsh dumpxml {domain}: {reason} (install libvirt-clients, check LIBVIRT_DEFAULT_URI, or pass saved XML with --xml FILE)"
    )]
    Virsh { domain: String, reason: String },
}

/// The domain's XML from `virsh dumpxml` (libvirt's default URI, or LIBVIRT_DEFAULT_URI).
pub fn dumpxml(domain: &str) -> Result<String, LibvirtError> {
    let err = |reason: String| LibvirtError::Virsh {
        domain: domain.to_string(),
        reason,
    };
    let out = Command::new("virsh")
        .args(["dumpxml", domain])
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    String::from_utf8(out.stdout).map_err(|e| err(e.to_string()))
}

/// Finds the channel (and QMP socket) in a domain's XML; `source_name` names the XML in
/// messages.
pub fn parse_domain(xml: &str, source_name: &str) -> Result<Domain, LibvirtError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| LibvirtError::NotXml {
        source_name: source_name.to_string(),
        reason: e.to_string(),
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(LibvirtError::NotXml {
            source_name: source_name.to_string(),
            reason: format!("the root element is <{}>", root.tag_name().name()),
        });
    }
    let name = child(root, "name")
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LibvirtError::NoName {
            source_name: source_name.to_string(),
        })?
        .to_string();
    let channels: Vec<_> = child(root, "devices")
        .into_iter()
        .flat_map(|d| d.children())
        .filter(|c| c.is_element() && c.tag_name().name() == "channel")
        .collect();
    let target_name = |c: &roxmltree::Node<'_, '_>| {
        child(*c, "target")
            .and_then(|t| t.attribute("name"))
            .unwrap_or("")
            .to_string()
    };
    let Some(ch) = channels.iter().find(|c| target_name(c) == CHANNEL_NAME) else {
        let found: Vec<String> = channels.iter().map(target_name).collect();
        return Err(LibvirtError::NoChannel {
            domain: name,
            found: if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            },
        });
    };
    let kind = ch.attribute("type").unwrap_or("");
    if kind != "unix" {
        return Err(LibvirtError::NotUnix {
            domain: name,
            kind: kind.to_string(),
        });
    }
    let source = child(*ch, "source");
    if source.and_then(|s| s.attribute("mode")) == Some("connect") {
        return Err(LibvirtError::ConnectMode { domain: name });
    }
    let channel = source
        .and_then(|s| s.attribute("path"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| LibvirtError::NoPath {
            domain: name.clone(),
        })?;
    Ok(Domain {
        name,
        channel,
        qmp: qmp_socket(root),
    })
}

/// The first child element of `n` named `tag`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
}

/// `-qmp unix:PATH,server…` among `<qemu:commandline>`'s arguments.
fn qmp_socket(root: roxmltree::Node<'_, '_>) -> Option<PathBuf> {
    let args: Vec<&str> = root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "commandline")
        .flat_map(|c| c.children())
        .filter(|a| a.is_element() && a.tag_name().name() == "arg")
        .filter_map(|a| a.attribute("value"))
        .collect();
    args.windows(2)
        .find(|w| w[0] == "-qmp" && w[1].contains("server"))
        .and_then(|w| w[1].strip_prefix("unix:"))
        .and_then(|rest| rest.split(',').next())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// What `vm add` puts in the section beside the domain's sockets.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The VM's name in vesper (default: the domain's name).
    pub name: Option<String>,
    pub resource: Option<String>,
    pub watch: Vec<String>,
    pub probes: Vec<String>,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", q.join(", "))
}

/// The `[[vm]]` section for `d`.
pub fn section(d: &Domain, o: &Options) -> String {
    let name = o.name.as_deref().unwrap_or(&d.name);
    let mut s = format!(
        "\n# Added by `vesper vm add --libvirt {}`.\n[[vm]]\nname = {}\nchannel = {}\nprobes = {}\n",
        d.name.escape_debug(),
        quoted(name),
        quoted(&format!("unix:{}", d.channel.display())),
        list(&o.probes)
    );
    if let Some(q) = &d.qmp {
        s.push_str(&format!(
            "qmp = {}\n",
            quoted(&format!("unix:{}", q.display()))
        ));
    }
    if let Some(r) = &o.resource {
        s.push_str(&format!("resource = {}\n", quoted(r)));
    }
    if !o.watch.is_empty() {
        s.push_str(&format!("watch = {}\n", list(&o.watch)));
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: with the new section: {error}; the file is unchanged")]
    Invalid { path: PathBuf, error: String },
    #[error(
        "{path}: VM {name:?} already uses the channel {channel}; remove it first or give this VM another channel"
    )]
    SameChannel {
        path: PathBuf,
        name: String,
        channel: String,
    },
}

/// Appends `section` to the configuration at `path` (created if missing) once the result
/// loads as vesperd would load it; the file is replaced in one rename, keeping its mode.
pub fn append(path: &Path, section: &str) -> Result<(), AddError> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AddError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let mut text = old.clone().unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(section);
    let cfg = vesper_config::config::Config::parse(path, &text).map_err(|e| {
        let mut error = e.to_string();
        if error.contains(".name`") {
            error.push_str(" (choose the VM's name with --name)");
        }
        AddError::Invalid {
            path: path.into(),
            error,
        }
    })?;
    if let Some(new) = cfg.vm.last()
        && let Some(other) = cfg.vm[..cfg.vm.len() - 1]
            .iter()
            .find(|v| v.channel == new.channel)
    {
        return Err(AddError::SameChannel {
            path: path.into(),
            name: other.name.clone(),
            channel: new.channel.clone(),
        });
    }
    let write_err = |source| AddError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("toml.vesper-new");
    std::fs::write(&tmp, &text).map_err(write_err)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(write_err)?;
    }
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/libvirt/web1.xml");

    #[test]
    fn the_shipped_example_gives_its_channel_and_qmp_socket() {
        let d = parse_domain(EXAMPLE, "web1.xml").unwrap();
        assert_eq!(d.name, "web1");
        assert_eq!(d.channel, PathBuf::from("/run/vesper/web1.sock"));
        assert_eq!(d.qmp, Some(PathBuf::from("/run/vesper/web1.qmp")));
    }

    #[test]
    fn mistakes_are_named_with_the_fix() {
        let no_channel = EXAMPLE.replace("org.vesper.0", "org.qemu.guest_agent.0");
        let e = parse_domain(&no_channel, "x").unwrap_err().to_string();
        assert!(
            e.contains("no virtio channel named org.vesper.0 (channels: org.qemu.guest_agent.0)")
                && e.contains("virsh edit web1"),
            "{e}"
        );
        let connect = EXAMPLE.replace("mode='bind'", "mode='connect'");
        let e = parse_domain(&connect, "x").unwrap_err().to_string();
        assert!(e.contains("use mode='bind'"), "{e}");
        let pty = EXAMPLE.replace("<channel type='unix'>", "<channel type='pty'>");
        let e = parse_domain(&pty, "x").unwrap_err().to_string();
        assert!(e.contains("<channel type='pty'>"), "{e}");
        let e = parse_domain("<domain", "saved.xml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("saved.xml: not a libvirt domain XML"), "{e}");
    }

    #[test]
    fn strings_are_quoted_as_toml() {
        let d = Domain {
            name: "a\"b".into(),
            channel: "/run/x \"y\".sock".into(),
            qmp: None,
        };
        let s = section(&d, &Options::default());
        let v: toml::Value = toml::from_str(&s).unwrap();
        assert_eq!(v["vm"][0]["name"].as_str(), Some("a\"b"));
        assert_eq!(
            v["vm"][0]["channel"].as_str(),
            Some("unix:/run/x \"y\".sock")
        );
    }
}
