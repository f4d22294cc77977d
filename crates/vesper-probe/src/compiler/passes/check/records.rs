//! The records a probe emits: each `emit { ... }` a layout of the manifest, its fields
//! typed (integers, strings, signals, stacks, byte arrays, addresses).

use super::{Checked, Checker, Ctx, HEADER, KSTACK_DEPTH, MAX_KSTACK, MAX_RECORD};
use super::{RESERVED, decay, slot};
use crate::compiler::ast::*;
use crate::compiler::diag::{Diagnostic, Span};
use crate::compiler::typed::*;
use crate::manifest::{self, FieldKind};

/// bpftrace's address families for `ntop(af, addr)`.
const AF_INET: i64 = 2;
const AF_INET6: i64 = 10;

impl<'a> Checker<'a> {
    /// One `emit { ... }`: its record's layout becomes a schema of the manifest.
    pub(super) fn emit(&mut self, emit: &Emit, ctx: &Ctx) -> Option<TEmit> {
        let fields = self.emit_fields(emit, ctx)?;
        let record_size = fields.last().map_or(HEADER, |f| f.offset + slot(f.kind));
        if record_size > MAX_RECORD {
            self.diags.push(Diagnostic::new(
                emit.span,
                format!("record of {record_size} bytes exceeds {MAX_RECORD}"),
            ));
            return None;
        }
        let schema = self.schemas.len() as u32;
        let mut specs = vec![manifest::FieldSpec {
            name: "ts_ns".into(),
            offset: 0,
            kind: FieldKind::U64,
        }];
        specs.extend(fields.iter().map(|f| manifest::FieldSpec {
            name: f.name.clone(),
            offset: f.offset,
            kind: f.kind,
        }));
        self.schemas.push(manifest::Schema {
            size: record_size,
            fields: specs,
        });
        Some(TEmit {
            schema,
            record_size,
            fields,
        })
    }

    fn emit_fields(&mut self, emit: &Emit, ctx: &Ctx) -> Option<Vec<TField>> {
        let mut out: Vec<TField> = Vec::new();
        let mut ok = true;
        let mut offset = HEADER;
        if emit.fields.is_empty() {
            self.err(emit.span, "`emit { }` has no fields".into())
                .hints
                .push("emit { pid = pid, comm = comm }".into());
            return None;
        }
        for f in &emit.fields {
            if RESERVED.contains(&f.name.as_str())
                || f.name.ends_with("_name")
                    && out.iter().any(|o| format!("{}_name", o.name) == f.name)
            {
                self.err(
                    f.name_span,
                    format!("`{}` is a reserved field name", f.name),
                )
                .hints
                .push(format!(
                    "every record already has {}; pick another name",
                    RESERVED.join(", ")
                ));
                ok = false;
                continue;
            }
            if out.iter().any(|o| o.name == f.name) {
                self.err(f.name_span, format!("field `{}` is emitted twice", f.name));
                ok = false;
                continue;
            }
            let (value, kind) = match &f.value.kind {
                ExprKind::Ident(name) if name == "kstack" => {
                    let depth = KSTACK_DEPTH;
                    (TValue::Stack { depth }, FieldKind::Stack { depth })
                }
                ExprKind::Call(name, args) if name == "kstack" => match args.as_slice() {
                    [
                        Expr {
                            kind: ExprKind::Int(n),
                            ..
                        },
                    ] if (1..=i64::from(MAX_KSTACK)).contains(n) => {
                        let depth = *n as u32;
                        (TValue::Stack { depth }, FieldKind::Stack { depth })
                    }
                    _ => {
                        self.err(
                            f.value.span,
                            format!("kstack(N) takes a frame count from 1 to {MAX_KSTACK}"),
                        )
                        .hints
                        .push(format!("kstack alone keeps {KSTACK_DEPTH} frames"));
                        ok = false;
                        continue;
                    }
                },
                ExprKind::Call(name, args) if name == "ntop" => {
                    match self.ntop(args, f.value.span, ctx) {
                        Some(v) => v,
                        None => {
                            ok = false;
                            continue;
                        }
                    }
                }
                ExprKind::Call(name, args) if name == "signal" => match args.as_slice() {
                    [a] => match self.value(a, ctx).map(decay) {
                        Some(Checked::Int(e)) => (TValue::Int(e), FieldKind::Signal),
                        Some(_) => {
                            self.err(a.span, "signal() takes a signal number".into());
                            ok = false;
                            continue;
                        }
                        None => {
                            ok = false;
                            continue;
                        }
                    },
                    _ => {
                        self.err(
                            f.value.span,
                            "signal() takes one argument: signal(args.sig)".into(),
                        );
                        ok = false;
                        continue;
                    }
                },
                _ => match self.value(&f.value, ctx).map(decay) {
                    Some(Checked::Int(e)) => {
                        let kind = match &e {
                            // A return value is signed: -ENOENT is -2, not 2^64 - 2.
                            TExpr::Builtin(Builtin::Retval) => FieldKind::I64,
                            TExpr::CtxInt { signed: false, .. } | TExpr::Builtin(_) => {
                                FieldKind::U64
                            }
                            _ => FieldKind::I64,
                        };
                        (TValue::Int(e), kind)
                    }
                    Some(Checked::Str(s)) => {
                        let len = s.capacity();
                        let kind = if matches!(s, StrSrc::CtxBytes { .. }) {
                            FieldKind::Bytes { len }
                        } else {
                            FieldKind::Str { len }
                        };
                        (TValue::Str(s), kind)
                    }
                    Some(Checked::Ptr(..) | Checked::Place(_)) => {
                        ok = false;
                        continue;
                    }
                    Some(Checked::Lit(_)) => {
                        self.err(f.value.span, "a constant string cannot be emitted".into())
                            .hints
                            .push("emit values the kernel knows: comm, args.NAME, pid, ...".into());
                        ok = false;
                        continue;
                    }
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            out.push(TField {
                name: f.name.clone(),
                span: f.value.span,
                value,
                kind,
                offset,
            });
            offset += slot(kind);
        }
        ok.then_some(out)
    }

    /// `ntop(addr)` / `ntop(af, addr)`: an IPv4 address from an integer (as it lies in
    /// memory, network order) or a 4-byte array, an IPv6 address from a 16-byte array.
    fn ntop(&mut self, args: &[Expr], span: Span, ctx: &Ctx) -> Option<(TValue, FieldKind)> {
        let (af, addr) = match args {
            [a] => (None, a),
            [
                Expr {
                    kind: ExprKind::Int(af),
                    ..
                },
                a,
            ] if [AF_INET, AF_INET6].contains(af) => (Some(*af), a),
            _ => {
                self.err(span, "ntop() takes an address, and optionally its family first: ntop(args.saddr), ntop(2, $addr), ntop(10, args.saddr_v6)".into())
                    .hints
                    .push("the family is a constant: 2 (AF_INET) or 10 (AF_INET6); emit each family in its own branch of an `if`".into());
                return None;
            }
        };
        let (value, len) = match decay(self.value(addr, ctx)?) {
            Checked::Int(e) => (TValue::Int(e), 4),
            Checked::Str(s)
                if matches!(s, StrSrc::CtxBytes { .. } | StrSrc::Kernel { .. })
                    && matches!(s.capacity(), 4 | 16) =>
            {
                let len = s.capacity();
                (TValue::Str(s), len)
            }
            _ => {
                self.err(addr.span, "ntop() reads an IPv4 address (an integer or 4 bytes) or an IPv6 one (16 bytes)".into())
                    .hints
                    .push("a byte array: a tracepoint's __u8 field or a kernel struct's u8 array member".into());
                return None;
            }
        };
        let want = match af {
            Some(AF_INET6) => 16,
            Some(_) => 4,
            None => len,
        };
        if want != len {
            self.err(
                addr.span,
                format!(
                    "ntop({}, ...) needs {want} bytes of address; this has {len}",
                    af.unwrap_or(0)
                ),
            );
            return None;
        }
        Some((value, FieldKind::Inet { len }))
    }
}
