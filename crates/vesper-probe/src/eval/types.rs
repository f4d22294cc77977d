//! Types of expressions evaluated outside the kernel (the host's rules): which fields a
//! probe's records carry, their types, and whether a condition can evaluate over them.

use crate::compiler::ast::{BinOp, Expr, ExprKind, Script, UnOp, emits};
use crate::compiler::{Diagnostics, passes};
use crate::manifest::{FieldKind, Manifest};

/// A value's type, as far as operators care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Int,
    Str,
    /// A kernel stack (`kstack`): shown, never compared.
    Stack,
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Type::Int => "an integer",
            Type::Str => "a string",
            Type::Stack => "a kernel stack",
        })
    }
}

impl Type {
    /// How a record field of `kind` decodes: bytes and addresses as text.
    pub fn of_kind(kind: FieldKind) -> Type {
        match kind {
            FieldKind::Str { .. } | FieldKind::Bytes { .. } | FieldKind::Inet { .. } => Type::Str,
            FieldKind::Stack { .. } => Type::Stack,
            _ => Type::Int,
        }
    }

    /// What can be done with a value of this type, for messages.
    fn uses(self) -> &'static str {
        match self {
            Type::Int => "integers take every operator",
            Type::Str => {
                "strings can only be compared (==, !=, in) or tested with starts_with(s, \"prefix\")"
            }
            Type::Stack => "a stack can only be shown, in the rule's cause: {stack}",
        }
    }
}

/// The fields of a probe's records and their types; `None` for a field whose type only
/// the guest's kernel decides (a tracepoint field, a struct member), until the probe is
/// compiled against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Option<Type>)>);

impl Fields {
    /// The field's type: `None` if there is no such field, `Some(None)` if its type is
    /// not known yet.
    pub fn get(&self, name: &str) -> Option<Option<Type>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Adds a field; one emitted with two types (by two `emit`s) has no single type.
    pub fn add(&mut self, name: &str, ty: Option<Type>) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) if *t != ty => *t = None,
            Some(_) => {}
            None => self.0.push((name.to_string(), ty)),
        }
    }

    /// The fields of a compiled probe's records (a `signal()` field also gives
    /// `NAME_name`, its name).
    pub fn of_manifest(m: &Manifest) -> Fields {
        let mut f = Fields::default();
        for field in m.schemas.iter().flat_map(|s| &s.fields) {
            f.add(&field.name, Some(Type::of_kind(field.kind)));
            if field.kind == FieldKind::Signal {
                f.add(&format!("{}_name", field.name), Some(Type::Str));
            }
        }
        f
    }

    /// The fields a script's records carry, typed from the script alone: what the
    /// kernel's layouts decide (`args.NAME`, members) is left untyped.
    pub fn of_script(source: &str, file: &str) -> Result<Fields, Diagnostics> {
        let mut diags = Vec::new();
        let toks = passes::lex::lex(source, &mut diags);
        let script = if diags.is_empty() {
            passes::parse::parse(&toks, &mut diags)
        } else {
            Script { probes: Vec::new() }
        };
        if !diags.is_empty() {
            return Err(Diagnostics {
                file: file.to_string(),
                source: source.to_string(),
                items: diags,
            });
        }
        let mut f = Fields::default();
        for e in script.probes.iter().flat_map(|p| emits(&p.body)) {
            for field in &e.fields {
                f.add(&field.name, emitted_type(&field.value));
                if matches!(&field.value.kind, ExprKind::Call(c, _) if c == "signal") {
                    f.add(&format!("{}_name", field.name), Some(Type::Str));
                }
            }
        }
        Ok(f)
    }
}

/// The type of an emitted value, where the script alone decides it.
fn emitted_type(e: &Expr) -> Option<Type> {
    match &e.kind {
        ExprKind::Str(_) => Some(Type::Str),
        ExprKind::Ident(n) if n == "comm" => Some(Type::Str),
        ExprKind::Ident(n) if n == "kstack" => Some(Type::Stack),
        ExprKind::Call(f, _) if f == "str" || f == "ntop" => Some(Type::Str),
        ExprKind::Call(f, _) if f == "kstack" => Some(Type::Stack),
        ExprKind::Field(_) | ExprKind::Member { .. } => None,
        _ => Some(Type::Int),
    }
}

/// Why a condition cannot evaluate over a probe's records. Messages end with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("no field {field:?}")]
    UnknownField { field: String },
    /// A literal of the wrong type: `sig == "9"`.
    #[error("{field} is {ty} and {literal} is {lit_ty}: {fix}")]
    Literal {
        field: String,
        ty: Type,
        literal: String,
        lit_ty: Type,
        fix: String,
    },
    #[error("`{op}` does not apply to {ty} ({what}): {}", .ty.uses())]
    Operator {
        op: &'static str,
        ty: Type,
        /// The operand, as written.
        what: String,
    },
    #[error("`{op}` cannot be applied to {left} and {right} ({what}): compare values of one type")]
    Mismatch {
        op: &'static str,
        left: Type,
        right: Type,
        what: String,
    },
    #[error("{what} is {ty}, not a condition: compare it, e.g. {what} == \"httpd\"")]
    NotCondition { what: String, ty: Type },
    #[error(
        "starts_with() tests a string for a prefix: starts_with(comm, \"http\"); {what} is {ty}"
    )]
    StartsWith { what: String, ty: Type },
    #[error("starts_with() takes two arguments, not {got}: starts_with(comm, \"http\")")]
    StartsWithArity { got: usize },
    #[error("unknown function `{name}`: a rule can call starts_with(s, \"prefix\")")]
    UnknownFunction { name: String },
    #[error(
        "{what} reads the guest kernel's memory, which a rule cannot: emit the value as a field of the probe and test that field"
    )]
    KernelMemory { what: &'static str },
}

/// Checks that `e` evaluates, over records with `fields`, to a condition. Fields whose
/// type is not known yet are taken to fit.
pub fn check_condition(e: &Expr, fields: &Fields) -> Result<(), TypeError> {
    condition(e, fields)
}

fn condition(e: &Expr, fields: &Fields) -> Result<(), TypeError> {
    match ty(e, fields)? {
        None | Some(Type::Int) => Ok(()),
        Some(t) => Err(TypeError::NotCondition {
            what: show(e),
            ty: t,
        }),
    }
}

/// `e`'s type (None: decided by the guest's kernel).
fn ty(e: &Expr, fields: &Fields) -> Result<Option<Type>, TypeError> {
    Ok(match &e.kind {
        ExprKind::Int(_) => Some(Type::Int),
        ExprKind::Str(_) => Some(Type::Str),
        ExprKind::Ident(name) | ExprKind::Field(name) => {
            fields.get(name).ok_or_else(|| TypeError::UnknownField {
                field: name.clone(),
            })?
        }
        ExprKind::Unary(UnOp::Not, x) => {
            condition(x, fields)?;
            Some(Type::Int)
        }
        ExprKind::Unary(op, x) => {
            integer(crate::eval::unary_symbol(*op), x, fields)?;
            Some(Type::Int)
        }
        ExprKind::Binary(BinOp::And | BinOp::Or, a, b) => {
            condition(a, fields)?;
            condition(b, fields)?;
            Some(Type::Int)
        }
        ExprKind::Binary(op @ (BinOp::Eq | BinOp::Ne), a, b) => {
            same(op.symbol(), e, a, b, fields)?;
            Some(Type::Int)
        }
        ExprKind::Binary(op, a, b) => {
            // A string field in arithmetic is the mistake, whatever the other side; a
            // string literal beside an integer is one to rewrite.
            for x in [a, b] {
                if !matches!(x.kind, ExprKind::Str(_)) {
                    integer(op.symbol(), x, fields)?;
                }
            }
            same(op.symbol(), e, a, b, fields)?;
            integer(op.symbol(), a, fields)?;
            integer(op.symbol(), b, fields)?;
            Some(Type::Int)
        }
        ExprKind::In(x, items) => {
            for i in items {
                same("in", e, x, i, fields)?;
            }
            Some(Type::Int)
        }
        ExprKind::Call(f, args) if f == "starts_with" => {
            let [s, p] = args.as_slice() else {
                return Err(TypeError::StartsWithArity { got: args.len() });
            };
            for a in [s, p] {
                if let Some(t @ (Type::Int | Type::Stack)) = ty(a, fields)? {
                    return Err(TypeError::StartsWith {
                        what: show(a),
                        ty: t,
                    });
                }
            }
            Some(Type::Int)
        }
        ExprKind::Call(f, _) => return Err(TypeError::UnknownFunction { name: f.clone() }),
        ExprKind::Cast(..) => return Err(TypeError::KernelMemory { what: "a cast" }),
        ExprKind::Member { .. } => return Err(TypeError::KernelMemory { what: "a member" }),
        ExprKind::Map(_) => return Err(TypeError::KernelMemory { what: "a map" }),
    })
}

/// `x` must be an integer, for `op`.
fn integer(op: &'static str, x: &Expr, fields: &Fields) -> Result<(), TypeError> {
    match ty(x, fields)? {
        None | Some(Type::Int) => Ok(()),
        Some(t) => Err(TypeError::Operator {
            op,
            ty: t,
            what: show(x),
        }),
    }
}

/// `a` and `b` (operands of `whole`) must have one type; a stack has none to compare.
fn same(
    op: &'static str,
    whole: &Expr,
    a: &Expr,
    b: &Expr,
    fields: &Fields,
) -> Result<(), TypeError> {
    let (ta, tb) = (ty(a, fields)?, ty(b, fields)?);
    for (x, t) in [(a, ta), (b, tb)] {
        if t == Some(Type::Stack) {
            return Err(TypeError::Operator {
                op,
                ty: Type::Stack,
                what: show(x),
            });
        }
    }
    let (Some(ta), Some(tb)) = (ta, tb) else {
        return Ok(());
    };
    if ta == tb {
        return Ok(());
    }
    // The literal is the side to fix; the other side names what it is compared with.
    let (lit, other, other_ty) = match (&a.kind, &b.kind) {
        (_, ExprKind::Int(_) | ExprKind::Str(_)) => (b, a, ta),
        (ExprKind::Int(_) | ExprKind::Str(_), _) => (a, b, tb),
        _ => {
            return Err(TypeError::Mismatch {
                op,
                left: ta,
                right: tb,
                what: show(whole),
            });
        }
    };
    Err(TypeError::Literal {
        field: show(other),
        ty: other_ty,
        literal: show(lit),
        lit_ty: ty(lit, fields)?.unwrap_or(Type::Int),
        fix: fix(whole, lit, other, fields),
    })
}

/// `whole` with the literal `lit` given the type of `other`.
fn fix(whole: &Expr, lit: &Expr, other: &Expr, fields: &Fields) -> String {
    let replaced = match &lit.kind {
        ExprKind::Int(i) => ExprKind::Str(i.to_string()),
        ExprKind::Str(s) => match parse_int(s) {
            Some(i) => ExprKind::Int(i),
            None => {
                // `sig == "SIGKILL"`: a signal field has its name beside it.
                let named = format!("{}_name", show(other));
                if fields.get(&named) == Some(Some(Type::Str)) {
                    let fixed = show_replacing(whole, other, &ExprKind::Ident(named));
                    return format!("write {fixed}");
                }
                return format!("compare {} with an integer", show(other));
            }
        },
        _ => return format!("write {}", show(whole)),
    };
    format!("write {}", show_replacing(whole, lit, &replaced))
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    match t.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The expression as it would be written.
pub(super) fn show(e: &Expr) -> String {
    show_with(e, None)
}

/// `e` as written, with the sub-expression at `at` (compared by address) shown as `with`.
fn show_replacing(e: &Expr, at: &Expr, with: &ExprKind) -> String {
    show_with(e, Some((at, with)))
}

fn show_with(e: &Expr, swap: Option<(&Expr, &ExprKind)>) -> String {
    if let Some((at, with)) = swap
        && std::ptr::eq(e, at)
    {
        let shown = Expr {
            kind: with.clone(),
            span: e.span,
        };
        return show_with(&shown, None);
    }
    let sub = |x: &Expr| {
        let s = show_with(x, swap);
        match x.kind {
            ExprKind::Binary(..) | ExprKind::In(..) => format!("({s})"),
            _ => s,
        }
    };
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Ident(n) => n.clone(),
        ExprKind::Field(n) => format!("args.{n}"),
        ExprKind::Unary(op, x) => format!("{}{}", crate::eval::unary_symbol(*op), sub(x)),
        ExprKind::Binary(op, a, b) => format!("{} {} {}", sub(a), op.symbol(), sub(b)),
        ExprKind::In(x, items) => {
            let items: Vec<String> = items.iter().map(|i| show_with(i, swap)).collect();
            format!("{} in [{}]", sub(x), items.join(", "))
        }
        ExprKind::Call(f, args) => {
            let args: Vec<String> = args.iter().map(|a| show_with(a, swap)).collect();
            format!("{f}({})", args.join(", "))
        }
        ExprKind::Cast(t, x) => format!("(struct {} *){}", t.name, sub(x)),
        ExprKind::Map(m) => m.name.clone(),
        ExprKind::Member { base, name, arrow } => {
            format!("{}{}{name}", sub(base), if *arrow { "->" } else { "." })
        }
    }
}
