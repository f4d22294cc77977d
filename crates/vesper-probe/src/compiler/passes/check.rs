//! Pass 3: resolve every name against the target kernel and type every expression.
//! Each attach point becomes its own program, checked against its own layout.

use crate::compiler::ast::*;
use crate::compiler::diag::{Diagnostic, Span, did_you_mean};
use crate::compiler::typed::*;
use crate::manifest::{self, AttachKind, FieldKind};
use crate::{KernelInfo, TracepointFormat};

/// Fixed record header: ts_ns (u64), schema index (u32), padding.
pub const HEADER: u32 = 16;
/// Largest record a probe may emit.
pub const MAX_RECORD: u32 = 4096;
/// Longest `__data_loc` string copied into a record.
pub const DATA_LOC_CAP: u32 = 64;
const RESERVED: &[&str] = &["vm", "probe", "seq", "ts_ns", "host_ms"];
pub const BUILTINS: &[&str] = &[
    "pid", "tid", "uid", "cpu", "nsecs", "comm", "arg0", "arg1", "arg2", "arg3", "arg4", "arg5",
    "retval", "curtask", "kstack",
];

mod members;
mod records;
mod stmts;
pub use members::uses_types;
const FUNCTIONS: &[&str] = &["starts_with", "signal", "ntop", "kstack", "str"];
/// `str(p)` reads at most this many bytes unless told (bpftrace's default too), and at most
/// [`MAX_STR`].
pub const STR_DEFAULT: u32 = 64;
pub const MAX_STR: u32 = 256;
/// Frames `kstack` keeps, and the most `kstack(N)` may ask for (a record is at most 4 KiB).
pub const KSTACK_DEPTH: u32 = 16;
pub const MAX_KSTACK: u32 = 127;

enum Ctx<'k> {
    Tracepoint(&'k TracepointFormat),
    /// A kprobe on this function.
    Kprobe(String),
    Kretprobe,
}

enum Checked {
    Int(TExpr),
    /// A kernel pointer to a value of this BTF type (it is also an integer, its address).
    Ptr(TExpr, crate::kernel_types::TypeId),
    /// Kernel memory holding a value of this BTF type, not read yet: a struct member.
    Place(Place),
    Str(StrSrc),
    Lit(Vec<u8>),
}

/// Where a member lives: its address, its type, and for a bitfield its position in the
/// byte at `addr` and its width.
struct Place {
    addr: TExpr,
    ty: crate::kernel_types::TypeId,
    bit_shift: u32,
    bit_size: u32,
}

/// A pointer used where an integer is wanted is its address.
fn decay(c: Checked) -> Checked {
    match c {
        Checked::Ptr(x, _) => Checked::Int(x),
        other => other,
    }
}

struct Checker<'a> {
    kernel: &'a KernelInfo,
    diags: &'a mut Vec<Diagnostic>,
    /// The program's local variables so far: name, and the pointee type when a pointer.
    locals: Vec<(String, Option<crate::kernel_types::TypeId>)>,
    /// The script's maps so far (shared by its probes).
    maps: Vec<stmts::ScriptMap>,
    /// Record layouts so far, one per `emit` and attach point.
    schemas: Vec<manifest::Schema>,
}

/// Most local variables in one probe (each takes an 8-byte stack slot of 512).
pub const MAX_LOCALS: usize = 16;

/// What the checker makes of a script.
#[derive(Debug)]
pub struct CheckedScript {
    pub programs: Vec<TProgram>,
    /// Record layouts (index = schema id).
    pub schemas: Vec<manifest::Schema>,
    pub maps: Vec<manifest::MapSpec>,
    pub intervals: Vec<manifest::IntervalSpec>,
}

pub fn check(script: &Script, kernel: &KernelInfo, diags: &mut Vec<Diagnostic>) -> CheckedScript {
    let mut c = Checker {
        kernel,
        diags,
        locals: Vec::new(),
        maps: Vec::new(),
        schemas: Vec::new(),
    };
    let mut programs = Vec::new();
    // Interval probes name maps the others declare: checked after them.
    let (intervals, probes): (Vec<_>, Vec<_>) =
        script.probes.iter().enumerate().partition(|(_, p)| {
            p.attach
                .iter()
                .any(|a| matches!(a.spec, AttachSpec::Interval { .. }))
        });
    for (pi, probe) in probes {
        if !stmts::does_something(&probe.body) {
            c.diags.push(
                Diagnostic::new(probe.span, "this probe does nothing").hint(
                    "add `emit { name = value, ... }` to its body, or store into a map: @start[tid] = nsecs;",
                ),
            );
            continue;
        }
        for (ai, attach) in probe.attach.iter().enumerate() {
            let Some((ctx, kind, target, section)) = c.resolve_attach(attach) else {
                continue;
            };
            c.locals.clear();
            let predicate = probe.predicate.as_ref().and_then(|p| c.condition(p, &ctx));
            let body = c.stmts(&probe.body, &ctx);
            let (Some(body), true) = (body, probe.predicate.is_none() || predicate.is_some())
            else {
                continue;
            };
            let name = format!("p{pi}_{ai}");
            programs.push(TProgram {
                attach: manifest::Attach {
                    program: name.clone(),
                    kind,
                    target,
                    lines: Vec::new(),
                },
                name,
                section,
                predicate,
                predicate_span: probe.predicate.as_ref().map(|p| p.span),
                locals: c.locals.len() as u32,
                body,
            });
        }
    }
    let intervals = intervals
        .into_iter()
        .filter_map(|(_, p)| c.interval(p))
        .collect();
    c.finish_maps();
    CheckedScript {
        programs,
        schemas: c.schemas,
        maps: c.maps.into_iter().map(|m| m.spec).collect(),
        intervals,
    }
}

/// Bytes a field takes in the record (ints get 8-byte slots; strings round up to 8).
fn slot(kind: FieldKind) -> u32 {
    match kind {
        FieldKind::Str { len } | FieldKind::Bytes { len } | FieldKind::Inet { len } => {
            len.div_ceil(8) * 8
        }
        FieldKind::Stack { depth } => 8 + 8 * depth,
        _ => 8,
    }
}

impl<'a> Checker<'a> {
    fn err(&mut self, span: Span, msg: String) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn resolve_attach(&mut self, a: &Attach) -> Option<(Ctx<'a>, AttachKind, String, String)> {
        let kernel: &'a KernelInfo = self.kernel;
        match &a.spec {
            AttachSpec::Tracepoint { category, name } => {
                let event = format!("{category}:{name}");
                match kernel.formats.get(&event) {
                    Some(Some(f)) => Some((
                        Ctx::Tracepoint(f),
                        AttachKind::Tracepoint,
                        event,
                        format!("tracepoint/{category}/{name}"),
                    )),
                    Some(None) => {
                        let release = kernel.release.clone();
                        self.err(a.span, format!("tracepoint {event} does not exist on kernel {release}"))
                            .hints
                            .push(format!("list what exists in the guest: ls /sys/kernel/tracing/events/{category}/"));
                        None
                    }
                    None => {
                        self.err(a.span, format!("no layout for tracepoint {event} was provided"))
                            .hints
                            .push("compile against the target kernel: `vesper load VM FILE.vsp`, or `vesper build --kernel-info FILE`".into());
                        None
                    }
                }
            }
            AttachSpec::Interval { .. } => None,
            AttachSpec::Kprobe { function } | AttachSpec::Kretprobe { function } => {
                let ret = matches!(a.spec, AttachSpec::Kretprobe { .. });
                if let Some(None) = kernel.formats.get(&format!("kprobe:{function}")) {
                    let release = kernel.release.clone();
                    self.err(a.span, format!("function {function} cannot be probed on kernel {release}"))
                        .hints
                        .push("it is not in the guest's /sys/kernel/tracing/available_filter_functions (inlined, renamed or blacklisted)".into());
                    return None;
                }
                let (ctx, kind, prefix) = if ret {
                    (Ctx::Kretprobe, AttachKind::Kretprobe, "kretprobe")
                } else {
                    (Ctx::Kprobe(function.clone()), AttachKind::Kprobe, "kprobe")
                };
                Some((ctx, kind, function.clone(), format!("{prefix}/{function}")))
            }
        }
    }

    /// An expression used as a condition (predicate): must be an integer.
    fn condition(&mut self, e: &Expr, ctx: &Ctx) -> Option<TExpr> {
        match decay(self.value(e, ctx)?) {
            Checked::Int(t) => Some(t),
            _ => {
                self.err(e.span, "a string is not a condition".into())
                    .hints
                    .push("compare it: comm == \"httpd\", or starts_with(comm, \"http\")".into());
                None
            }
        }
    }

    fn int(&mut self, e: &Expr, ctx: &Ctx, what: &str) -> Option<TExpr> {
        match decay(self.value(e, ctx)?) {
            Checked::Int(t) => Some(t),
            _ => {
                self.err(e.span, format!("{what} needs an integer, this is a string"))
                    .hints
                    .push(
                        "strings can only be compared (==, !=) with a string literal, or emitted"
                            .into(),
                    );
                None
            }
        }
    }

    /// An expression's value: a struct member is read here.
    fn value(&mut self, e: &Expr, ctx: &Ctx) -> Option<Checked> {
        match self.operand(e, ctx)? {
            Checked::Place(p) => self.load(p, e.span),
            other => Some(other),
        }
    }

    /// An expression, a member left unread (the base of `.`).
    fn operand(&mut self, e: &Expr, ctx: &Ctx) -> Option<Checked> {
        match &e.kind {
            ExprKind::Cast(ty, inner) => self.cast(ty, inner, ctx),
            ExprKind::Member { base, name, arrow } => self.member(base, name, *arrow, e.span, ctx),
            ExprKind::Int(v) => Some(Checked::Int(TExpr::Int(*v))),
            ExprKind::Str(s) => Some(Checked::Lit(s.as_bytes().to_vec())),
            ExprKind::Ident(name) => self.builtin(name, e.span, ctx),
            ExprKind::Field(name) => self.field(name, e.span, ctx),
            ExprKind::Unary(op, inner) => {
                let t = self.int(inner, ctx, if *op == UnOp::Not { "`!`" } else { "`-`" })?;
                // Constants are folded by the semantics the host's rules use too.
                Some(Checked::Int(match t {
                    TExpr::Int(v) => TExpr::Int(crate::eval::int_unary(*op, v)),
                    t => TExpr::Unary(*op, Box::new(t)),
                }))
            }
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r, e.span, ctx),
            ExprKind::In(x, items) => {
                let x = self.int(x, ctx, "`in`");
                let items: Vec<Option<TExpr>> = items
                    .iter()
                    .map(|i| self.int(i, ctx, "an `in` list"))
                    .collect();
                let (x, items) = (x?, items.into_iter().collect::<Option<Vec<TExpr>>>()?);
                if let TExpr::Int(v) = x
                    && let Some(consts) = items
                        .iter()
                        .map(|i| match i {
                            TExpr::Int(c) => Some(*c),
                            _ => None,
                        })
                        .collect::<Option<Vec<i64>>>()
                {
                    return Some(Checked::Int(TExpr::Int(i64::from(consts.contains(&v)))));
                }
                Some(Checked::Int(TExpr::In(Box::new(x), items)))
            }
            ExprKind::Call(name, args) if name == "str" => self.str_of(args, e.span, ctx),
            ExprKind::Map(m) => self.map_read(m, ctx),
            ExprKind::Call(name, args) if name == "starts_with" => {
                let [s, p] = args.as_slice() else {
                    self.err(
                        e.span,
                        "starts_with() takes two arguments: starts_with(comm, \"http\")".into(),
                    );
                    return None;
                };
                let s = self.value(s, ctx);
                let p = self.value(p, ctx);
                match (s?, p?) {
                    (Checked::Str(src), Checked::Lit(lit)) => {
                        self.str_match(src, lit, true, false, e.span)
                    }
                    _ => {
                        self.err(
                            e.span,
                            "starts_with() compares a string with a string literal".into(),
                        );
                        None
                    }
                }
            }
            ExprKind::Call(name, _) if name == "kstack" => {
                self.err(
                    e.span,
                    "a stack can only be emitted: emit { stack = kstack(8) }".into(),
                );
                None
            }
            ExprKind::Call(name, _) if name == "ntop" => {
                self.err(
                    e.span,
                    "ntop() is only for emitted fields: emit { daddr = ntop(args.daddr) }".into(),
                );
                None
            }
            ExprKind::Call(name, _) if name == "signal" => {
                self.err(
                    e.span,
                    "signal() is only for emitted fields: emit { sig = signal(args.sig) }".into(),
                );
                None
            }
            ExprKind::Call(name, _) => {
                let d = self.err(e.span, format!("unknown function `{name}`"));
                d.hints.push(format!("functions: {}", FUNCTIONS.join(", ")));
                None
            }
        }
    }

    /// `str(ptr)` / `str(ptr, len)`: a string from memory. User memory in a syscall
    /// tracepoint (its pointer arguments are the process's), kernel memory elsewhere.
    fn str_of(&mut self, args: &[Expr], span: Span, ctx: &Ctx) -> Option<Checked> {
        let (ptr, len) = match args {
            [p] => (p, STR_DEFAULT),
            [
                p,
                Expr {
                    kind: ExprKind::Int(n),
                    ..
                },
            ] if (1..=i64::from(MAX_STR)).contains(n) => (p, *n as u32),
            _ => {
                self.err(
                    span,
                    format!("str() takes a pointer and an optional length from 1 to {MAX_STR}: str(args.filename), str(args.filename, 128)"),
                );
                return None;
            }
        };
        let addr = self.int(ptr, ctx, "str()")?;
        let user = matches!(ctx, Ctx::Tracepoint(f) if f.event.starts_with("syscalls:"));
        Some(Checked::Str(StrSrc::Ptr {
            addr: Box::new(addr),
            len,
            user,
        }))
    }

    fn str_match(
        &mut self,
        src: StrSrc,
        lit: Vec<u8>,
        prefix: bool,
        negate: bool,
        span: Span,
    ) -> Option<Checked> {
        if lit.len() as u32 > src.capacity()
            || (!prefix
                && lit.len() as u32 == src.capacity()
                && !matches!(src, StrSrc::CtxArray { .. }))
        {
            self.err(
                span,
                format!(
                    "\"{}\" is longer than the {} bytes this string can hold",
                    String::from_utf8_lossy(&lit),
                    src.capacity()
                ),
            )
            .hints
            .push(
                "task names are at most 15 characters; the comparison could never be true".into(),
            );
            return None;
        }
        Some(Checked::Int(TExpr::StrMatch {
            src,
            lit,
            prefix,
            negate,
        }))
    }

    fn binary(&mut self, op: BinOp, l: &Expr, r: &Expr, span: Span, ctx: &Ctx) -> Option<Checked> {
        let lv = self.value(l, ctx).map(decay);
        let rv = self.value(r, ctx).map(decay);
        let (lv, rv) = (lv?, rv?);
        match (lv, rv) {
            (Checked::Int(TExpr::Int(a)), Checked::Int(TExpr::Int(b))) => {
                Some(Checked::Int(TExpr::Int(crate::eval::int_binary(op, a, b))))
            }
            (Checked::Int(a), Checked::Int(b)) => {
                Some(Checked::Int(TExpr::Binary(op, Box::new(a), Box::new(b))))
            }
            (Checked::Str(s), Checked::Lit(lit)) | (Checked::Lit(lit), Checked::Str(s))
                if matches!(op, BinOp::Eq | BinOp::Ne) =>
            {
                self.str_match(s, lit, false, op == BinOp::Ne, span)
            }
            (a, b) => {
                let ty = |c: &Checked| match c {
                    Checked::Int(_) | Checked::Ptr(..) => "an integer",
                    Checked::Place(_) => "a struct",
                    Checked::Str(_) => "a string",
                    Checked::Lit(_) => "a string literal",
                };
                let d = self.err(
                    span,
                    format!(
                        "`{}` cannot be applied to {} and {}",
                        op.symbol(),
                        ty(&a),
                        ty(&b)
                    ),
                );
                d.hints.push("strings can only be compared (==, !=) with a string literal, or tested with starts_with()".into());
                None
            }
        }
    }

    fn local(&mut self, name: &str, span: Span) -> Option<Checked> {
        let Some(i) = self.locals.iter().rposition(|(n, _)| n == name) else {
            let hint = if self.locals.is_empty() {
                format!(
                    "assign it in the probe's body before use: {name} = value; (a predicate cannot use variables)"
                )
            } else {
                let names: Vec<&str> = self.locals.iter().map(|(n, _)| n.as_str()).collect();
                format!("variables here: {}", names.join(", "))
            };
            self.err(span, format!("unknown variable `{name}`"))
                .hints
                .push(hint);
            return None;
        };
        let e = TExpr::Local(i as u32);
        Some(match self.locals[i].1 {
            Some(ty) => Checked::Ptr(e, ty),
            None => Checked::Int(e),
        })
    }

    fn builtin(&mut self, name: &str, span: Span, ctx: &Ctx) -> Option<Checked> {
        if name.starts_with('$') {
            return self.local(name, span);
        }
        let b = match name {
            "pid" => Builtin::Pid,
            "tid" => Builtin::Tid,
            "uid" => Builtin::Uid,
            "cpu" => Builtin::Cpu,
            "nsecs" => Builtin::Nsecs,
            "comm" => return Some(Checked::Str(StrSrc::Comm)),
            "curtask" => return self.curtask(span),
            "kstack" => {
                self.err(
                    span,
                    "a stack can only be emitted: emit { stack = kstack }".into(),
                );
                return None;
            }
            "retval" => {
                if !matches!(ctx, Ctx::Kretprobe) {
                    self.err(span, "`retval` exists only in kretprobe probes".into());
                    return None;
                }
                Builtin::Retval
            }
            a if a.len() == 4
                && a.starts_with("arg")
                && (b'0'..=b'5').contains(&a.as_bytes()[3]) =>
            {
                if !matches!(ctx, Ctx::Kprobe(_)) {
                    let d = self.err(span, format!("`{a}` exists only in kprobe probes"));
                    if matches!(ctx, Ctx::Tracepoint(_)) {
                        d.hints.push("tracepoint fields are args.NAME".into());
                    }
                    return None;
                }
                Builtin::Arg(a.as_bytes()[3] - b'0')
            }
            _ => {
                let d = self.err(span, format!("unknown name `{name}`"));
                if let Some(s) = did_you_mean(name, BUILTINS.iter().copied()) {
                    d.hints.push(format!("did you mean `{s}`?"));
                }
                d.hints.push(format!(
                    "builtins: {}; tracepoint fields are args.NAME",
                    BUILTINS.join(", ")
                ));
                return None;
            }
        };
        Some(Checked::Int(TExpr::Builtin(b)))
    }

    fn field(&mut self, name: &str, span: Span, ctx: &Ctx) -> Option<Checked> {
        if let Ctx::Kprobe(function) = ctx {
            return self.kprobe_arg(function, name, span);
        }
        let Ctx::Tracepoint(fmt) = ctx else {
            self.err(
                span,
                format!("args.{name} exists only in tracepoint probes"),
            )
            .hints
            .push("a kretprobe has `retval`; its function's arguments are the kprobe's".into());
            return None;
        };
        let Some(f) = fmt.field(name) else {
            let names = fmt.field_names();
            let d = self.err(
                span,
                format!("tracepoint {} has no field `{name}`", fmt.event),
            );
            if let Some(s) = did_you_mean(name, names.iter().copied()) {
                d.hints.push(format!("did you mean `args.{s}`?"));
            }
            d.hints
                .push(format!("its fields are: {}", names.join(", ")));
            return None;
        };
        if f.is_data_loc() {
            if f.decl.contains("char") {
                return Some(Checked::Str(StrSrc::CtxDataLoc {
                    off: f.offset,
                    cap: DATA_LOC_CAP,
                }));
            }
        } else if f.is_char_array() {
            return Some(Checked::Str(StrSrc::CtxArray {
                off: f.offset,
                len: f.size,
            }));
        } else if f.decl.ends_with(&format!("[{}]", f.size))
            && ["u8 ", "__u8 ", "unsigned char "]
                .iter()
                .any(|t| f.decl.starts_with(t) || f.decl.contains(&format!(" {t}")))
        {
            // A byte array (an address, a hash): its bytes, shown as numbers or by ntop().
            return Some(Checked::Str(StrSrc::CtxBytes {
                off: f.offset,
                len: f.size,
            }));
        } else if !f.decl.contains('[') && matches!(f.size, 1 | 2 | 4 | 8) && f.offset % f.size == 0
        {
            return Some(Checked::Int(TExpr::CtxInt {
                off: f.offset,
                size: f.size,
                signed: f.signed,
            }));
        }
        self.err(
            span,
            format!(
                "field `{name}` ({}) has a type probes cannot read yet",
                f.decl
            ),
        )
        .hints
        .push(
            "supported: integers of 1, 2, 4 or 8 bytes, char and byte arrays, __data_loc char[] strings"
                .into(),
        );
        None
    }
}
