//! eBPF instructions and a small assembler with forward labels.
//!
//! Encoding follows the kernel's `struct bpf_insn` (Documentation/bpf/standardization):
//! 8 bytes — opcode, dst:4|src:4, signed 16-bit offset, signed 32-bit immediate.

/// One 8-byte instruction slot (an `ld_imm64` takes two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn to_bytes(self) -> [u8; 8] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            o[0],
            o[1],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }
}

// Instruction classes.
pub const BPF_LD: u8 = 0x00;
pub const BPF_LDX: u8 = 0x01;
pub const BPF_ST: u8 = 0x02;
pub const BPF_STX: u8 = 0x03;
pub const BPF_ALU: u8 = 0x04;
pub const BPF_JMP: u8 = 0x05;
pub const BPF_ALU64: u8 = 0x07;
// Sizes.
pub const BPF_W: u8 = 0x00;
pub const BPF_H: u8 = 0x08;
pub const BPF_B: u8 = 0x10;
pub const BPF_DW: u8 = 0x18;
// Modes.
pub const BPF_IMM: u8 = 0x00;
pub const BPF_MEM: u8 = 0x60;
pub const BPF_ATOMIC: u8 = 0xc0;
// Sources.
pub const BPF_K: u8 = 0x00;
pub const BPF_X: u8 = 0x08;
/// `src` of an `ld_imm64` whose immediate is a map (relocated to its fd at load).
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Mul = 0x20,
    Div = 0x30,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Neg = 0x80,
    Mod = 0x90,
    Xor = 0xa0,
    Mov = 0xb0,
    Arsh = 0xc0,
}

/// Jump conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    Always = 0x00,
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Sgt = 0x60,
    Sge = 0x70,
    Lt = 0xa0,
    Le = 0xb0,
    Slt = 0xc0,
    Sle = 0xd0,
}

const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;

/// Memory access width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::B => BPF_B,
            Size::H => BPF_H,
            Size::W => BPF_W,
            Size::DW => BPF_DW,
        }
    }
    pub fn from_bytes(n: usize) -> Option<Size> {
        Some(match n {
            1 => Size::B,
            2 => Size::H,
            4 => Size::W,
            8 => Size::DW,
            _ => return None,
        })
    }
}

/// Kernel helper function ids (include/uapi/linux/bpf.h, `___BPF_FUNC_MAPPER`).
pub mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const KTIME_GET_NS: i32 = 5;
    pub const GET_SMP_PROCESSOR_ID: i32 = 8;
    pub const GET_CURRENT_PID_TGID: i32 = 14;
    pub const GET_CURRENT_UID_GID: i32 = 15;
    pub const GET_CURRENT_COMM: i32 = 16;
    pub const GET_CURRENT_TASK: i32 = 35;
    pub const GET_STACK: i32 = 67;
    pub const PROBE_READ_KERNEL: i32 = 113;
    pub const PROBE_READ_USER_STR: i32 = 114;
    pub const PROBE_READ_KERNEL_STR: i32 = 115;
    pub const RINGBUF_RESERVE: i32 = 131;
    pub const RINGBUF_SUBMIT: i32 = 132;
    pub const RINGBUF_DISCARD: i32 = 133;
}

/// Registers. r0 return value, r1–r5 arguments (clobbered by calls), r6–r9
/// callee-saved, r10 read-only frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
pub const R10: Reg = 10;

/// A jump target, bound later with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// A reference from an instruction to a map, for the ELF relocation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRef {
    /// Instruction index (slot) of the `ld_imm64`.
    pub insn: usize,
    pub map: String,
}

/// Assembles instructions, resolving labels when [`finish`](Asm::finish)ed.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    map_refs: Vec<MapRef>,
}

/// Why an instruction stream could not be finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} used but never bound")]
    UnboundLabel(usize),
    #[error("jump from {from} to {to} is out of the 16-bit range")]
    JumpTooFar { from: usize, to: usize },
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.insns.len()
    }
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
        self
    }
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    pub fn bind(&mut self, l: Label) -> &mut Self {
        self.labels[l.0] = Some(self.insns.len());
        self
    }
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU64 | op as u8 | BPF_K, dst, 0, 0, imm)
    }
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(BPF_ALU64 | op as u8 | BPF_X, dst, src, 0, 0)
    }
    pub fn alu32_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU | op as u8 | BPF_K, dst, 0, 0, imm)
    }
    pub fn alu32_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(BPF_ALU | op as u8 | BPF_X, dst, src, 0, 0)
    }
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(Alu::Mov, dst, imm)
    }
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.alu64_reg(Alu::Mov, dst, src)
    }
    /// `dst = imm64` (two slots).
    pub fn ld_imm64(&mut self, dst: Reg, imm: i64) -> &mut Self {
        self.push(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, imm as i32);
        self.push(0, 0, 0, 0, (imm >> 32) as i32)
    }
    /// `dst = &map` (two slots, relocated at load time).
    pub fn ld_map(&mut self, dst: Reg, map: &str) -> &mut Self {
        self.map_refs.push(MapRef {
            insn: self.insns.len(),
            map: map.to_string(),
        });
        self.push(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, 0);
        self.push(0, 0, 0, 0, 0)
    }
    /// `dst = *(size *)(src + off)`
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(BPF_LDX | BPF_MEM | size.bits(), dst, src, off, 0)
    }
    /// `*(size *)(dst + off) = src`
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(BPF_STX | BPF_MEM | size.bits(), dst, src, off, 0)
    }
    /// `*(size *)(dst + off) = imm`
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(BPF_ST | BPF_MEM | size.bits(), dst, 0, off, imm)
    }
    /// `lock *(u64 *)(dst + off) += src`
    pub fn atomic_add64(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(
            BPF_STX | BPF_ATOMIC | BPF_DW,
            dst,
            src,
            off,
            Alu::Add as i32,
        )
    }
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(BPF_JMP | BPF_CALL, 0, 0, 0, helper)
    }
    pub fn exit(&mut self) -> &mut Self {
        self.push(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }
    pub fn jmp(&mut self, target: Label) -> &mut Self {
        self.jmp_imm(Cond::Always, 0, 0, target)
    }
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(BPF_JMP | cond as u8 | BPF_K, dst, 0, 0, imm)
    }
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(BPF_JMP | cond as u8 | BPF_X, dst, src, 0, 0)
    }

    /// Resolves jumps; returns the instructions and the map references.
    pub fn finish(mut self) -> Result<(Vec<Insn>, Vec<MapRef>), AsmError> {
        for (at, label) in &self.fixups {
            let to = self.labels[label.0].ok_or(AsmError::UnboundLabel(label.0))?;
            let delta = to as i64 - *at as i64 - 1;
            let off = i16::try_from(delta).map_err(|_| AsmError::JumpTooFar { from: *at, to })?;
            self.insns[*at].off = off;
        }
        Ok((self.insns, self.map_refs))
    }
}

/// Serialises instructions as the bytes of a program section.
pub fn to_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel() {
        // r0 = 0; exit — the smallest valid program, as clang emits it.
        let mut a = Asm::new();
        a.mov_imm(R0, 0).exit();
        let (insns, _) = a.finish().unwrap();
        assert_eq!(
            to_bytes(&insns),
            [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn forward_and_backward_jumps_resolve() {
        let mut a = Asm::new();
        let top = a.label();
        let end = a.label();
        a.bind(top);
        a.jmp_imm(Cond::Eq, R1, 0, end); // 0 -> 3: off 2
        a.mov_imm(R0, 1); // 1
        a.jmp(top); // 2 -> 0: off -3
        a.bind(end).exit(); // 3
        let (insns, _) = a.finish().unwrap();
        assert_eq!(insns[0].off, 2);
        assert_eq!(insns[2].off, -3);
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.jmp(l);
        assert_eq!(a.finish().unwrap_err(), AsmError::UnboundLabel(0));
    }
}
