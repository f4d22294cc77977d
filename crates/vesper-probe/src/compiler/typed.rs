//! The checked program: what codegen consumes. Every name is resolved against the
//! target kernel; every expression has a type.

use crate::compiler::ast::{BinOp, UnOp};
use crate::manifest::FieldKind;

/// Where a string value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrSrc {
    /// The current task's name (16 bytes).
    Comm,
    /// A `char name[len]` tracepoint field.
    CtxArray { off: u32, len: u32 },
    /// A `__u8 name[len]` tracepoint field: bytes, not text.
    CtxBytes { off: u32, len: u32 },
    /// A `__data_loc char[]` tracepoint field (a u32 locator at `off`).
    CtxDataLoc { off: u32, cap: u32 },
    /// A `char name[len]` in kernel memory at `addr` (a struct member reached through BTF).
    Kernel { addr: Box<TExpr>, len: u32 },
    /// `str(ptr)`: a NUL-terminated string at `addr`, at most `len` bytes, in user memory
    /// (`user`) or the kernel's.
    Ptr {
        addr: Box<TExpr>,
        len: u32,
        user: bool,
    },
}

impl StrSrc {
    pub fn capacity(&self) -> u32 {
        match self {
            StrSrc::Comm => 16,
            StrSrc::CtxArray { len, .. } | StrSrc::CtxBytes { len, .. } => *len,
            StrSrc::CtxDataLoc { cap, .. } => *cap,
            StrSrc::Kernel { len, .. } | StrSrc::Ptr { len, .. } => *len,
        }
    }
}

/// Values that need a helper call or a context read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Pid,
    Tid,
    Uid,
    Cpu,
    Nsecs,
    /// kprobe argument n (x86-64 pt_regs).
    Arg(u8),
    /// kretprobe return value.
    Retval,
    /// The current `struct task_struct *`.
    CurTask,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TExpr {
    Int(i64),
    Builtin(Builtin),
    CtxInt {
        off: u32,
        size: u32,
        signed: bool,
    },
    /// `size` bytes of kernel memory at `addr` (bpf_probe_read_kernel; 0 if unreadable).
    Read {
        addr: Box<TExpr>,
        size: u32,
        signed: bool,
    },
    /// The low `size` bytes of a value, sign- or zero-extended (an `int` argument in a
    /// 64-bit register).
    Narrow {
        x: Box<TExpr>,
        size: u32,
        signed: bool,
    },
    /// Local variable `n`'s stack slot (0 until assigned).
    Local(u32),
    /// The value map `map` holds under `key`, 0 if none.
    MapRead {
        map: u32,
        key: Vec<TKey>,
    },
    Unary(UnOp, Box<TExpr>),
    /// Arithmetic, bitwise, comparison or logical operator on integers.
    Binary(BinOp, Box<TExpr>, Box<TExpr>),
    /// `x in [a, b, …]`
    In(Box<TExpr>, Vec<TExpr>),
    /// String compared with a literal: equal, or (prefix) starts with.
    StrMatch {
        src: StrSrc,
        lit: Vec<u8>,
        prefix: bool,
        negate: bool,
    },
}

/// The value of one emitted field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TValue {
    Int(TExpr),
    Str(StrSrc),
    /// `kstack`: up to `depth` return addresses of the kernel stack.
    Stack {
        depth: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TField {
    pub name: String,
    /// The field's value in the script.
    pub span: crate::compiler::diag::Span,
    pub value: TValue,
    pub kind: FieldKind,
    /// Offset in the record.
    pub offset: u32,
}

/// One part of a map key, at its place in the key (parts are laid out in order, each
/// rounded up to 8 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TKey {
    Int(TExpr),
    Str(StrSrc),
}

/// One emitted record: its schema and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TEmit {
    /// Index of this record's schema in the manifest.
    pub schema: u32,
    pub record_size: u32,
    pub fields: Vec<TField>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TStmt {
    /// The code that follows comes from this place in the script (for the verifier's
    /// refusals, which name an instruction).
    Line(crate::compiler::diag::Span),
    /// Local variable `slot` takes `value`.
    Let {
        slot: u32,
        value: TExpr,
    },
    /// `@m[key] = value`: a full map counts a drop.
    MapUpdate {
        map: u32,
        key: Vec<TKey>,
        value: TExpr,
    },
    MapDelete {
        map: u32,
        key: Vec<TKey>,
    },
    /// `@m[key] = count()` and the other aggregations: this CPU's value of the entry
    /// (created if new; a full map counts a drop) takes `arg` in (`None` for count()).
    Aggregate {
        map: u32,
        key: Vec<TKey>,
        arg: Option<TExpr>,
    },
    If {
        cond: TExpr,
        then: Vec<TStmt>,
        els: Vec<TStmt>,
    },
    Emit(TEmit),
}

/// One BPF program: one probe at one attach point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TProgram {
    pub name: String,
    pub section: String,
    pub attach: crate::manifest::Attach,
    pub predicate: Option<TExpr>,
    pub predicate_span: Option<crate::compiler::diag::Span>,
    /// Local variables: each has a stack slot, zeroed at the start.
    pub locals: u32,
    pub body: Vec<TStmt>,
}
