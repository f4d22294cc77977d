//! Pass 4: checked programs to eBPF instructions.
//!
//! Register use: r6 holds the context, r7 the record being filled; expressions evaluate
//! into r0, with left operands parked in 8-byte stack slots (calls clobber r1–r5).
//! Conditions compile to jumps (short-circuit `&&`, `||`). If the ring buffer is full
//! the record is not written, and if a map is full the new key is not stored: either way
//! the program counts a drop and goes on. It never waits.

use crate::compiler::ast::{BinOp, UnOp};
use crate::compiler::diag::{Diagnostic, Span};
use crate::compiler::typed::*;
use crate::elf::ProgramCode;
use crate::insn::{Alu, Asm, Cond, Label, R0, R1, R2, R3, R4, R6, R7, R10, Reg, Size, helper};
use crate::manifest::{MapSpec, MapValue};

pub const RING_MAP: &str = "events";
pub const DROPS_MAP: &str = "drops";
/// bpf_map_update_elem's flags: store whatever is there, or only a new key.
const BPF_ANY: i32 = 0;
const BPF_NOEXIST: i32 = 1;
/// BPF stack size.
const STACK: i32 = 512;

/// x86-64 `struct pt_regs` offsets of di, si, dx, cx, r8, r9 (the first six arguments) and ax.
const ARG_REGS: [i16; 6] = [112, 104, 96, 88, 72, 64];
const RET_REG: i16 = 80;

struct Gen<'m> {
    a: Asm,
    /// (first instruction, source) of each statement, field and predicate, in order.
    lines: Vec<(u32, Span)>,
    maps: &'m [MapSpec],
    /// Bytes of stack in use, growing down from r10.
    sp: i32,
    too_deep: bool,
}

pub fn codegen(p: &TProgram, maps: &[MapSpec], diags: &mut Vec<Diagnostic>) -> Option<ProgramCode> {
    // Local variables own the top of the stack, one slot each, zeroed: a variable
    // assigned in one branch only reads as 0 on the other.
    let mut g = Gen {
        a: Asm::new(),
        sp: 8 * p.locals as i32,
        too_deep: false,
        maps,
        lines: Vec::new(),
    };
    let exit = g.a.label();
    g.a.mov(R6, R1);
    for i in 0..p.locals {
        g.a.store_imm(Size::DW, R10, local_slot(i), 0);
    }
    if let Some(pred) = &p.predicate {
        if let Some(span) = p.predicate_span {
            g.line(span);
        }
        g.cond(pred, exit);
    }
    g.stmts(&p.body);
    g.a.bind(exit).mov_imm(R0, 0).exit();
    if g.too_deep {
        diags.push(
            Diagnostic::new(
                Default::default(),
                format!("program {} needs more than {STACK} bytes of stack", p.name),
            )
            .hint("split the expression"),
        );
        return None;
    }
    match g.a.finish() {
        Ok((insns, map_refs)) => Some(ProgramCode {
            name: p.name.clone(),
            section: p.section.clone(),
            insns,
            map_refs,
            lines: g.lines,
        }),
        Err(e) => {
            diags.push(Diagnostic::new(
                Default::default(),
                format!("program {}: {e}", p.name),
            ));
            None
        }
    }
}

/// Where local variable `i` lives.
fn local_slot(i: u32) -> i16 {
    -8 * (i as i16 + 1)
}

fn inverse(c: Cond) -> Cond {
    match c {
        Cond::Eq => Cond::Ne,
        Cond::Ne => Cond::Eq,
        Cond::Sgt => Cond::Sle,
        Cond::Sle => Cond::Sgt,
        Cond::Sge => Cond::Slt,
        Cond::Slt => Cond::Sge,
        other => other,
    }
}

fn cmp_cond(op: BinOp) -> Option<Cond> {
    Some(match op {
        BinOp::Eq => Cond::Eq,
        BinOp::Ne => Cond::Ne,
        BinOp::Lt => Cond::Slt,
        BinOp::Le => Cond::Sle,
        BinOp::Gt => Cond::Sgt,
        BinOp::Ge => Cond::Sge,
        _ => return None,
    })
}

impl Gen<'_> {
    fn stmts(&mut self, stmts: &[TStmt]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn line(&mut self, span: Span) {
        self.lines.push((self.a.len() as u32, span));
    }

    fn stmt(&mut self, s: &TStmt) {
        match s {
            TStmt::Line(span) => self.line(*span),
            TStmt::Let { slot, value } => {
                self.eval(value);
                self.a.store(Size::DW, R10, local_slot(*slot), R0);
            }
            TStmt::MapUpdate { map, key, value } => {
                let (k, size) = self.map_key(*map, key);
                self.eval(value);
                let v = self.push_slot();
                self.a.store(Size::DW, R10, v, R0);
                let stored = self.a.label();
                let symbol = self.maps[*map as usize].symbol.clone();
                self.map_call(&symbol, k, Some((v, BPF_ANY)), helper::MAP_UPDATE_ELEM);
                // A full map refuses a new key: counted like a full ring.
                self.a.jmp_imm(Cond::Sge, R0, 0, stored);
                self.count_drop();
                self.a.bind(stored);
                self.pop_slot();
                self.pop_bytes(size);
            }
            TStmt::MapDelete { map, key } => {
                let (k, size) = self.map_key(*map, key);
                let symbol = self.maps[*map as usize].symbol.clone();
                self.map_call(&symbol, k, None, helper::MAP_DELETE_ELEM);
                self.pop_bytes(size);
            }
            TStmt::If { cond, then, els } => {
                let (f, end) = (self.a.label(), self.a.label());
                self.cond(cond, f);
                self.stmts(then);
                self.a.jmp(end);
                self.a.bind(f);
                self.stmts(els);
                self.a.bind(end);
            }
            TStmt::Aggregate { map, key, arg } => self.aggregate(*map, key, arg.as_ref()),
            TStmt::Emit(e) => self.emit(e),
        }
    }

    /// One update of an aggregation: this CPU's value of the entry (a per-CPU hash, so no
    /// other CPU writes it), created zeroed if new.
    fn aggregate(&mut self, map: u32, key: &[TKey], arg: Option<&TExpr>) {
        let spec = &self.maps[map as usize];
        let (value, symbol, bucket_at) = (spec.value, spec.symbol.clone(), spec.user_key_size());
        // The argument first: helper calls clobber r0-r5.
        let x = self.push_slot();
        if let Some(arg) = arg {
            self.eval(arg);
            self.a.store(Size::DW, R10, x, R0);
        }
        let (k, size) = self.map_key(map, key);
        if value.bucketed() {
            self.a.load(Size::DW, R1, R10, x);
            self.bucket(value);
            self.a.store(Size::DW, R10, k + bucket_at as i16, R0);
        }
        let (found, done) = (self.a.label(), self.a.label());
        self.map_call(&symbol, k, None, helper::MAP_LOOKUP_ELEM);
        self.a.jmp_imm(Cond::Ne, R0, 0, found);
        let zero = self.push_bytes(16);
        self.a
            .store_imm(Size::DW, R10, zero, 0)
            .store_imm(Size::DW, R10, zero + 8, 0);
        // BPF_NOEXIST: another program may have created it meanwhile; either way it exists
        // after this unless the map is full.
        self.map_call(
            &symbol,
            k,
            Some((zero, BPF_NOEXIST)),
            helper::MAP_UPDATE_ELEM,
        );
        self.pop_bytes(16);
        self.map_call(&symbol, k, None, helper::MAP_LOOKUP_ELEM);
        self.a.jmp_imm(Cond::Ne, R0, 0, found);
        self.count_drop();
        self.a.jmp(done);
        self.a.bind(found);
        self.a.load(Size::DW, R1, R10, x);
        match value {
            MapValue::Count | MapValue::Hist | MapValue::Lhist { .. } => {
                self.a
                    .load(Size::DW, R2, R0, 0)
                    .alu64_imm(Alu::Add, R2, 1)
                    .store(Size::DW, R0, 0, R2);
            }
            MapValue::Sum | MapValue::Int => {
                self.a
                    .load(Size::DW, R2, R0, 0)
                    .alu64_reg(Alu::Add, R2, R1)
                    .store(Size::DW, R0, 0, R2);
            }
            MapValue::Avg => {
                self.a
                    .load(Size::DW, R2, R0, 0)
                    .alu64_reg(Alu::Add, R2, R1)
                    .store(Size::DW, R0, 0, R2);
                self.a
                    .load(Size::DW, R2, R0, 8)
                    .alu64_imm(Alu::Add, R2, 1)
                    .store(Size::DW, R0, 8, R2);
            }
            MapValue::Min | MapValue::Max => {
                // The first value this CPU sees is kept whatever it is.
                let set = self.a.label();
                self.a
                    .load(Size::DW, R2, R0, 8)
                    .jmp_imm(Cond::Eq, R2, 0, set);
                self.a.load(Size::DW, R2, R0, 0);
                let keep = if value == MapValue::Min {
                    Cond::Sge
                } else {
                    Cond::Sle
                };
                self.a.jmp_reg(keep, R1, R2, done);
                self.a.bind(set);
                self.a
                    .store(Size::DW, R0, 0, R1)
                    .store_imm(Size::DW, R0, 8, 1);
            }
        }
        self.a.bind(done);
        self.pop_bytes(size);
        self.pop_slot();
    }

    /// r0 = the bucket of the value in r1 (r1 is clobbered).
    fn bucket(&mut self, value: MapValue) {
        let done = self.a.label();
        match value {
            MapValue::Lhist { min, max, step } => {
                let last = (max - min - 1) / step + 2;
                let below = self.a.label();
                let above = self.a.label();
                self.a.ld_imm64(R2, min).jmp_reg(Cond::Slt, R1, R2, below);
                self.a.ld_imm64(R2, max).jmp_reg(Cond::Sge, R1, R2, above);
                self.a.ld_imm64(R2, min).alu64_reg(Alu::Sub, R1, R2);
                self.a.ld_imm64(R2, step).alu64_reg(Alu::Div, R1, R2);
                self.a.mov(R0, R1).alu64_imm(Alu::Add, R0, 1).jmp(done);
                self.a.bind(below).mov_imm(R0, 0).jmp(done);
                self.a.bind(above).ld_imm64(R0, last);
            }
            _ => {
                // 0 below zero, 1 for zero, else 2 + floor(log2(x)) by halving the range.
                self.a.mov_imm(R0, 0).jmp_imm(Cond::Slt, R1, 0, done);
                self.a.mov_imm(R0, 1).jmp_imm(Cond::Eq, R1, 0, done);
                self.a.mov_imm(R0, 2);
                for shift in [32, 16, 8, 4, 2, 1] {
                    let skip = self.a.label();
                    self.a.mov(R2, R1).alu64_imm(Alu::Rsh, R2, shift).jmp_imm(
                        Cond::Eq,
                        R2,
                        0,
                        skip,
                    );
                    self.a.mov(R1, R2).alu64_imm(Alu::Add, R0, shift);
                    self.a.bind(skip);
                }
            }
        }
        self.a.bind(done);
    }

    /// r0 = `helper`(map, &key) for a lookup or a delete, or (map, &key, &value, flags)
    /// for an update; key and value are stack offsets.
    fn map_call(&mut self, map: &str, key: i16, value: Option<(i16, i32)>, helper: i32) {
        self.a
            .ld_map(R1, map)
            .mov(R2, R10)
            .alu64_imm(Alu::Add, R2, key.into());
        if let Some((value, flags)) = value {
            self.a
                .mov(R3, R10)
                .alu64_imm(Alu::Add, R3, value.into())
                .mov_imm(R4, flags);
        }
        self.a.call(helper);
    }

    /// Adds one to the probe's drop counter.
    fn count_drop(&mut self) {
        let done = self.a.label();
        let key = self.push_slot();
        self.a.store_imm(Size::W, R10, key, 0);
        self.map_call(DROPS_MAP, key, None, helper::MAP_LOOKUP_ELEM);
        self.a.jmp_imm(Cond::Eq, R0, 0, done);
        self.a.mov_imm(R1, 1).atomic_add64(R0, 0, R1);
        self.a.bind(done);
        self.pop_slot();
    }

    /// Builds map `map`'s key on the stack: zeroed, then each part at its place.
    /// Returns its offset and size; the caller pops it.
    fn map_key(&mut self, map: u32, key: &[TKey]) -> (i16, i32) {
        let spec = &self.maps[map as usize];
        let size = spec.key_size() as i32;
        let places: Vec<u32> = spec
            .key
            .iter()
            .scan(0, |at, p| {
                let here = *at;
                *at += p.size();
                Some(here)
            })
            .collect();
        let base = self.push_bytes(size);
        for i in 0..size / 8 {
            self.a.store_imm(Size::DW, R10, base + 8 * i as i16, 0);
        }
        for (part, at) in key.iter().zip(places) {
            let off = base + at as i16;
            match part {
                TKey::Int(e) => {
                    self.eval(e);
                    self.a.store(Size::DW, R10, off, R0);
                }
                TKey::Str(src) => self.read_str(src, R10, off),
            }
        }
        (base, size)
    }

    /// Reserves a record, fills it and submits it; if the ring is full, counts a drop.
    fn emit(&mut self, e: &TEmit) {
        let (reserved, done) = (self.a.label(), self.a.label());
        self.a
            .ld_map(R1, RING_MAP)
            .mov_imm(R2, e.record_size as i32)
            .mov_imm(R3, 0)
            .call(helper::RINGBUF_RESERVE);
        self.a.jmp_imm(Cond::Ne, R0, 0, reserved);
        self.count_drop();
        self.a.jmp(done);
        self.a.bind(reserved).mov(R7, R0);
        self.a.call(helper::KTIME_GET_NS).store(Size::DW, R7, 0, R0);
        self.a
            .store_imm(Size::W, R7, 8, e.schema as i32)
            .store_imm(Size::W, R7, 12, 0);
        for f in &e.fields {
            self.line(f.span);
            let off = f.offset as i16;
            match &f.value {
                TValue::Int(x) => {
                    self.eval(x);
                    self.a.store(Size::DW, R7, off, R0);
                }
                TValue::Str(src) => self.read_str(src, R7, off),
                TValue::Stack { depth } => {
                    // bpf_get_stack writes the frames after the count, and returns the
                    // bytes written (or a negative error), stored as the count.
                    self.a
                        .mov(R1, R6)
                        .mov(R2, R7)
                        .alu64_imm(Alu::Add, R2, i32::from(off) + 8)
                        .mov_imm(R3, (*depth * 8) as i32)
                        .mov_imm(R4, 0)
                        .call(helper::GET_STACK);
                    self.a.store(Size::DW, R7, off, R0);
                }
            }
        }
        self.a
            .mov(R1, R7)
            .mov_imm(R2, 0)
            .call(helper::RINGBUF_SUBMIT);
        self.a.bind(done);
    }

    fn push_bytes(&mut self, n: i32) -> i16 {
        self.sp += (n + 7) / 8 * 8;
        if self.sp > STACK {
            self.too_deep = true;
            self.sp = STACK;
        }
        -(self.sp as i16)
    }
    fn push_slot(&mut self) -> i16 {
        self.push_bytes(8)
    }
    fn pop_bytes(&mut self, n: i32) {
        self.sp -= (n + 7) / 8 * 8;
    }
    fn pop_slot(&mut self) {
        self.pop_bytes(8)
    }

    /// Copies a string into the buffer at `base + off` (its full length; NUL padded).
    fn read_str(&mut self, src: &StrSrc, base: Reg, off: i16) {
        let from_memory = match src {
            StrSrc::Kernel { addr, len } => Some((addr, len, helper::PROBE_READ_KERNEL)),
            StrSrc::Ptr { addr, len, user } => Some((
                addr,
                len,
                if *user {
                    helper::PROBE_READ_USER_STR
                } else {
                    helper::PROBE_READ_KERNEL_STR
                },
            )),
            _ => None,
        };
        if let Some((addr, len, read)) = from_memory {
            // The address first: evaluating it uses r0–r5.
            self.eval(addr);
            self.a
                .mov(R3, R0)
                .mov(R1, base)
                .alu64_imm(Alu::Add, R1, off.into())
                .mov_imm(R2, *len as i32)
                .call(read);
            return;
        }
        self.a.mov(R1, base).alu64_imm(Alu::Add, R1, off.into());
        match src {
            StrSrc::Kernel { .. } | StrSrc::Ptr { .. } => {}
            StrSrc::Comm => {
                self.a.mov_imm(R2, 16).call(helper::GET_CURRENT_COMM);
            }
            StrSrc::CtxArray { off, len } | StrSrc::CtxBytes { off, len } => {
                self.a
                    .mov_imm(R2, *len as i32)
                    .mov(R3, R6)
                    .alu64_imm(Alu::Add, R3, *off as i32);
                self.a.call(helper::PROBE_READ_KERNEL);
            }
            StrSrc::CtxDataLoc { off, cap } => {
                // The locator's low 16 bits are the data's offset in the record.
                self.a
                    .load(Size::W, R3, R6, *off as i16)
                    .alu64_imm(Alu::And, R3, 0xffff)
                    .alu64_reg(Alu::Add, R3, R6);
                self.a
                    .mov_imm(R2, *cap as i32)
                    .call(helper::PROBE_READ_KERNEL_STR);
            }
        }
    }

    /// Evaluates an integer expression into r0.
    fn eval(&mut self, e: &TExpr) {
        match e {
            TExpr::Int(v) => {
                if let Ok(v32) = i32::try_from(*v) {
                    self.a.mov_imm(R0, v32);
                } else {
                    self.a.ld_imm64(R0, *v);
                }
            }
            TExpr::Builtin(b) => match b {
                Builtin::Pid => {
                    self.a
                        .call(helper::GET_CURRENT_PID_TGID)
                        .alu64_imm(Alu::Rsh, R0, 32);
                }
                Builtin::Tid => {
                    self.a
                        .call(helper::GET_CURRENT_PID_TGID)
                        .alu32_reg(Alu::Mov, R0, R0);
                }
                Builtin::Uid => {
                    self.a
                        .call(helper::GET_CURRENT_UID_GID)
                        .alu32_reg(Alu::Mov, R0, R0);
                }
                Builtin::Cpu => {
                    self.a.call(helper::GET_SMP_PROCESSOR_ID);
                }
                Builtin::Nsecs => {
                    self.a.call(helper::KTIME_GET_NS);
                }
                Builtin::Arg(n) => {
                    self.a.load(Size::DW, R0, R6, ARG_REGS[*n as usize]);
                }
                Builtin::Retval => {
                    self.a.load(Size::DW, R0, R6, RET_REG);
                }
                Builtin::CurTask => {
                    self.a.call(helper::GET_CURRENT_TASK);
                }
            },
            TExpr::Local(i) => {
                self.a.load(Size::DW, R0, R10, local_slot(*i));
            }
            TExpr::MapRead { map, key } => {
                let (k, size) = self.map_key(*map, key);
                let none = self.a.label();
                let symbol = self.maps[*map as usize].symbol.clone();
                self.map_call(&symbol, k, None, helper::MAP_LOOKUP_ELEM);
                self.a.jmp_imm(Cond::Eq, R0, 0, none);
                self.a.load(Size::DW, R0, R0, 0);
                self.a.bind(none);
                self.pop_bytes(size);
            }
            TExpr::Read { addr, size, signed } => {
                self.eval(addr);
                let slot = self.push_slot();
                // Zeroed first: an unreadable address reads as 0.
                self.a.store_imm(Size::DW, R10, slot, 0);
                self.a
                    .mov(R3, R0)
                    .mov(R1, R10)
                    .alu64_imm(Alu::Add, R1, slot.into())
                    .mov_imm(R2, *size as i32)
                    .call(helper::PROBE_READ_KERNEL);
                let sz = Size::from_bytes(*size as usize).unwrap_or(Size::DW);
                self.a.load(sz, R0, R10, slot);
                self.pop_slot();
                self.extend(*size, *signed);
            }
            TExpr::Narrow { x, size, signed } => {
                self.eval(x);
                if *size < 8 {
                    let shift = 64 - 8 * *size as i32;
                    let right = if *signed { Alu::Arsh } else { Alu::Rsh };
                    self.a
                        .alu64_imm(Alu::Lsh, R0, shift)
                        .alu64_imm(right, R0, shift);
                }
            }
            TExpr::CtxInt { off, size, signed } => {
                let sz = Size::from_bytes(*size as usize).unwrap_or(Size::DW);
                self.a.load(sz, R0, R6, *off as i16);
                self.extend(*size, *signed);
            }
            TExpr::Unary(UnOp::Neg, x) => {
                self.eval(x);
                self.a.alu64_imm(Alu::Neg, R0, 0);
            }
            TExpr::Binary(op, l, r)
                if cmp_cond(*op).is_none() && !matches!(op, BinOp::And | BinOp::Or) =>
            {
                let alu = match op {
                    BinOp::Add => Alu::Add,
                    BinOp::Sub => Alu::Sub,
                    BinOp::Mul => Alu::Mul,
                    BinOp::Div => Alu::Div,
                    BinOp::Mod => Alu::Mod,
                    BinOp::BitAnd => Alu::And,
                    BinOp::BitOr => Alu::Or,
                    BinOp::BitXor => Alu::Xor,
                    BinOp::Shl => Alu::Lsh,
                    _ => Alu::Rsh,
                };
                // A constant right operand (a member offset, a mask) needs no stack slot.
                if let TExpr::Int(v) = **r
                    && let Ok(v) = i32::try_from(v)
                    && !(v == 0 && matches!(op, BinOp::Div | BinOp::Mod))
                {
                    self.eval(l);
                    self.a.alu64_imm(alu, R0, v);
                    return;
                }
                self.binary_operands(l, r);
                self.a.alu64_reg(alu, R1, R0).mov(R0, R1);
            }
            // Conditions used as values: 1 or 0.
            other => {
                let f = self.a.label();
                let end = self.a.label();
                self.cond(other, f);
                self.a.mov_imm(R0, 1).jmp(end);
                self.a.bind(f).mov_imm(R0, 0);
                self.a.bind(end);
            }
        }
    }

    /// Sign-extends a `size`-byte value loaded into r0 (loads already zero-extend).
    fn extend(&mut self, size: u32, signed: bool) {
        if signed && size < 8 {
            let shift = 64 - 8 * size as i32;
            self.a
                .alu64_imm(Alu::Lsh, R0, shift)
                .alu64_imm(Alu::Arsh, R0, shift);
        }
    }

    /// Leaves `l` in r1 and `r` in r0.
    fn binary_operands(&mut self, l: &TExpr, r: &TExpr) {
        self.eval(l);
        let slot = self.push_slot();
        self.a.store(Size::DW, R10, slot, R0);
        self.eval(r);
        self.a.load(Size::DW, R1, R10, slot);
        self.pop_slot();
    }

    /// Jumps to `f` when `e` is false; falls through when true.
    fn cond(&mut self, e: &TExpr, f: Label) {
        match e {
            TExpr::Binary(BinOp::And, l, r) => {
                self.cond(l, f);
                self.cond(r, f);
            }
            TExpr::Binary(BinOp::Or, l, r) => {
                let t = self.a.label();
                let next = self.a.label();
                self.cond(l, next);
                self.a.jmp(t);
                self.a.bind(next);
                self.cond(r, f);
                self.a.bind(t);
            }
            TExpr::Unary(UnOp::Not, x) => {
                let t = self.a.label();
                self.cond(x, t);
                self.a.jmp(f);
                self.a.bind(t);
            }
            TExpr::Binary(op, l, r) if cmp_cond(*op).is_some() => {
                let c = cmp_cond(*op).unwrap_or(Cond::Eq);
                self.binary_operands(l, r);
                self.a.jmp_reg(inverse(c), R1, R0, f);
            }
            TExpr::In(x, items) => {
                let t = self.a.label();
                self.eval(x);
                let slot = self.push_slot();
                self.a.store(Size::DW, R10, slot, R0);
                for item in items {
                    self.eval(item);
                    self.a.load(Size::DW, R1, R10, slot);
                    self.a.jmp_reg(Cond::Eq, R1, R0, t);
                }
                self.pop_slot();
                self.a.jmp(f);
                self.a.bind(t);
            }
            TExpr::StrMatch {
                src,
                lit,
                prefix,
                negate,
            } => {
                let len = src.capacity() as i32;
                let buf = self.push_bytes(len);
                self.read_str(src, R10, buf);
                let (mismatch, matched) = (self.a.label(), self.a.label());
                for (i, &c) in lit.iter().enumerate() {
                    self.a.load(Size::B, R0, R10, buf + i as i16).jmp_imm(
                        Cond::Ne,
                        R0,
                        c.into(),
                        mismatch,
                    );
                }
                if !prefix && (lit.len() as i32) < len {
                    self.a
                        .load(Size::B, R0, R10, buf + lit.len() as i16)
                        .jmp_imm(Cond::Ne, R0, 0, mismatch);
                }
                self.pop_bytes(len);
                if *negate {
                    self.a.jmp(f);
                    self.a.bind(mismatch);
                } else {
                    self.a.jmp(matched);
                    self.a.bind(mismatch).jmp(f);
                    self.a.bind(matched);
                }
            }
            other => {
                self.eval(other);
                self.a.jmp_imm(Cond::Eq, R0, 0, f);
            }
        }
    }
}
