//! Pass 5: every kernel helper the code calls exists in the target kernel. The verifier
//! would refuse the program with "invalid func unknown#131"; this says which feature of
//! the script needs which kernel, at the line that uses it, before anything is sent.

use crate::compiler::diag::{Diagnostic, Span};
use crate::elf::ProgramCode;
use crate::insn::helper;

/// Helpers and the Linux release that added them (include/uapi/linux/bpf.h history), with
/// the feature of the language that calls them; older helpers (map access, the current
/// task, time) are in every kernel that has BTF.
const FIRST_RELEASE: &[(i32, &str, (u32, u32), &str)] = &[
    (
        helper::RINGBUF_RESERVE,
        "bpf_ringbuf_reserve",
        (5, 8),
        "a record (emit)",
    ),
    (
        helper::RINGBUF_SUBMIT,
        "bpf_ringbuf_submit",
        (5, 8),
        "a record (emit)",
    ),
    (
        helper::PROBE_READ_KERNEL,
        "bpf_probe_read_kernel",
        (5, 5),
        "reading kernel memory",
    ),
    (
        helper::PROBE_READ_KERNEL_STR,
        "bpf_probe_read_kernel_str",
        (5, 5),
        "str() of kernel memory",
    ),
    (
        helper::PROBE_READ_USER_STR,
        "bpf_probe_read_user_str",
        (5, 5),
        "str() of user memory",
    ),
    (helper::GET_STACK, "bpf_get_stack", (4, 18), "kstack"),
];

/// "5.10.0-46-amd64" → (5, 10); None when the release does not say.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Checks each program's helper calls against `release`; an unknown release checks nothing.
pub fn helpers(programs: &[ProgramCode], release: &str, diags: &mut Vec<Diagnostic>) {
    let Some(have) = release_version(release) else {
        return;
    };
    for p in programs {
        let mut reported = Vec::new();
        for (at, insn) in p.insns.iter().enumerate() {
            if insn.code != 0x85 || insn.src != 0 {
                continue;
            }
            let Some(&(_, name, need, feature)) =
                FIRST_RELEASE.iter().find(|(id, ..)| *id == insn.imm)
            else {
                continue;
            };
            if need <= have || reported.contains(&feature) {
                continue;
            }
            // One message per feature (a record needs two ring-buffer helpers).
            reported.push(feature);
            // The statement or field whose code this call is in.
            let span = p
                .lines
                .iter()
                .take_while(|(first, _)| *first as usize <= at)
                .last()
                .map_or(Span::default(), |(_, s)| *s);
            diags.push(
                Diagnostic::new(
                    span,
                    format!(
                        "{feature} needs the helper {name}, which kernel {release} lacks (Linux {}.{} added it)",
                        need.0, need.1
                    ),
                )
                .hint("the guest needs a newer kernel for this probe; Vesper's guests need 5.8 or later for records"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    #[test]
    fn releases_read_like_uname() {
        assert_eq!(release_version("5.10.0-46-amd64"), Some((5, 10)));
        assert_eq!(release_version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(release_version("6.18-recorded"), Some((6, 18)));
        assert_eq!(release_version("fuzz"), None);
    }

    #[test]
    fn a_helper_the_kernel_lacks_is_named_at_the_line_that_needs_it() {
        let src = "tracepoint:signal:signal_generate {\n  emit { a = args.sig }\n}\n";
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tracefs-6.18");
        let keys = ["signal:signal_generate".to_string()];
        let old = crate::KernelInfo::read_tracefs(&dir, "5.4.0-150-generic", &keys);
        let err = crate::compile(src, "t.vsp", "t", &old)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a record (emit) needs the helper bpf_ringbuf_reserve, which kernel 5.4.0-150-generic lacks (Linux 5.8 added it)"), "{err}");
        assert!(err.contains("t.vsp:2:3"), "{err}");
        assert_eq!(
            err.matches("error:").count(),
            1,
            "one message per helper: {err}"
        );
        let new = crate::KernelInfo::read_tracefs(&dir, "5.10.0-46-amd64", &keys);
        assert!(crate::compile(src, "t.vsp", "t", &new).is_ok());
    }
}
