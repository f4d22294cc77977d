//! The syntax tree of a probe script.

use super::diag::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachSpec {
    Tracepoint {
        category: String,
        name: String,
    },
    Kprobe {
        function: String,
    },
    Kretprobe {
        function: String,
    },
    /// `interval:s:N` / `interval:ms:N`: run by the host every `ms` milliseconds.
    Interval {
        ms: u64,
    },
}

impl AttachSpec {
    /// `tracepoint:cat:name`, `kprobe:func`, `kretprobe:func`.
    pub fn describe(&self) -> String {
        match self {
            AttachSpec::Tracepoint { category, name } => format!("tracepoint:{category}:{name}"),
            AttachSpec::Kprobe { function } => format!("kprobe:{function}"),
            AttachSpec::Kretprobe { function } => format!("kretprobe:{function}"),
            AttachSpec::Interval { ms } if ms % 1000 == 0 => format!("interval:s:{}", ms / 1000),
            AttachSpec::Interval { ms } => format!("interval:ms:{ms}"),
        }
    }
    /// The kernel-info key the compiler needs: "cat:name" for a tracepoint's format,
    /// "kprobe:func" for a function's existence; none for an interval (the host runs it).
    pub fn kernel_key(&self) -> Option<String> {
        match self {
            AttachSpec::Tracepoint { category, name } => Some(format!("{category}:{name}")),
            AttachSpec::Kprobe { function } | AttachSpec::Kretprobe { function } => {
                Some(format!("kprobe:{function}"))
            }
            AttachSpec::Interval { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub spec: AttachSpec,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub attach: Vec<Attach>,
    pub predicate: Option<Expr>,
    /// The body's statements, in order.
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// One statement of a probe's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    Let(Let),
    /// `@name[key, ...] = value;`
    MapAssign {
        map: MapRef,
        value: Expr,
    },
    /// `delete(@name[key, ...]);`
    Delete(MapRef),
    /// `print(@name);` and `clear(@name);`: in an interval probe, run by the host.
    Print(MapRef),
    Clear(MapRef),
    /// `if (cond) { ... } else { ... }`; `else if` is an `If` alone in `els`.
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    Emit(Emit),
}

impl Stmt {
    /// Where the statement is in the script (its head, for an `if`).
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let(l) => l.name_span.to(l.value.span),
            Stmt::MapAssign { map, value } => map.span.to(value.span),
            Stmt::Delete(m) | Stmt::Print(m) | Stmt::Clear(m) => m.span,
            Stmt::If { cond, .. } => cond.span,
            Stmt::Emit(e) => e.span,
        }
    }
}

/// `@name[key, ...]`, or `@name` alone (one value, bpftrace's keyless map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRef {
    pub name: String,
    pub keys: Vec<Expr>,
    pub span: Span,
}

/// Calls `f` on every expression of `stmts`, nested statements included (not inside
/// expressions: `f` recurses itself if it must).
pub fn each_expr<'a>(stmts: &'a [Stmt], f: &mut impl FnMut(&'a Expr)) {
    for s in stmts {
        match s {
            Stmt::Let(l) => f(&l.value),
            Stmt::MapAssign { map, value } => {
                map.keys.iter().for_each(&mut *f);
                f(value);
            }
            Stmt::Delete(map) | Stmt::Print(map) | Stmt::Clear(map) => {
                map.keys.iter().for_each(&mut *f)
            }
            Stmt::If { cond, then, els } => {
                f(cond);
                each_expr(then, f);
                each_expr(els, f);
            }
            Stmt::Emit(e) => e.fields.iter().for_each(|x| f(&x.value)),
        }
    }
}

/// Every `emit` of `stmts`, in source order.
pub fn emits(stmts: &[Stmt]) -> Vec<&Emit> {
    let mut out = Vec::new();
    for s in stmts {
        match s {
            Stmt::Emit(e) => out.push(e),
            Stmt::If { then, els, .. } => {
                out.extend(emits(then));
                out.extend(emits(els));
            }
            _ => {}
        }
    }
    out
}

/// `$name = value;`: a local variable (bpftrace's scratch variable), evaluated once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Let {
    pub name: String,
    pub name_span: Span,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub fields: Vec<EmitField>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitField {
    pub name: String,
    pub name_span: Span,
    pub value: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    BitAnd,
    BitOr,
    BitXor,
    Shl,
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
            BitAnd => "&",
            BitOr => "|",
            BitXor => "^",
            Shl => "<<",
            Shr => ">>",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            And => "&&",
            Or => "||",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprKind {
    Int(i64),
    Str(String),
    /// A builtin such as `pid` or `comm`.
    Ident(String),
    /// `args.NAME`
    Field(String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x in [a, b, c]`
    In(Box<Expr>, Vec<Expr>),
    /// `name(args…)`: `starts_with(s, "lit")`, `signal(n)`.
    Call(String, Vec<Expr>),
    /// `(struct NAME *)expr`: an integer seen as a pointer to a kernel struct (bpftrace's cast).
    Cast(CastType, Box<Expr>),
    /// `@name[key, ...]`: the value stored under the key, 0 if there is none.
    Map(MapRef),
    /// `base->name` (through a pointer) or `base.name` (of a struct value).
    Member {
        base: Box<Expr>,
        name: String,
        arrow: bool,
    },
}

/// What a cast names: `struct task_struct *`, `union u *`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastType {
    pub union: bool,
    pub name: String,
    pub span: Span,
}
