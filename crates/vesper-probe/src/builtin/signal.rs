//! `signal`: every signal generated in the kernel (tracepoint signal:signal_generate),
//! with the sender (the current task) and the target.

use crate::elf::{self, MapDef, ProgramCode, map_type};
use crate::insn::{Asm, Cond, R0, R1, R2, R3, R6, R7, R10, Size, helper};
use crate::manifest::{Attach, AttachKind, FieldKind, FieldSpec, Manifest, Schema};
use crate::{BuildError, CompiledProbe, DEFAULT_RING_BYTES, KernelInfo, TracepointFormat};

const EVENT: &str = "signal:signal_generate";
const RING: &str = "events";
const DROPS: &str = "drops";
const COMM: u32 = 16;

// Record layout.
const TS: i16 = 0;
const SENDER_PID: i16 = 8;
const SENDER_UID: i16 = 12;
const SIG: i16 = 16;
const TARGET_PID: i16 = 20;
const RESULT: i16 = 24;
const CODE: i16 = 28;
const SENDER_COMM: i16 = 32;
const TARGET_COMM: i16 = 48;
const SIZE: i32 = 64;

fn int_field(fmt: &TracepointFormat, name: &str) -> Result<(i16, Size), BuildError> {
    let f = fmt.field(name).ok_or_else(|| BuildError::MissingField {
        event: fmt.event.clone(),
        field: name.to_string(),
        available: fmt.field_names().join(", "),
    })?;
    match (Size::from_bytes(f.size as usize), i16::try_from(f.offset)) {
        (Some(size), Ok(off)) if !f.is_char_array() && f.offset % f.size == 0 => Ok((off, size)),
        _ => Err(BuildError::BadField {
            event: fmt.event.clone(),
            field: name.into(),
            decl: f.decl.clone(),
            size: f.size,
        }),
    }
}

pub(super) fn build(kernel: &KernelInfo) -> Result<CompiledProbe, BuildError> {
    let fmt = kernel.format(EVENT)?;
    let sig = int_field(fmt, "sig")?;
    let pid = int_field(fmt, "pid")?;
    let result = int_field(fmt, "result")?;
    let code = int_field(fmt, "code")?;
    let comm = fmt
        .field("comm")
        .filter(|f| f.is_char_array())
        .ok_or_else(|| BuildError::MissingField {
            event: EVENT.into(),
            field: "comm".into(),
            available: fmt.field_names().join(", "),
        })?;

    let mut a = Asm::new();
    let reserved = a.label();
    let out = a.label();
    a.mov(R6, R1); // ctx
    a.ld_map(R1, RING)
        .mov_imm(R2, SIZE)
        .mov_imm(R3, 0)
        .call(helper::RINGBUF_RESERVE);
    a.jmp_imm(Cond::Ne, R0, 0, reserved);
    // Ring full: count the drop (never wait for the host).
    a.store_imm(Size::W, R10, -4, 0);
    a.ld_map(R1, DROPS)
        .mov(R2, R10)
        .alu64_imm(crate::insn::Alu::Add, R2, -4)
        .call(helper::MAP_LOOKUP_ELEM);
    a.jmp_imm(Cond::Eq, R0, 0, out);
    a.mov_imm(R1, 1).atomic_add64(R0, 0, R1);
    a.jmp(out);

    a.bind(reserved).mov(R7, R0);
    a.call(helper::KTIME_GET_NS).store(Size::DW, R7, TS, R0);
    a.call(helper::GET_CURRENT_PID_TGID)
        .alu64_imm(crate::insn::Alu::Rsh, R0, 32)
        .store(Size::W, R7, SENDER_PID, R0);
    a.call(helper::GET_CURRENT_UID_GID)
        .store(Size::W, R7, SENDER_UID, R0);
    for ((off, size), dst) in [
        (sig, SIG),
        (pid, TARGET_PID),
        (result, RESULT),
        (code, CODE),
    ] {
        a.load(size, R1, R6, off).store(Size::W, R7, dst, R1);
    }
    a.mov(R1, R7)
        .alu64_imm(crate::insn::Alu::Add, R1, SENDER_COMM.into())
        .mov_imm(R2, COMM as i32);
    a.call(helper::GET_CURRENT_COMM);
    a.mov(R1, R7)
        .alu64_imm(crate::insn::Alu::Add, R1, TARGET_COMM.into())
        .mov_imm(R2, comm.size.min(COMM) as i32);
    a.mov(R3, R6)
        .alu64_imm(crate::insn::Alu::Add, R3, comm.offset as i32)
        .call(helper::PROBE_READ_KERNEL);
    a.mov(R1, R7).mov_imm(R2, 0).call(helper::RINGBUF_SUBMIT);
    a.bind(out).mov_imm(R0, 0).exit();
    let (insns, map_refs) = a.finish()?;

    let program = ProgramCode {
        name: "signal_generate".into(),
        section: "tracepoint/signal/signal_generate".into(),
        insns,
        map_refs,
    };
    let maps = [
        MapDef {
            name: RING.into(),
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: DEFAULT_RING_BYTES,
            flags: 0,
        },
        MapDef {
            name: DROPS.into(),
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
        },
    ];
    let object = elf::write_object(std::slice::from_ref(&program), &maps, "GPL")?;
    let field = |name: &str, offset: i16, kind| FieldSpec {
        name: name.into(),
        offset: offset as u32,
        kind,
    };
    let manifest = Manifest {
        name: "signal".into(),
        kernel_release: Some(kernel.release.clone()),
        attach: vec![Attach {
            program: program.name,
            kind: AttachKind::Tracepoint,
            target: EVENT.into(),
        }],
        ring_map: RING.into(),
        drops_map: DROPS.into(),
        record: Schema {
            size: SIZE as u32,
            fields: vec![
                field("ts_ns", TS, FieldKind::U64),
                field("sig", SIG, FieldKind::Signal),
                field("sender_pid", SENDER_PID, FieldKind::U32),
                field("sender_uid", SENDER_UID, FieldKind::U32),
                field("sender_comm", SENDER_COMM, FieldKind::Str { len: COMM }),
                field("target_pid", TARGET_PID, FieldKind::I32),
                field("target_comm", TARGET_COMM, FieldKind::Str { len: COMM }),
                field("result", RESULT, FieldKind::I32),
                field("code", CODE, FieldKind::I32),
            ],
        },
    };
    Ok(CompiledProbe { object, manifest })
}
