//! Where the agent's byte stream to the host comes from.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The name of the virtio-serial port the host exposes to the agent.
pub const PORT_NAME: &str = "org.vesper.0";

/// A connected, non-blocking byte stream to the host.
pub trait Conn: Read + Write + AsRawFd + Send {}
impl Conn for UnixStream {}
impl Conn for std::fs::File {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSpec {
    /// Find the virtio-serial port named `org.vesper.0` in sysfs.
    Auto,
    /// A character device such as /dev/vport1p1.
    Device(PathBuf),
    /// Listen on a unix socket and serve one host at a time (stands in for QEMU in tests).
    UnixListen(PathBuf),
}

impl std::str::FromStr for ChannelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            Ok(Self::Auto)
        } else if let Some(p) = s.strip_prefix("unix-listen:") {
            if p.is_empty() {
                return Err(
                    "unix-listen: needs a path, e.g. unix-listen:/run/vesper-agent.sock".into(),
                );
            }
            Ok(Self::UnixListen(p.into()))
        } else if s.starts_with('/') {
            Ok(Self::Device(s.into()))
        } else {
            Err(format!(
                "bad channel {s:?}: use auto, a device path like /dev/vport1p1, or unix-listen:PATH"
            ))
        }
    }
}

/// Opens connections according to a [`ChannelSpec`].
#[derive(Debug)]
pub struct Channel {
    spec: ChannelSpec,
    listener: Option<UnixListener>,
}

impl Channel {
    pub fn new(spec: ChannelSpec) -> io::Result<Self> {
        let listener = match &spec {
            ChannelSpec::UnixListen(p) => {
                let _ = std::fs::remove_file(p);
                Some(UnixListener::bind(p)?)
            }
            _ => None,
        };
        Ok(Self { spec, listener })
    }

    /// Waits for (or opens) the next connection to the host.
    pub fn connect(&self) -> io::Result<Box<dyn Conn>> {
        match (&self.spec, &self.listener) {
            (ChannelSpec::UnixListen(_), Some(l)) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok(Box::new(s))
            }
            (ChannelSpec::Device(p), _) => open_device(p),
            (ChannelSpec::Auto, _) => {
                open_device(&find_port(Path::new("/sys/class/virtio-ports"))?)
            }
            (ChannelSpec::UnixListen(_), None) => Err(io::Error::other("listener missing")),
        }
    }
}

fn open_device(p: &Path) -> io::Result<Box<dyn Conn>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)?;
    Ok(Box::new(f))
}

/// The /dev node of the virtio-serial port named [`PORT_NAME`]. There can be several
/// ports; only the name identifies ours.
pub fn find_port(sysfs: &Path) -> io::Result<PathBuf> {
    for entry in std::fs::read_dir(sysfs)? {
        let entry = entry?;
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no virtio-serial port named {PORT_NAME} under {}",
            sysfs.display()
        ),
    ))
}

pub fn raw_fd(c: &dyn Conn) -> RawFd {
    c.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_port_by_name_among_several() {
        let d = std::env::temp_dir().join(format!("vesper-ports-{}", std::process::id()));
        for (port, name) in [
            ("vport1p1", "org.qemu.guest_agent.0"),
            ("vport2p1", "org.vesper.0"),
        ] {
            std::fs::create_dir_all(d.join(port)).unwrap();
            std::fs::write(d.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_port(&d).unwrap(), PathBuf::from("/dev/vport2p1"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse::<ChannelSpec>(), Ok(ChannelSpec::Auto));
        assert_eq!(
            "/dev/vport1p1".parse::<ChannelSpec>(),
            Ok(ChannelSpec::Device("/dev/vport1p1".into()))
        );
        assert!("tcp:1".parse::<ChannelSpec>().is_err());
    }
}
