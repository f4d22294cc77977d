//! Pass 3, kernel types: casts, `->` and `.` chains, `curtask` and typed kprobe arguments,
//! resolved against the guest kernel's own BTF ([`crate::kernel_types`]). Offsets are fixed
//! here, on the host, for that kernel: the object needs no relocation in the guest.

use super::{Checked, Checker, Ctx, Place};
use crate::compiler::ast::BinOp;
use crate::compiler::ast::{CastType, Expr};
use crate::compiler::diag::Span;
use crate::compiler::typed::{Builtin, StrSrc, TExpr};
use crate::kernel_types::{KernelTypes, Type, TypeId, closest};

/// Longest `char[]` member copied into a record.
const MAX_CHAR_ARRAY: u32 = 256;

fn offset(addr: TExpr, bytes: u32) -> TExpr {
    if bytes == 0 {
        return addr;
    }
    TExpr::Binary(
        BinOp::Add,
        Box::new(addr),
        Box::new(TExpr::Int(bytes.into())),
    )
}

impl Checker<'_> {
    /// The kernel's types, or an error saying how to get them.
    fn types(&mut self, span: Span, what: &str) -> Option<std::sync::Arc<KernelTypes>> {
        if let Some(t) = &self.kernel.types {
            return Some(t.clone());
        }
        let release = self.kernel.release.clone();
        self.err(
            span,
            format!("{what} needs the kernel's type information (BTF), and none is known for kernel {release}"),
        )
        .hints
        .push("the guest's agent sends /sys/kernel/btf/vmlinux when its kernel has it (`vesper status` shows `kernel types`); offline, use a kernel-info file from `vesper kernel-info VM`".into());
        None
    }

    /// `curtask`: the current task, typed.
    pub(super) fn curtask(&mut self, span: Span) -> Option<Checked> {
        let types = self.types(span, "`curtask`")?;
        let Some(task) = types.record("task_struct", false) else {
            self.err(span, "this kernel's BTF has no struct task_struct".into());
            return None;
        };
        Some(Checked::Ptr(TExpr::Builtin(Builtin::CurTask), task))
    }

    /// `(struct NAME *)e`.
    pub(super) fn cast(&mut self, ty: &CastType, e: &Expr, ctx: &Ctx) -> Option<Checked> {
        let kw = if ty.union { "union" } else { "struct" };
        let types = self.types(ty.span, &format!("a cast to {kw} {}", ty.name))?;
        let value = self.value(e, ctx);
        let Some(id) = types.record(&ty.name, ty.union) else {
            let near = closest(&ty.name, types.record_names(ty.union), 3);
            let release = self.kernel.release.clone();
            let d = self.err(ty.span, format!("kernel {release} has no {kw} {}", ty.name));
            if !near.is_empty() {
                d.hints.push(format!(
                    "did you mean {}?",
                    near.iter()
                        .map(|n| format!("`{kw} {n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return None;
        };
        match value? {
            Checked::Int(x) | Checked::Ptr(x, _) => Some(Checked::Ptr(x, id)),
            _ => {
                self.err(
                    e.span,
                    "only an integer (an address) can be cast to a pointer".into(),
                );
                None
            }
        }
    }

    /// `base->name` / `base.name`.
    pub(super) fn member(
        &mut self,
        base: &Expr,
        name: &str,
        arrow: bool,
        span: Span,
        ctx: &Ctx,
    ) -> Option<Checked> {
        let mut b = self.operand(base, ctx)?;
        let types = self.types(span, "a member access")?;
        // `a->b->c`: `a->b` is a member not read yet; `->` reads the pointer it holds.
        if arrow && let Checked::Place(p) = b {
            let place_span = base.span;
            if !matches!(types.get(types.resolve(p.ty)), Type::Ptr(_)) {
                let what = types.describe(p.ty);
                self.err(
                    span,
                    format!("`->{name}` on {what}, which is not a pointer"),
                )
                .hints
                .push(format!(
                    "members of a struct value are reached with `.`: ....{name}"
                ));
                return None;
            }
            b = self.load(p, place_span)?;
        }
        let (addr, record) = match (b, arrow) {
            (Checked::Ptr(addr, pointee), true) => (addr, pointee),
            (Checked::Place(p), false) => (p.addr, p.ty),
            (Checked::Ptr(..), false) => {
                self.err(span, format!("`.{name}` on a pointer"))
                    .hints
                    .push(format!(
                        "members are reached through pointers with `->`: ...->{name}"
                    ));
                return None;
            }
            (Checked::Int(_), _) => {
                self.err(
                    base.span,
                    format!("`{}{name}` on an integer", if arrow { "->" } else { "." }),
                )
                .hints
                .push(
                    "cast it to the struct it points at first: ((struct task_struct *)arg0)->pid"
                        .into(),
                );
                return None;
            }
            _ => {
                self.err(base.span, "a string has no members".into());
                return None;
            }
        };
        let resolved = types.resolve(record);
        if !matches!(types.get(resolved), Type::Record { .. }) {
            let what = types.describe(record);
            self.err(
                base.span,
                format!("{what} is not a struct or union: it has no member `{name}`"),
            );
            return None;
        }
        let Some(f) = types.field(resolved, name) else {
            let what = types.describe(resolved);
            let names = types.field_names(resolved);
            let near = closest(name, names.iter().copied(), 3);
            let d = self.err(span, format!("{what} has no member `{name}`"));
            if !near.is_empty() {
                d.hints
                    .push(format!("did you mean `{}`?", near.join("`, `")));
            } else {
                let mut shown: Vec<&str> = names.into_iter().take(12).collect();
                if shown.len() == 12 {
                    shown.push("...");
                }
                d.hints.push(format!("its members: {}", shown.join(", ")));
            }
            return None;
        };
        Some(Checked::Place(Place {
            addr: offset(addr, f.bit_offset / 8),
            ty: f.ty,
            bit_shift: if f.bit_size > 0 { f.bit_offset % 8 } else { 0 },
            bit_size: f.bit_size,
        }))
    }

    /// Reads a place into a value: integers and pointers are read, `char[]` becomes a
    /// string; a struct is not a value.
    pub(super) fn load(&mut self, p: Place, span: Span) -> Option<Checked> {
        let types = self.kernel.types.clone()?;
        let id = types.resolve(p.ty);
        if let Some((size, signed)) = int_layout(&types, id) {
            if p.bit_size > 0 {
                // The bytes that hold the bitfield, shifted and masked (read as unsigned).
                let bytes = (p.bit_shift + p.bit_size).div_ceil(8).next_power_of_two();
                let raw = TExpr::Read {
                    addr: Box::new(p.addr),
                    size: bytes.min(8),
                    signed: false,
                };
                let shifted = TExpr::Binary(
                    BinOp::Shr,
                    Box::new(raw),
                    Box::new(TExpr::Int(p.bit_shift.into())),
                );
                let mask = if p.bit_size >= 64 {
                    -1
                } else {
                    (1i64 << p.bit_size) - 1
                };
                return Some(Checked::Int(TExpr::Binary(
                    BinOp::BitAnd,
                    Box::new(shifted),
                    Box::new(TExpr::Int(mask)),
                )));
            }
            if matches!(size, 1 | 2 | 4 | 8) {
                return Some(Checked::Int(TExpr::Read {
                    addr: Box::new(p.addr),
                    size,
                    signed,
                }));
            }
        }
        match *types.get(id) {
            Type::Ptr(to) => Some(Checked::Ptr(
                TExpr::Read {
                    addr: Box::new(p.addr),
                    size: 8,
                    signed: false,
                },
                to,
            )),
            Type::Array { elem, len }
                if matches!(*types.get(types.resolve(elem)), Type::Int { size: 1, .. }) =>
            {
                Some(Checked::Str(StrSrc::Kernel {
                    addr: Box::new(p.addr),
                    len: len.clamp(1, MAX_CHAR_ARRAY),
                }))
            }
            Type::Record { .. } => {
                let what = types.describe(p.ty);
                let names: Vec<&str> = types.field_names(id).into_iter().take(8).collect();
                self.err(span, format!("{what} is a struct, not a value"))
                    .hints
                    .push(format!("read one of its members: .{}", names.join(", .")));
                None
            }
            _ => {
                let what = types.describe(p.ty);
                self.err(span, format!("a member of type {what} cannot be read yet"))
                    .hints
                    .push(
                        "readable: integers, enums, pointers, char arrays, and members of structs"
                            .into(),
                    );
                None
            }
        }
    }

    /// `args.NAME` in a kprobe: the function's parameter, typed from its BTF prototype.
    pub(super) fn kprobe_arg(&mut self, function: &str, name: &str, span: Span) -> Option<Checked> {
        let types = self.types(span, &format!("args.{name} in a kprobe"))?;
        let Some(params) = types.func_params(function) else {
            self.err(
                span,
                format!("the kernel's BTF has no prototype for {function}"),
            )
            .hints
            .push("read its registers as arg0..arg5".into());
            return None;
        };
        let Some(i) = params.iter().position(|p| p.name == name) else {
            let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            let d = self.err(span, format!("{function} has no parameter `{name}`"));
            d.hints
                .push(format!("its parameters: {}", names.join(", ")));
            return None;
        };
        if i >= 6 {
            self.err(
                span,
                format!(
                    "`{name}` is parameter {} of {function}; only the first six are in registers",
                    i + 1
                ),
            );
            return None;
        }
        let reg = TExpr::Builtin(Builtin::Arg(i as u8));
        let ty = params[i].ty;
        match *types.get(types.resolve(ty)) {
            Type::Ptr(to) => Some(Checked::Ptr(reg, to)),
            _ if int_layout(&types, types.resolve(ty))
                .is_some_and(|(s, _)| matches!(s, 1 | 2 | 4 | 8)) =>
            {
                let (size, signed) = int_layout(&types, types.resolve(ty)).unwrap_or((8, false));
                Some(Checked::Int(TExpr::Narrow {
                    x: Box::new(reg),
                    size,
                    signed,
                }))
            }
            _ => {
                let what = types.describe(ty);
                self.err(
                    span,
                    format!(
                        "parameter `{name}` of {function} is {what}, which probes cannot read yet"
                    ),
                );
                None
            }
        }
    }
}

/// Size and signedness of an integer or enum type (enums read as unsigned).
fn int_layout(types: &KernelTypes, id: TypeId) -> Option<(u32, bool)> {
    match *types.get(id) {
        Type::Int { size, signed, .. } => Some((size, signed)),
        Type::Enum { size, .. } => Some((size, false)),
        _ => None,
    }
}

/// Whether an expression needs the kernel's types: a cast, a member access, `curtask`,
/// `kstack` (named with the symbols that come with them), or (in a kprobe, `kprobe` true) an
/// `args.NAME` typed from the function's prototype.
pub fn uses_types(e: &Expr, kprobe: bool) -> bool {
    use crate::compiler::ast::ExprKind::*;
    let any = |e: &Expr| uses_types(e, kprobe);
    match &e.kind {
        Cast(..) | Member { .. } => true,
        // A stack is named with the kernel's symbols, which come with its types.
        Ident(n) => n == "curtask" || n == "kstack",
        Call(f, _) if f == "kstack" => true,
        Field(_) => kprobe,
        Unary(_, x) => any(x),
        Binary(_, l, r) => any(l) || any(r),
        In(x, items) => any(x) || items.iter().any(any),
        Call(_, args) => args.iter().any(any),
        Map(m) => m.keys.iter().any(any),
        Int(_) | Str(_) => false,
    }
}
