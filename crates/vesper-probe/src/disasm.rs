//! Disassembly, for golden tests and `vesper build --asm`.

use crate::insn::{
    BPF_ALU, BPF_ALU64, BPF_ATOMIC, BPF_B, BPF_DW, BPF_H, BPF_IMM, BPF_JMP, BPF_LD, BPF_LDX,
    BPF_PSEUDO_MAP_FD, BPF_ST, BPF_STX, BPF_W, BPF_X, Insn,
};

/// Readable listing of a program, one instruction per line (for golden tests and
/// `vesper build --asm`).
pub fn disasm(insns: &[Insn]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < insns.len() {
        let at = i;
        let n = insns[i];
        let class = n.code & 0x07;
        let line = match class {
            BPF_LD if n.code == BPF_LD | BPF_DW | BPF_IMM => {
                let hi = insns.get(i + 1).map_or(0, |x| x.imm as u32 as u64);
                let v = (hi << 32) | n.imm as u32 as u64;
                i += 1;
                if n.src == BPF_PSEUDO_MAP_FD {
                    format!("r{} = map[{}]", n.dst, v)
                } else {
                    format!("r{} = {:#x} ll", n.dst, v)
                }
            }
            BPF_LDX => format!(
                "r{} = *({} *)(r{} {:+})",
                n.dst,
                size_name(n.code),
                n.src,
                n.off
            ),
            BPF_ST => format!(
                "*({} *)(r{} {:+}) = {}",
                size_name(n.code),
                n.dst,
                n.off,
                n.imm
            ),
            BPF_STX if n.code & 0xe0 == BPF_ATOMIC => format!(
                "lock *({} *)(r{} {:+}) += r{}",
                size_name(n.code),
                n.dst,
                n.off,
                n.src
            ),
            BPF_STX => format!(
                "*({} *)(r{} {:+}) = r{}",
                size_name(n.code),
                n.dst,
                n.off,
                n.src
            ),
            BPF_ALU | BPF_ALU64 => {
                let w = if class == BPF_ALU { "w" } else { "r" };
                let op = match n.code & 0xf0 {
                    0x00 => "+=",
                    0x10 => "-=",
                    0x20 => "*=",
                    0x30 => "/=",
                    0x40 => "|=",
                    0x50 => "&=",
                    0x60 => "<<=",
                    0x70 => ">>=",
                    0x80 => "= -",
                    0x90 => "%=",
                    0xa0 => "^=",
                    0xb0 => "=",
                    0xc0 => "s>>=",
                    _ => "?=",
                };
                if n.code & 0xf0 == 0x80 {
                    format!("{w}{} = -{w}{}", n.dst, n.dst)
                } else if n.code & BPF_X != 0 {
                    format!("{w}{} {op} {w}{}", n.dst, n.src)
                } else {
                    format!("{w}{} {op} {}", n.dst, n.imm)
                }
            }
            BPF_JMP => match n.code & 0xf0 {
                0x80 => format!("call {}", n.imm),
                0x90 => "exit".to_string(),
                0x00 => format!("goto {:+}", n.off),
                op => {
                    let c = match op {
                        0x10 => "==",
                        0x20 => ">",
                        0x30 => ">=",
                        0x40 => "&",
                        0x50 => "!=",
                        0x60 => "s>",
                        0x70 => "s>=",
                        0xa0 => "<",
                        0xb0 => "<=",
                        0xc0 => "s<",
                        0xd0 => "s<=",
                        _ => "?",
                    };
                    let rhs = if n.code & BPF_X != 0 {
                        format!("r{}", n.src)
                    } else {
                        n.imm.to_string()
                    };
                    format!("if r{} {c} {rhs} goto {:+}", n.dst, n.off)
                }
            },
            _ => format!("<{:#04x}>", n.code),
        };
        out.push_str(&format!("{at:4}: {line}\n"));
        i += 1;
    }
    out
}

fn size_name(code: u8) -> &'static str {
    match code & 0x18 {
        BPF_B => "u8",
        BPF_H => "u16",
        BPF_W => "u32",
        _ => "u64",
    }
}

/// Disassembly of every program in an object this compiler wrote.
pub fn disasm_object(object: &[u8], manifest: &crate::Manifest) -> String {
    let mut out = String::new();
    for a in &manifest.attach {
        let section = match a.kind {
            crate::AttachKind::Tracepoint => format!("tracepoint/{}", a.target.replace(':', "/")),
            crate::AttachKind::Kprobe => format!("kprobe/{}", a.target),
            crate::AttachKind::Kretprobe => format!("kretprobe/{}", a.target),
        };
        let Some(code) = crate::elf::section_data(object, &section) else {
            continue;
        };
        let insns: Vec<Insn> = code
            .chunks_exact(8)
            .map(|c| Insn {
                code: c[0],
                dst: c[1] & 0xf,
                src: c[1] >> 4,
                off: i16::from_le_bytes([c[2], c[3]]),
                imm: i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        out.push_str(&format!("{} ({section}):\n{}", a.program, disasm(&insns)));
    }
    out
}
