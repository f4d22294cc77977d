//! A guest kernel's verifier refusing a program, shown where the refused code came from:
//! the verifier's log ends at the instruction it could not accept, and the manifest says
//! which statement, field or predicate each run of instructions was compiled from.

use super::{Diagnostic, Diagnostics, Span};
use crate::Manifest;

/// The instruction the verifier stopped at, and its complaint: the last `N: (op) ...` line
/// of the log and the first line after it that is not bookkeeping.
pub fn refusal(log: &str) -> Option<(u32, String)> {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let numbered = |l: &str| {
        let (n, rest) = l.split_once(": ")?;
        let n: u32 = n.parse().ok()?;
        rest.starts_with('(').then_some(n)
    };
    let (at, insn) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| numbered(l).map(|n| (i, n)))?;
    let bookkeeping = [
        "processed ",
        "verification time",
        "stack depth",
        "from ",
        "mark_precise",
    ];
    let why = lines[at + 1..]
        .iter()
        .find(|l| !l.is_empty() && !bookkeeping.iter().any(|b| l.starts_with(b)))
        .map_or_else(|| "refused".to_string(), |l| (*l).to_string());
    Some((insn, why))
}

/// The refusal as a diagnostic at the script's source line, if the log names an
/// instruction of `program` that the manifest places in the script.
pub fn explain(
    manifest: &Manifest,
    program: &str,
    log: &str,
    file: &str,
    source: &str,
) -> Option<Diagnostics> {
    let (insn, why) = refusal(log)?;
    let attach = manifest.attach.iter().find(|a| a.program == program)?;
    let [_, start, end] = attach
        .lines
        .iter()
        .take_while(|l| l[0] <= insn)
        .last()
        .copied()?;
    let span = Span::new(start as usize, end as usize);
    if span.end > source.len() || span.start > span.end {
        return None;
    }
    let target = match attach.kind {
        crate::manifest::AttachKind::Tracepoint => format!("tracepoint:{}", attach.target),
        crate::manifest::AttachKind::Kprobe => format!("kprobe:{}", attach.target),
        crate::manifest::AttachKind::Kretprobe => format!("kretprobe:{}", attach.target),
    };
    let d = Diagnostic::new(
        span,
        format!("the guest kernel's verifier refused the code compiled from here ({target}, instruction {insn})"),
    )
    .hint(format!("the verifier: {why}"))
    .hint(format!(
        "the whole listing: vesper build {file} --kernel-info K.json --asm; a refusal of what the compiler accepted is a bug worth reporting with it"
    ));
    Some(Diagnostics {
        file: file.to_string(),
        source: source.to_string(),
        items: vec![d],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    /// The end of a real refusal (6.18, a map value read past its size).
    const LOG: &str = "0: R1=ctx() R10=fp0
0: (bf) r6 = r1                       ; R1=ctx() R6=ctx()
17: (85) call bpf_map_lookup_elem#1   ; R0=map_value_or_null(id=2,map=map_0,ks=4,vs=8)
18: (55) if r0 != 0x0 goto pc+26      ; R0=0
45: (79) r2 = *(u64 *)(r0 +8)
invalid access to map value, value_size=8 off=8 size=8
R0 min value is outside of the allowed memory range
processed 377 insns (limit 1000000) max_states_per_insn 1 total_states 33 peak_states 33 mark_read 0
";

    #[test]
    fn the_log_names_the_last_instruction_and_the_complaint() {
        assert_eq!(
            refusal(LOG),
            Some((
                45,
                "invalid access to map value, value_size=8 off=8 size=8".into()
            ))
        );
        assert_eq!(refusal("no instructions here"), None);
    }

    #[test]
    fn the_refusal_is_shown_at_the_statement_it_came_from() {
        let src = "tracepoint:signal:signal_generate {\n  $x = 1;\n  emit { a = args.sig }\n}\n";
        let kernel = crate::KernelInfo::read_tracefs(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tracefs-6.18"),
            "6.18",
            &["signal:signal_generate".to_string()],
        );
        let p = crate::compile(src, "t.vsp", "t", &kernel).unwrap();
        let lines = &p.manifest.attach[0].lines;
        // The field's code: the last entry, after the record is reserved.
        let [at, ..] = *lines.last().unwrap();
        let log = format!("{at}: (61) r0 = *(u32 *)(r6 +16)\npermission denied\n");
        let text = explain(&p.manifest, "p0_0", &log, "t.vsp", src)
            .unwrap()
            .to_string();
        assert!(text.contains("t.vsp:3:14"), "{text}");
        assert!(text.contains("emit { a = args.sig }"), "{text}");
        assert!(text.contains("the verifier: permission denied"), "{text}");
        // An instruction of the `$x = 1;` statement.
        let [at, ..] = lines[0];
        let log = format!("{at}: (b7) r0 = 1\nR0 !read_ok\n");
        let text = explain(&p.manifest, "p0_0", &log, "t.vsp", src)
            .unwrap()
            .to_string();
        assert!(text.contains("t.vsp:2:3"), "{text}");
        assert!(explain(&p.manifest, "p9_9", &log, "t.vsp", src).is_none());
    }
}
