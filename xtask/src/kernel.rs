//! The lab's guest kernels, all Debian's: 5.10 (Debian 11), 6.1 (Debian 12, the default)
//! and 6.12 (Debian 12 backports). Each is downloaded once and unpacked into its own
//! `target/lab/kernel/<series>/root`, so switching kernels never fetches another again.
//!
//! 6.1 is the package the machine's own apt sources carry (`apt-get download`). The others
//! are not in those sources: their package is picked from the archives' Packages indexes at
//! download time (the newest of the series), fetched with curl and checked against the
//! index's size and SHA256 before it is unpacked.
//!
//! The modules the guest needs are found by name in the unpacked tree (the package has no
//! `modules.dep`: depmod runs at install time), with their dependencies read from each
//! module's own `.modinfo`; built-in ones are skipped, compressed ones decompressed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::util::{self, progress};

const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";

/// The guest's drivers, by module name: virtio-serial (the agent's channel), pvpanic (a
/// guest panic reaching QMP), e1000 (httpd). Their dependencies come along.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_console",
    "pvpanic",
    "pvpanic-mmio",
    "e1000",
];
/// Modules every kernel must have (as a file or built in); the others are split out of
/// these in newer kernels only.
const REQUIRED: &[&str] = &["virtio_pci", "virtio_console", "pvpanic", "e1000"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    V5_10,
    #[default]
    V6_1,
    V6_12,
}

/// Where a kernel's package comes from.
enum Source {
    /// `apt-get download` of this package from the machine's apt sources.
    Apt(&'static str),
    /// The newest `linux-image-<series>.…-amd64` in these archives (URL, suite).
    Index(&'static [(&'static str, &'static str)]),
}

impl Kernel {
    pub const CHOICES: &str = "5.10, 6.1 or 6.12";

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "5.10" => Ok(Self::V5_10),
            "6.1" => Ok(Self::V6_1),
            "6.12" => Ok(Self::V6_12),
            other => bail!("--kernel takes {}, not {other}", Self::CHOICES),
        }
    }

    /// "5.10", "6.1" or "6.12": the name `--kernel` takes and the tests see.
    pub fn series(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    fn source(self) -> Source {
        match self {
            Self::V5_10 => {
                Source::Index(&[(DEBIAN, "bullseye"), (DEBIAN_SECURITY, "bullseye-security")])
            }
            Self::V6_1 => Source::Apt("linux-image-6.1.0-56-amd64"),
            Self::V6_12 => Source::Index(&[(DEBIAN, "bookworm-backports")]),
        }
    }
}

/// An unpacked guest kernel.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    pub kernel: Kernel,
    pub vmlinuz: PathBuf,
    /// The unpacked package (`boot/`, `lib/modules/<release>/`).
    pub root: PathBuf,
    /// `uname -r` in the guest, e.g. `5.10.0-46-amd64`.
    pub release: String,
    /// Written last, after a complete unpack: what was downloaded (newer than the tree).
    pub stamp: PathBuf,
}

fn kernels_dir() -> anyhow::Result<PathBuf> {
    Ok(util::target_dir()?.join("lab").join("kernel"))
}

/// The kernel, downloaded and unpacked unless it already is.
pub fn fetch(kernel: Kernel) -> anyhow::Result<GuestKernel> {
    let dir = kernels_dir()?.join(kernel.series());
    let root = dir.join("root");
    let stamp = dir.join("package");
    if kernel == Kernel::V6_1 {
        migrate_old_layout(&dir)?;
    }
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (deb, what) = match kernel.source() {
            Source::Apt(pkg) => (
                apt_download(pkg, &dir)?,
                format!("{pkg} (apt-get download)\n"),
            ),
            Source::Index(suites) => download_newest(kernel.series(), suites, &dir)?,
        };
        progress(&format!("unpacking the {} kernel", kernel.series()));
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let _ = std::fs::remove_file(&deb);
        std::fs::write(&stamp, what)?;
    }
    let release = release_of(&root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no {}", root.display(), vmlinuz.display());
    }
    Ok(GuestKernel {
        kernel,
        vmlinuz,
        root,
        release,
        stamp,
    })
}

/// The one kernel the lab had before it had several: `target/lab/kernel/root` becomes
/// `target/lab/kernel/6.1/root` instead of being downloaded again.
fn migrate_old_layout(dir: &Path) -> anyhow::Result<()> {
    let old = kernels_dir()?.join("root");
    if dir.exists() || !old.join("boot/vmlinuz-6.1.0-56-amd64").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::rename(&old, dir.join("root"))?;
    std::fs::write(
        dir.join("package"),
        "linux-image-6.1.0-56-amd64 (apt-get download)\n",
    )?;
    Ok(())
}

/// The release under `lib/modules/` of an unpacked kernel package (there is one).
fn release_of(root: &Path) -> anyhow::Result<String> {
    let dir = root.join("lib/modules");
    let mut found = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok());
    let release = found
        .next()
        .with_context(|| format!("{} is empty", dir.display()))?;
    if found.next().is_some() {
        bail!("{} holds more than one kernel release", dir.display());
    }
    Ok(release)
}

fn apt_download(pkg: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    progress(&format!(
        "downloading the guest kernel ({pkg}, Debian package)"
    ));
    util::run(
        Command::new("apt-get")
            .arg("download")
            .arg(pkg)
            .current_dir(dir),
    )?;
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")
}

/// One binary package of a Packages index.
#[derive(Clone, Debug, PartialEq)]
struct Package {
    name: String,
    version: String,
    filename: String,
    size: u64,
    sha256: String,
    /// The archive it is in (the base of `filename`) and the suite, for messages.
    archive: String,
    suite: String,
}

/// The packages of a Packages index text (stanzas of `Field: value` lines).
fn parse_index(text: &str, archive: &str, suite: &str) -> Vec<Package> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let mut fields = BTreeMap::new();
            for line in stanza.lines() {
                if let Some((k, v)) = line.split_once(": ")
                    && !line.starts_with([' ', '\t'])
                {
                    fields.insert(k, v.trim());
                }
            }
            Some(Package {
                name: (*fields.get("Package")?).to_string(),
                version: (*fields.get("Version")?).to_string(),
                filename: (*fields.get("Filename")?).to_string(),
                size: fields.get("Size")?.parse().ok()?,
                sha256: (*fields.get("SHA256")?).to_string(),
                archive: archive.to_string(),
                suite: suite.to_string(),
            })
        })
        .collect()
}

/// The kernel release a package name `linux-image-<release>-amd64` of `series` has: the
/// generic amd64 flavour only (not `-cloud`, `-rt`, `-dbg`, `-unsigned`, nor a meta).
fn image_release<'a>(name: &'a str, series: &str) -> Option<&'a str> {
    let release = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
    let ok = release
        .strip_prefix(series)
        .is_some_and(|rest| rest.starts_with('.'))
        && release
            .split('-')
            .all(|part| part.chars().any(|c| c.is_ascii_digit()));
    ok.then_some(release)
}

/// Debian version order, close enough for kernel versions: digit runs compare as
/// numbers, other runs as text, and `~` sorts before anything (even the end).
fn cmp_versions(a: &str, b: &str) -> Ordering {
    fn runs(v: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = v.as_bytes();
        for i in 1..=bytes.len() {
            let split = i == bytes.len()
                || bytes[i].is_ascii_digit() != bytes[i - 1].is_ascii_digit()
                || bytes[i] == b'~'
                || bytes[i - 1] == b'~';
            if split {
                out.push(&v[start..i]);
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for i in 0..ra.len().max(rb.len()) {
        let (x, y) = (ra.get(i).copied(), rb.get(i).copied());
        let o = match (x, y) {
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(m), Ok(n)) => m.cmp(&n),
                _ if x.starts_with('~') != y.starts_with('~') => {
                    if x.starts_with('~') {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                _ => x.cmp(y),
            },
            (Some(x), None) if x.starts_with('~') => Ordering::Less,
            (None, Some(y)) if y.starts_with('~') => Ordering::Greater,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The newest image package of `series` among `packages`.
fn newest<'a>(packages: &'a [Package], series: &str) -> Option<&'a Package> {
    packages
        .iter()
        .filter(|p| image_release(&p.name, series).is_some())
        .max_by(|a, b| cmp_versions(&a.version, &b.version).then_with(|| a.name.cmp(&b.name)))
}

/// Picks the newest `series` kernel from the suites' indexes, downloads it into `dir` and
/// checks it; returns the .deb and the stamp text.
fn download_newest(
    series: &str,
    suites: &[(&str, &str)],
    dir: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    util::ensure_packages(&[("curl", "curl"), ("xz", "xz-utils")])?;
    let mut packages = Vec::new();
    for (archive, suite) in suites {
        let url = format!("{archive}/dists/{suite}/main/binary-amd64/Packages.xz");
        progress(&format!("reading {url}"));
        let xz = dir.join(format!("{suite}.Packages.xz"));
        curl(&url, &xz)?;
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&xz)
            .output()
            .context("running xz")?;
        if !out.status.success() {
            bail!(
                "xz -dc {}: {}",
                xz.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&xz);
        packages.extend(parse_index(
            &String::from_utf8_lossy(&out.stdout),
            archive,
            suite,
        ));
    }
    let suites_named = suites.iter().map(|s| s.1).collect::<Vec<_>>().join(", ");
    let p = newest(&packages, series)
        .with_context(|| format!("no linux-image-{series}.*-amd64 package in {suites_named}"))?;
    progress(&format!(
        "downloading the guest kernel ({} {}, {}, {} MB)",
        p.name,
        p.version,
        p.suite,
        p.size / 1_000_000
    ));
    let deb = dir.join("kernel.deb");
    curl(&format!("{}/{}", p.archive, p.filename), &deb)?;
    let size = deb.metadata()?.len();
    if size != p.size {
        bail!("{}: {size} bytes, the index says {}", p.filename, p.size);
    }
    let out = Command::new("sha256sum")
        .arg(&deb)
        .output()
        .context("running sha256sum")?;
    let sum = String::from_utf8_lossy(&out.stdout);
    let sum = sum.split_whitespace().next().unwrap_or("");
    if !out.status.success() || !sum.eq_ignore_ascii_case(&p.sha256) {
        bail!(
            "{}: SHA256 {sum}, the index of {} says {}",
            p.filename,
            p.suite,
            p.sha256
        );
    }
    Ok((
        deb,
        format!(
            "{} {} ({} {}/{})\nsha256 {}\n",
            p.name, p.version, p.suite, p.archive, p.filename, p.sha256
        ),
    ))
}

fn curl(url: &str, out: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(out)
            .arg(url),
    )
}

/// A module for the initramfs: `insmod`'s file name (`pvpanic-mmio.ko`) and its
/// (decompressed) contents.
#[derive(Debug)]
pub struct Module {
    pub file_name: String,
    pub data: Vec<u8>,
}

/// The guest's modules for this kernel, each after those it depends on; progress says
/// which are built in or absent.
pub fn modules(k: &GuestKernel) -> anyhow::Result<Vec<Module>> {
    let dir = k.root.join("lib/modules").join(&k.release);
    let norm = |n: &str| n.replace('-', "_");
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(l).map(|(n, _)| norm(n)))
        .collect();
    let mut files = BTreeMap::new();
    find_modules(&dir.join("kernel"), &mut files)?;
    let mut r = Resolver {
        builtin: &builtin,
        files: &files,
        out: Vec::new(),
        done: BTreeSet::new(),
    };
    let (mut inside, mut absent) = (Vec::new(), Vec::new());
    for m in MODULES {
        let n = norm(m);
        if builtin.contains(&n) {
            inside.push(*m);
        } else if files.contains_key(&n) {
            r.add(&n, &mut Vec::new())?;
        } else if REQUIRED.contains(m) {
            bail!(
                "{}: no module {m} (neither a file nor built in)",
                dir.display()
            );
        } else {
            absent.push(*m);
        }
    }
    let names: Vec<&str> = r.out.iter().map(|m| m.file_name.as_str()).collect();
    progress(&format!(
        "modules for {}: {}{}{}",
        k.release,
        names.join(" "),
        if inside.is_empty() {
            String::new()
        } else {
            format!("; built in: {}", inside.join(" "))
        },
        if absent.is_empty() {
            String::new()
        } else {
            format!("; not in this kernel: {}", absent.join(" "))
        }
    ));
    Ok(r.out)
}

struct Resolver<'a> {
    builtin: &'a BTreeSet<String>,
    /// Normalized module name (`_` for `-`) → its file.
    files: &'a BTreeMap<String, PathBuf>,
    out: Vec<Module>,
    done: BTreeSet<String>,
}

impl Resolver<'_> {
    /// Adds module `name` (normalized) after its dependencies.
    fn add(&mut self, name: &str, stack: &mut Vec<String>) -> anyhow::Result<()> {
        if self.builtin.contains(name) || self.done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!(
                "modules depend on each other in a cycle: {}",
                stack.join(" → ")
            );
        }
        let path = self
            .files
            .get(name)
            .with_context(|| format!("module {name} (needed by {}) not found", stack.join(", ")))?;
        let data = read_module(path)?;
        stack.push(name.to_string());
        for dep in modinfo(&data, "depends")
            .iter()
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
        {
            self.add(&dep.replace('-', "_"), stack)?;
        }
        stack.pop();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(module_name)
            .map(|(n, _)| format!("{n}.ko"))
            .with_context(|| format!("module file name {}", path.display()))?;
        self.done.insert(name.to_string());
        self.out.push(Module {
            file_name: file,
            data,
        });
        Ok(())
    }
}

/// A module's name and compression from its path: `…/pvpanic-mmio.ko.xz` → ("pvpanic-mmio", "xz").
fn module_name(path: &str) -> Option<(&str, &str)> {
    let file = path.rsplit('/').next()?;
    let (stem, ext) = file.split_once(".ko")?;
    let ext = ext.strip_prefix('.').unwrap_or(ext);
    matches!(ext, "" | "xz" | "zst" | "gz").then_some((stem, ext))
}

fn find_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            find_modules(&path, out)?;
        } else if let Some((name, _)) = e.file_name().to_str().and_then(module_name) {
            out.entry(name.replace('-', "_")).or_insert(path);
        }
    }
    Ok(())
}

/// A module file's ELF contents, decompressed (busybox insmod takes plain ELF only).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let (_, ext) = path
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(module_name)
        .with_context(|| format!("not a module: {}", path.display()))?;
    let (tool, package) = match ext {
        "" => return std::fs::read(path).with_context(|| path.display().to_string()),
        "xz" => ("xz", "xz-utils"),
        "zst" => ("zstd", "zstd"),
        _ => ("gzip", "gzip"),
    };
    util::ensure_packages(&[(tool, package)])?;
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The values of `key` in a 64-bit little-endian ELF's `.modinfo` section (NUL-separated
/// `key=value` strings); none if the file is not such an ELF.
fn modinfo(elf: &[u8], key: &str) -> Vec<String> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let section = || -> Option<&[u8]> {
        if elf.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (shoff, shentsize) = (u64_at(0x28)?, u16_at(0x3a)?);
        let (shnum, shstrndx) = (u16_at(0x3c)?, u16_at(0x3e)?);
        let header = |i: usize| -> Option<(usize, usize, usize)> {
            let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
            Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
        };
        let (_, stroff, strsize) = header(shstrndx)?;
        let names = elf.get(stroff..stroff.checked_add(strsize)?)?;
        (0..shnum).find_map(|i| {
            let (name, off, size) = header(i)?;
            let rest = names.get(name..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            (&rest[..end] == b".modinfo").then(|| elf.get(off..off.checked_add(size)?))?
        })
    };
    let prefix = format!("{key}=");
    section()
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter_map(|s| {
            std::str::from_utf8(s)
                .ok()?
                .strip_prefix(&prefix)
                .map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_generic_image_of_the_series() {
        let index = "Package: linux-image-5.10.0-45-amd64\nVersion: 5.10.251-1\nFilename: pool/a.deb\nSize: 10\nSHA256: aa\n\n\
                     Package: linux-image-5.10.0-46-amd64\nSource: linux-signed-amd64 (5.10.262+1)\nVersion: 5.10.262-1\nFilename: pool/b.deb\nSize: 11\nSHA256: bb\nDescription: Linux\n  more\n\n\
                     Package: linux-image-5.10.0-46-amd64-unsigned\nVersion: 5.10.263-1\nFilename: pool/c.deb\nSize: 12\nSHA256: cc\n\n\
                     Package: linux-image-5.10.0-46-rt-amd64\nVersion: 5.10.264-1\nFilename: pool/d.deb\nSize: 13\nSHA256: dd\n\n\
                     Package: linux-image-amd64\nVersion: 5.10.265-1\nFilename: pool/e.deb\nSize: 14\nSHA256: ee\n";
        let packages = parse_index(index, DEBIAN, "bullseye");
        assert_eq!(packages.len(), 5);
        let p = newest(&packages, "5.10").expect("a 5.10 kernel");
        assert_eq!(
            (p.name.as_str(), p.size, p.sha256.as_str()),
            ("linux-image-5.10.0-46-amd64", 11, "bb")
        );
        assert!(newest(&packages, "6.1").is_none());
    }

    #[test]
    fn image_names_of_a_series() {
        assert_eq!(
            image_release("linux-image-6.12.90+deb12.1-amd64", "6.12"),
            Some("6.12.90+deb12.1")
        );
        assert_eq!(
            image_release("linux-image-6.12.95+deb12-cloud-amd64", "6.12"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.12.95+deb12-amd64-dbg", "6.12"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.12.95+deb12-amd64", "6.1"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.1.0-56-amd64", "6.1"),
            Some("6.1.0-56")
        );
    }

    #[test]
    fn versions_in_debian_order() {
        assert_eq!(
            cmp_versions("6.12.95-1~bpo12+1", "6.12.9-1~bpo12+1"),
            Ordering::Greater
        );
        assert_eq!(
            cmp_versions("6.12.90-2~bpo12+1", "6.12.90-1~bpo12+1"),
            Ordering::Greater
        );
        assert_eq!(cmp_versions("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(cmp_versions("5.10.262-1", "5.10.262-1"), Ordering::Equal);
    }

    #[test]
    fn module_names_and_compression() {
        assert_eq!(
            module_name("kernel/drivers/misc/pvpanic/pvpanic-mmio.ko.xz"),
            Some(("pvpanic-mmio", "xz"))
        );
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio.ko"),
            Some(("virtio", ""))
        );
        assert_eq!(module_name("modules.order"), None);
    }

    #[test]
    fn modinfo_of_a_non_elf_is_empty() {
        assert!(modinfo(b"not an elf", "depends").is_empty());
        assert!(modinfo(b"\x7fELF\x02\x01\0\0", "depends").is_empty());
    }
}
