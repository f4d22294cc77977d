//! What the probe language's expressions mean, in one place: the operators on 64-bit
//! integers and on strings.
//!
//! Both sides of Vesper use it. The compiler folds constant expressions with it (so a
//! constant in a probe is what this module computes, and a property test holds the
//! generated BPF code to the same results on values only known in the kernel); the host
//! evaluates rules with it against decoded records, after [`check_condition`] typed them
//! against the probe's record fields.
//!
//! Integer semantics are the BPF machine's, which the kernel runs: arithmetic wraps,
//! `/` and `%` are unsigned (`x / 0` is 0, `x % 0` is `x`), `>>` is logical, shift counts
//! are taken mod 64, comparisons are signed.

use crate::compiler::ast::{BinOp, Expr, ExprKind, UnOp};

mod types;
pub use types::{Fields, Type, TypeError, check_condition};

#[cfg(test)]
mod tests;

/// A value an expression has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Str(String),
}

impl Value {
    pub fn ty(&self) -> Type {
        match self {
            Value::Int(_) => Type::Int,
            Value::Str(_) => Type::Str,
        }
    }
}

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("the record has no field {field:?}")]
    MissingField { field: String },
    /// A record field holds something no expression can use (a stack, a fraction).
    #[error("field {field:?} holds {found}, which a condition cannot use")]
    FieldValue { field: String, found: &'static str },
    #[error("`{op}` cannot be applied to {left} and {right}")]
    Mismatch {
        op: &'static str,
        left: Type,
        right: Type,
    },
    #[error("`{op}` does not apply to {ty}")]
    Operator { op: &'static str, ty: Type },
    #[error("{ty} is not a condition")]
    NotCondition { ty: Type },
    /// Casts, members and maps read the guest kernel's memory: only a probe can.
    #[error("{what} can only be read in the guest kernel, by a probe")]
    KernelOnly { what: &'static str },
    #[error("unknown function `{name}`")]
    UnknownFunction { name: String },
    #[error("{name}() takes {want} arguments, not {got}")]
    Arity {
        name: &'static str,
        want: usize,
        got: usize,
    },
}

fn truth(b: bool) -> i64 {
    i64::from(b)
}

/// A binary operator on two integers, as the BPF code computes it (`&&` and `||` on
/// values already computed: their short circuit is [`eval`]'s).
pub fn int_binary(op: BinOp, a: i64, b: i64) -> i64 {
    let (ua, ub) = (a as u64, b as u64);
    match op {
        BinOp::Add => a.wrapping_add(b),
        BinOp::Sub => a.wrapping_sub(b),
        BinOp::Mul => a.wrapping_mul(b),
        // The kernel's verifier makes a division by zero 0 and leaves a modulo by zero
        // the dividend, instead of trapping.
        BinOp::Div => ua.checked_div(ub).unwrap_or(0) as i64,
        BinOp::Mod => ua.checked_rem(ub).unwrap_or(ua) as i64,
        BinOp::BitAnd => a & b,
        BinOp::BitOr => a | b,
        BinOp::BitXor => a ^ b,
        // BPF takes the shift count mod 64, as wrapping_shl does.
        BinOp::Shl => ua.wrapping_shl(b as u32) as i64,
        BinOp::Shr => ua.wrapping_shr(b as u32) as i64,
        BinOp::Eq => truth(a == b),
        BinOp::Ne => truth(a != b),
        BinOp::Lt => truth(a < b),
        BinOp::Le => truth(a <= b),
        BinOp::Gt => truth(a > b),
        BinOp::Ge => truth(a >= b),
        BinOp::And => truth(a != 0 && b != 0),
        BinOp::Or => truth(a != 0 || b != 0),
    }
}

/// A unary operator on an integer.
pub fn int_unary(op: UnOp, a: i64) -> i64 {
    match op {
        UnOp::Not => truth(a == 0),
        UnOp::Neg => a.wrapping_neg(),
    }
}

/// A binary operator on two values: integers as [`int_binary`]; strings compare (`==`,
/// `!=`) byte for byte.
pub fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, EvalError> {
    match (a, b) {
        (Value::Int(a), Value::Int(b)) => Ok(Value::Int(int_binary(op, *a, *b))),
        (Value::Str(a), Value::Str(b)) => match op {
            BinOp::Eq => Ok(Value::Int(truth(a == b))),
            BinOp::Ne => Ok(Value::Int(truth(a != b))),
            BinOp::And | BinOp::Or => Err(EvalError::NotCondition { ty: Type::Str }),
            _ => Err(EvalError::Operator {
                op: op.symbol(),
                ty: Type::Str,
            }),
        },
        _ => Err(EvalError::Mismatch {
            op: op.symbol(),
            left: a.ty(),
            right: b.ty(),
        }),
    }
}

pub fn unary(op: UnOp, a: &Value) -> Result<Value, EvalError> {
    match a {
        Value::Int(a) => Ok(Value::Int(int_unary(op, *a))),
        Value::Str(_) => Err(EvalError::Operator {
            op: unary_symbol(op),
            ty: Type::Str,
        }),
    }
}

pub fn unary_symbol(op: UnOp) -> &'static str {
    match op {
        UnOp::Not => "!",
        UnOp::Neg => "-",
    }
}

/// `s` starts with `prefix` (`starts_with(comm, "http")`).
pub fn starts_with(s: &Value, prefix: &Value) -> Result<Value, EvalError> {
    match (s, prefix) {
        (Value::Str(s), Value::Str(p)) => Ok(Value::Int(truth(s.starts_with(p.as_str())))),
        (a, b) => Err(EvalError::Mismatch {
            op: "starts_with",
            left: a.ty(),
            right: b.ty(),
        }),
    }
}

/// A value used as a condition: integers are true when not 0; a string is no condition.
pub fn truthy(v: &Value) -> Result<bool, EvalError> {
    match v {
        Value::Int(i) => Ok(*i != 0),
        Value::Str(_) => Err(EvalError::NotCondition { ty: Type::Str }),
    }
}

/// Evaluates `e`; names (and `args.NAME`) are looked up with `field`. `&&` and `||`
/// short-circuit, as in the kernel: the right side of a decided one is not evaluated.
pub fn eval(
    e: &Expr,
    field: &dyn Fn(&str) -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    Ok(match &e.kind {
        ExprKind::Int(i) => Value::Int(*i),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Ident(name) | ExprKind::Field(name) => field(name)?,
        ExprKind::Unary(op, x) => unary(*op, &eval(x, field)?)?,
        ExprKind::Binary(BinOp::And, a, b) => Value::Int(truth(
            truthy(&eval(a, field)?)? && truthy(&eval(b, field)?)?,
        )),
        ExprKind::Binary(BinOp::Or, a, b) => Value::Int(truth(
            truthy(&eval(a, field)?)? || truthy(&eval(b, field)?)?,
        )),
        ExprKind::Binary(op, a, b) => binary(*op, &eval(a, field)?, &eval(b, field)?)?,
        ExprKind::In(x, items) => {
            let x = eval(x, field)?;
            let mut found = false;
            for i in items {
                let v = binary(BinOp::Eq, &x, &eval(i, field)?)?;
                found |= truthy(&v)?;
            }
            Value::Int(truth(found))
        }
        ExprKind::Call(f, args) if f == "starts_with" => match args.as_slice() {
            [s, p] => starts_with(&eval(s, field)?, &eval(p, field)?)?,
            _ => {
                return Err(EvalError::Arity {
                    name: "starts_with",
                    want: 2,
                    got: args.len(),
                });
            }
        },
        ExprKind::Call(f, _) => return Err(EvalError::UnknownFunction { name: f.clone() }),
        ExprKind::Cast(..) => return Err(EvalError::KernelOnly { what: "a cast" }),
        ExprKind::Member { .. } => return Err(EvalError::KernelOnly { what: "a member" }),
        ExprKind::Map(_) => return Err(EvalError::KernelOnly { what: "a map" }),
    })
}

/// The value of an expression made of constants only (`-10`, `4 * 1024`), for the
/// compiler; None when it names anything.
pub fn constant(e: &Expr) -> Option<i64> {
    let none = |name: &str| {
        Err(EvalError::MissingField {
            field: name.to_string(),
        })
    };
    match eval(e, &none) {
        Ok(Value::Int(v)) => Some(v),
        _ => None,
    }
}
