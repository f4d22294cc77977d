//! What the agent reads from the guest kernel: tracefs, release, BTF, boot id.

use std::path::Path;

use vesper_proto::message::caps;
use vesper_proto::{EventFormat, KernelInfo};

use crate::sys;

pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Bounds what one format file can contribute to a KernelInfo reply.
const MAX_FORMAT_LEN: u64 = 64 * 1024;

/// Mounts tracefs if it is not there yet (fresh machines and minimal guests have none).
pub fn ensure_tracefs() {
    if Path::new(TRACEFS).join("events").is_dir() {
        return;
    }
    match sys::mount_tracefs(TRACEFS) {
        Ok(()) => log::info!("mounted tracefs at {TRACEFS}"),
        Err(e) => log::warn!("tracefs is not mounted and mounting it at {TRACEFS} failed: {e}"),
    }
}

pub fn has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn capabilities() -> u32 {
    let mut c = caps::RINGBUF | caps::TRACEPOINT | caps::KERNEL_FILES | caps::MAPS;
    if Path::new(TRACEFS).join("kprobe_events").exists() {
        c |= caps::KPROBE;
    }
    if has_btf() {
        c |= caps::BTF;
    }
    c
}

/// Only `category:name` made of [A-Za-z0-9_] may touch the filesystem.
fn valid_event(event: &str) -> Option<(&str, &str)> {
    let (cat, name) = event.split_once(':')?;
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    (ok(cat) && ok(name)).then_some((cat, name))
}

fn read_format(event: &str) -> Option<String> {
    use std::io::Read;
    let (cat, name) = valid_event(event)?;
    let path = Path::new(TRACEFS)
        .join("events")
        .join(cat)
        .join(name)
        .join("format");
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FORMAT_LEN)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Whether `function` can be kprobed: listed in available_filter_functions (entries may
/// carry a module suffix, "func [mod]").
fn kprobe_exists(functions: &Option<String>, function: &str) -> Option<String> {
    let list = functions.as_ref()?;
    list.lines()
        .any(|l| l.split_whitespace().next() == Some(function))
        .then(String::new)
}

/// Answers a KernelInfoRequest: `cat:name` → that tracepoint's format file;
/// `kprobe:func` → an empty format if the function can be probed.
pub fn kernel_info(events: &[String]) -> KernelInfo {
    let wants_functions = events.iter().any(|e| e.starts_with("kprobe:"));
    let functions = wants_functions
        .then(|| {
            std::fs::read_to_string(Path::new(TRACEFS).join("available_filter_functions")).ok()
        })
        .flatten();
    KernelInfo {
        release: sys::kernel_release(),
        btf: has_btf(),
        formats: events
            .iter()
            .take(256)
            .map(|e| {
                let format = match e.strip_prefix("kprobe:") {
                    Some(f) => kprobe_exists(&functions, f),
                    None => read_format(e),
                };
                EventFormat {
                    event: e.clone(),
                    format,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_names_cannot_escape_tracefs() {
        assert!(super::valid_event("signal:signal_generate").is_some());
        assert!(super::valid_event("../../etc:passwd").is_none());
        assert!(super::valid_event("a/b:c").is_none());
        assert!(super::valid_event("nocolon").is_none());
    }
}
