//! The probe language compiler: source text → BPF ELF object + [`Manifest`].
//!
//! See `docs/probe-language.md` for the language. The passes are in [`passes`], one
//! file each: lex → parse → check (against the target [`KernelInfo`]) → codegen → helpers
//! (the kernel has each helper the code calls) → object.

pub mod ast;
pub mod diag;
pub mod passes;
pub mod typed;
pub mod verifier;

use crate::{CompiledProbe, KernelInfo, Manifest};
pub use diag::{Diagnostic, Diagnostics, Span};

fn fail(file: &str, source: &str, items: Vec<Diagnostic>) -> Diagnostics {
    Diagnostics {
        file: file.to_string(),
        source: source.to_string(),
        items,
    }
}

/// Lex and parse. Lexer errors stop here: parsing a broken token stream only adds
/// noise after the real mistake.
fn front_end(source: &str, file: &str) -> Result<ast::Script, Diagnostics> {
    Ok(front_end_with_config(source, file)?.0)
}

/// [`front_end`], with what the script's `config = { ... }` block set.
fn front_end_with_config(
    source: &str,
    file: &str,
) -> Result<(ast::Script, passes::parse::ScriptConfig), Diagnostics> {
    let mut diags = Vec::new();
    let toks = passes::lex::lex(source, &mut diags);
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    let parsed = passes::parse::parse_with_config(&toks, &mut diags);
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    Ok(parsed)
}

/// Parses a standalone condition (`sig == 9 && target_comm == "httpd"`), for rules the
/// host evaluates against decoded records.
pub fn parse_condition(source: &str, file: &str) -> Result<ast::Expr, Diagnostics> {
    let mut diags = Vec::new();
    let toks = passes::lex::lex(source, &mut diags);
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    let expr = passes::parse::parse_expr(&toks, &mut diags);
    match expr {
        Some(e) if diags.is_empty() => Ok(e),
        _ => Err(fail(file, source, diags)),
    }
}

/// Parses only: the fields the script's records carry besides the common ones (`vm`,
/// `probe`, `seq`, `ts_ns`), in emit order; a `signal()` field also gives `NAME_name`.
pub fn record_fields(source: &str, file: &str) -> Result<Vec<String>, Diagnostics> {
    let script = front_end(source, file)?;
    let mut fields = Vec::new();
    for f in script
        .probes
        .iter()
        .flat_map(|p| ast::emits(&p.body))
        .flat_map(|e| &e.fields)
    {
        if !fields.contains(&f.name) {
            fields.push(f.name.clone());
        }
        if matches!(&f.value.kind, ast::ExprKind::Call(c, _) if c == "signal") {
            fields.push(format!("{}_name", f.name));
        }
    }
    Ok(fields)
}

/// The kernel-info key of the kernel's type information (BTF).
pub const TYPES_KEY: &str = "btf";

/// Parses only: the kernel-info keys the script needs ("cat:name" for tracepoints,
/// "kprobe:func" for functions, [`TYPES_KEY`] for struct members), so the host can ask the
/// guest for exactly those.
pub fn required_kernel_keys(source: &str, file: &str) -> Result<Vec<String>, Diagnostics> {
    let script = front_end(source, file)?;
    let mut keys: Vec<String> = script
        .probes
        .iter()
        .flat_map(|p| p.attach.iter().filter_map(|a| a.spec.kernel_key()))
        .collect();
    let needs_types = script.probes.iter().any(|p| {
        let kprobe = p
            .attach
            .iter()
            .any(|a| matches!(a.spec, ast::AttachSpec::Kprobe { .. }));
        let uses = |e: &ast::Expr| passes::check::uses_types(e, kprobe);
        let mut body = false;
        ast::each_expr(&p.body, &mut |e| body |= uses(e));
        body || p.predicate.as_ref().is_some_and(uses)
    });
    if needs_types {
        keys.push(TYPES_KEY.to_string());
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Compiles `source` (named `file` in messages) into probe `name` for `kernel`.
pub fn compile(
    source: &str,
    file: &str,
    name: &str,
    kernel: &KernelInfo,
) -> Result<CompiledProbe, Diagnostics> {
    let (script, config) = front_end_with_config(source, file)?;
    let mut diags = Vec::new();
    let checked = passes::check::check(&script, kernel, &mut diags);
    let (programs, schemas, maps, intervals) = (
        checked.programs,
        checked.schemas,
        checked.maps,
        checked.intervals,
    );
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    let code: Vec<_> = programs
        .iter()
        .filter_map(|p| {
            passes::codegen::codegen(p, &maps, &mut diags).map(|c| (c, p.attach.clone()))
        })
        .collect();
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    let programs: Vec<_> = code.iter().map(|(c, _)| c.clone()).collect();
    passes::helpers::helpers(&programs, &kernel.release, &mut diags);
    if !diags.is_empty() {
        return Err(fail(file, source, diags));
    }
    match passes::object::object(
        name,
        &kernel.release,
        config
            .ring_bytes
            .unwrap_or(passes::object::DEFAULT_RING_BYTES),
        code,
        schemas,
        &maps,
        &intervals,
        &mut diags,
    ) {
        Some((object, manifest)) => Ok(CompiledProbe { object, manifest }),
        None => Err(fail(file, source, diags)),
    }
}

/// Reads the manifest embedded in an object this compiler produced. Never panics on
/// arbitrary bytes.
pub fn manifest_of_object(object: &[u8]) -> Option<Manifest> {
    let data = crate::elf::section_data(object, passes::object::MANIFEST_SECTION)?;
    serde_json::from_slice(data).ok()
}
