//! `vesper build`: compile a script offline, against a recorded kernel or this one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use vesper_probe::{KernelInfo, compile, required_kernel_keys};

pub fn run(
    out: &mut impl Write,
    file: &Path,
    output: Option<PathBuf>,
    kernel_info: Option<PathBuf>,
    asm: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let shown = file.display().to_string();
    let name = vesper_probe::probe_name_from_path(&shown).ok_or_else(|| {
        anyhow!("{shown}: the file name must be letters, digits, '-' or '_' (it names the probe)")
    })?;
    let keys = required_kernel_keys(&text, &shown).map_err(|d| anyhow!("{d}"))?;
    let kernel = match &kernel_info {
        Some(p) => {
            let j =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<KernelInfo>(&j)
                .with_context(|| format!("{}: not a KernelInfo JSON file", p.display()))?
        }
        None => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string();
            KernelInfo::read_tracefs(Path::new("/sys/kernel/tracing"), &release, &keys)
        }
    };
    let p = compile(&text, &shown, &name, &kernel).map_err(|d| anyhow!("{d}"))?;
    let output = output.unwrap_or_else(|| file.with_extension("o"));
    std::fs::write(&output, &p.object).with_context(|| format!("writing {}", output.display()))?;
    writeln!(
        out,
        "{} -> {} ({} bytes, {} program(s), kernel {})",
        shown,
        output.display(),
        p.object.len(),
        p.manifest.attach.len(),
        if kernel.release.is_empty() {
            "unknown"
        } else {
            &kernel.release
        }
    )?;
    if asm {
        for a in &p.manifest.attach {
            writeln!(out, "{} ({:?} {}):", a.program, a.kind, a.target)?;
        }
        let listing = vesper_probe::disasm::disasm_object(&p.object, &p.manifest);
        write!(out, "{listing}")?;
    }
    Ok(())
}
