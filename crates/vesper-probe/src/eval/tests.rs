use super::*;
use crate::compiler::ast::{BinOp, UnOp};
use crate::compiler::typed::{TExpr, TProgram, TStmt, TValue};
use crate::insn::*;
use proptest::prelude::*;

const BINOPS: [BinOp; 18] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::Mul,
    BinOp::Div,
    BinOp::Mod,
    BinOp::BitAnd,
    BinOp::BitOr,
    BinOp::BitXor,
    BinOp::Shl,
    BinOp::Shr,
    BinOp::Eq,
    BinOp::Ne,
    BinOp::Lt,
    BinOp::Le,
    BinOp::Gt,
    BinOp::Ge,
    BinOp::And,
    BinOp::Or,
];

/// Where the interpreter puts the context and the stack (r10 is `STACK_TOP`).
const CTX: u64 = 0x1000_0000;
const STACK_TOP: u64 = 0x2000_0000 + 512;

/// Runs BPF code as the kernel's instruction set defines it (not as eval.rs does), for
/// what codegen emits for integer expressions: ALU, loads and stores on the context and
/// the stack, jumps; helper calls return 0. Returns the stack at exit.
fn run(insns: &[Insn], ctx: &mut [u8]) -> Vec<u8> {
    let mut r = [0u64; 11];
    let mut stack = vec![0u8; 512];
    r[1] = CTX;
    r[10] = STACK_TOP;
    fn mem<'m>(ctx: &'m mut [u8], stack: &'m mut [u8], addr: u64, len: usize) -> &'m mut [u8] {
        if (CTX..CTX + ctx.len() as u64).contains(&addr) {
            let o = (addr - CTX) as usize;
            &mut ctx[o..o + len]
        } else {
            let o = (addr - (STACK_TOP - 512)) as usize;
            &mut stack[o..o + len]
        }
    }
    let size = |code: u8| match code & 0x18 {
        BPF_B => 1,
        BPF_H => 2,
        BPF_W => 4,
        _ => 8,
    };
    let mut pc = 0;
    for _ in 0..10_000 {
        let i = insns[pc];
        let (d, s) = (i.dst as usize, i.src as usize);
        let imm = i64::from(i.imm) as u64;
        pc += 1;
        match i.code & 0x07 {
            class @ (BPF_ALU | BPF_ALU64) => {
                let src = if i.code & BPF_X != 0 { r[s] } else { imm };
                let dst = r[d];
                let v = match i.code & 0xf0 {
                    0x00 => dst.wrapping_add(src),
                    0x10 => dst.wrapping_sub(src),
                    0x20 => dst.wrapping_mul(src),
                    // The ISA: a division by zero gives 0, a modulo by zero leaves dst.
                    0x30 => dst.checked_div(src).unwrap_or(0),
                    0x40 => dst | src,
                    0x50 => dst & src,
                    0x60 => dst << (src & 63),
                    0x70 => dst >> (src & 63),
                    0x80 => dst.wrapping_neg(),
                    0x90 => dst.checked_rem(src).unwrap_or(dst),
                    0xa0 => dst ^ src,
                    0xb0 => src,
                    0xc0 => ((dst as i64) >> (src & 63)) as u64,
                    op => panic!("ALU op {op:#x}"),
                };
                r[d] = if class == BPF_ALU { v as u32 as u64 } else { v };
            }
            BPF_LD => {
                let hi = insns[pc].imm as u32 as u64;
                pc += 1;
                r[d] = (hi << 32) | i.imm as u32 as u64;
            }
            BPF_LDX => {
                let n = size(i.code);
                let b = mem(ctx, &mut stack, r[s].wrapping_add(i.off as u64), n);
                let mut w = [0u8; 8];
                w[..n].copy_from_slice(b);
                r[d] = u64::from_le_bytes(w);
            }
            class @ (BPF_ST | BPF_STX) => {
                let n = size(i.code);
                let v = if class == BPF_STX { r[s] } else { imm };
                mem(ctx, &mut stack, r[d].wrapping_add(i.off as u64), n)
                    .copy_from_slice(&v.to_le_bytes()[..n]);
            }
            BPF_JMP => {
                let src = if i.code & BPF_X != 0 { r[s] } else { imm };
                let (a, b) = (r[d], src);
                let taken = match i.code & 0xf0 {
                    0x00 => true,
                    0x10 => a == b,
                    0x20 => a > b,
                    0x30 => a >= b,
                    0x40 => a & b != 0,
                    0x50 => a != b,
                    0x60 => (a as i64) > (b as i64),
                    0x70 => (a as i64) >= (b as i64),
                    0xa0 => a < b,
                    0xb0 => a <= b,
                    0xc0 => (a as i64) < (b as i64),
                    0xd0 => (a as i64) <= (b as i64),
                    0x80 => {
                        r[0] = 0;
                        false
                    }
                    0x90 => return stack,
                    op => panic!("JMP op {op:#x}"),
                };
                if taken {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            class => panic!("class {class:#x}"),
        }
    }
    panic!("the program did not exit");
}

/// What the generated code computes for `value`, over a context holding `a` at 8 and
/// `b` at 16: the program stores it in its one local variable.
fn computed(value: TExpr, a: i64, b: i64) -> i64 {
    let p = TProgram {
        name: "p".into(),
        section: "tracepoint/x/y".into(),
        attach: crate::manifest::Attach {
            program: "p".into(),
            kind: crate::manifest::AttachKind::Tracepoint,
            target: "x:y".into(),
            lines: Vec::new(),
        },
        predicate: None,
        predicate_span: None,
        locals: 1,
        body: vec![TStmt::Let { slot: 0, value }],
    };
    let mut diags = Vec::new();
    let code = crate::compiler::passes::codegen::codegen(&p, &[], &mut diags)
        .unwrap_or_else(|| panic!("{diags:?}"));
    let mut ctx = [0u8; 24];
    ctx[8..16].copy_from_slice(&a.to_le_bytes());
    ctx[16..].copy_from_slice(&b.to_le_bytes());
    let stack = run(&code.insns, &mut ctx);
    i64::from_le_bytes(stack[504..].try_into().unwrap())
}

fn ctx(off: u32) -> Box<TExpr> {
    Box::new(TExpr::CtxInt {
        off,
        size: 8,
        signed: true,
    })
}

/// Operands where the semantics differ most: signs, zero, shift counts, extremes.
fn operand() -> impl Strategy<Value = i64> {
    prop_oneof![
        -70i64..70,
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(0),
    ]
}

proptest! {
    /// The BPF code the compiler generates computes what eval.rs says, operators on
    /// values known only in the kernel: the host's rules and the probes agree.
    #[test]
    fn generated_code_computes_what_eval_says(op in 0..BINOPS.len(), a in operand(), b in operand()) {
        let op = BINOPS[op];
        let want = binary(op, &Value::Int(a), &Value::Int(b)).unwrap();
        prop_assert_eq!(
            Value::Int(computed(TExpr::Binary(op, ctx(8), ctx(16)), a, b)),
            want.clone(),
            "{} {} {}", a, op.symbol(), b
        );
        // A constant right operand takes another instruction form.
        prop_assert_eq!(
            Value::Int(computed(TExpr::Binary(op, ctx(8), Box::new(TExpr::Int(b))), a, 0)),
            want,
            "{} {} constant {}", a, op.symbol(), b
        );
    }

    #[test]
    fn unary_and_in_agree_too(a in operand(), b in operand(), c in operand()) {
        for op in [UnOp::Not, UnOp::Neg] {
            prop_assert_eq!(
                Value::Int(computed(TExpr::Unary(op, ctx(8)), a, b)),
                unary(op, &Value::Int(a)).unwrap()
            );
        }
        let items = [Value::Int(b), Value::Int(c)];
        let found = items.iter().any(|i| binary(BinOp::Eq, &Value::Int(a), i) == Ok(Value::Int(1)));
        prop_assert_eq!(
            computed(TExpr::In(ctx(8), vec![*ctx(16), TExpr::Int(c)]), a, b),
            i64::from(found)
        );
    }
}

/// The check pass folds constants with eval.rs: `emit { v = EXPR }` of constants only
/// is the constant eval.rs computes.
#[test]
fn the_compiler_folds_constants_with_eval() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tracefs-6.18");
    let kernel =
        crate::KernelInfo::read_tracefs(&root, "6.18", &["sched:sched_process_fork".into()]);
    for src in [
        "(3 - 10) / 2",
        "-8 % 3",
        "7 % 0 + 7 / 0",
        "1 << 65",
        "-1 >> 60",
        "!(2 < -1) && 3 in [1, 3]",
        "-(-9223372036854775807 - 1)",
    ] {
        let script = format!("tracepoint:sched:sched_process_fork {{ emit {{ v = {src} }} }}");
        let expr = crate::compiler::parse_condition(src, "t").unwrap();
        let want = constant(&expr).unwrap();
        let mut diags = Vec::new();
        let toks = crate::compiler::passes::lex::lex(&script, &mut diags);
        let ast = crate::compiler::passes::parse::parse(&toks, &mut diags);
        let checked = crate::compiler::passes::check::check(&ast, &kernel, &mut diags);
        assert!(diags.is_empty(), "{src}: {diags:?}");
        let TStmt::Emit(e) = checked.programs[0]
            .body
            .iter()
            .find(|s| matches!(s, TStmt::Emit(_)))
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(e.fields[0].value, TValue::Int(TExpr::Int(want)), "{src}");
    }
    assert_eq!(
        constant(&crate::compiler::parse_condition("(3 - 10) / 2", "t").unwrap()),
        Some(9223372036854775804)
    );
    assert_eq!(
        constant(&crate::compiler::parse_condition("-8 % 3", "t").unwrap()),
        Some(((-8i64) as u64 % 3) as i64)
    );
}

#[test]
fn strings_compare_and_mixtures_are_errors() {
    let s = |x: &str| Value::Str(x.into());
    assert_eq!(binary(BinOp::Eq, &s("a"), &s("a")), Ok(Value::Int(1)));
    assert_eq!(binary(BinOp::Ne, &s("a"), &s("a")), Ok(Value::Int(0)));
    assert_eq!(
        binary(BinOp::Lt, &s("a"), &s("b")),
        Err(EvalError::Operator {
            op: "<",
            ty: Type::Str
        })
    );
    assert_eq!(
        binary(BinOp::Eq, &s("9"), &Value::Int(9)),
        Err(EvalError::Mismatch {
            op: "==",
            left: Type::Str,
            right: Type::Int
        })
    );
    assert_eq!(starts_with(&s("httpd"), &s("http")), Ok(Value::Int(1)));
    assert_eq!(
        truthy(&s("x")),
        Err(EvalError::NotCondition { ty: Type::Str })
    );
}

#[test]
fn a_scripts_fields_are_typed_where_the_script_decides() {
    let f = Fields::of_script(crate::builtin::source("signal").unwrap(), "signal.vsp").unwrap();
    assert_eq!(f.get("sig"), Some(Some(Type::Int)));
    assert_eq!(f.get("sig_name"), Some(Some(Type::Str)));
    assert_eq!(f.get("sender_comm"), Some(Some(Type::Str)));
    assert_eq!(
        f.get("target_comm"),
        Some(None),
        "args.comm: the kernel's layout decides"
    );
    assert_eq!(f.get("nope"), None);
}
