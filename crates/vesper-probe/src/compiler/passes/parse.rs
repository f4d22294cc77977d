//! Pass 2: tokens to a syntax tree. Hand-written recursive descent; on an error it
//! records a diagnostic and skips to the next probe, so several mistakes show at once.
//!
//! ```text
//! script    := config? probe*           (config: see `parse/config.rs`)
//! probe     := attach (',' attach)* ('/' expr '/')? '{' stmt* '}'
//! attach    := 'tracepoint' ':' IDENT ':' IDENT | ('kprobe' | 'kretprobe') ':' IDENT
//!            | 'interval' ':' ('s' | 'ms') ':' INT
//! block     := stmt* '}'              (a `;` before `}` may be left out)
//! stmt      := '$' IDENT '=' expr ';' | map '=' expr ';' | ('delete'|'print'|'clear') '(' map ')' ';'
//!            | 'if' expr '{' block ('else' ('if' ... | '{' block))?
//!            | 'emit' '{' IDENT '=' expr (',' IDENT '=' expr)* ','? '}' ';'?
//! map       := '@' IDENT? ('[' expr (',' expr)* ']')?
//! expr      := or
//! or        := and ('||' and)*
//! and       := cmp ('&&' cmp)*
//! cmp       := bitor (('=='|'!='|'<'|'<='|'>'|'>=') bitor | 'in' '[' expr (',' expr)* ']')?
//! bitor     := bitxor ('|' bitxor)*      bitxor := bitand ('^' bitand)*
//! bitand    := shift ('&' shift)*        shift  := sum (('<<'|'>>') sum)*
//! sum       := term (('+'|'-') term)*    term   := unary (('*'|'/'|'%') unary)*
//! unary     := ('!'|'-') unary | primary
//! primary   := INT | STRING | 'args' '.' IDENT | IDENT '(' (expr (',' expr)*)? ')' | map | IDENT | '(' expr ')'
//! ```
//!
//! Inside a predicate `/ ... /`, a bare `/` ends the predicate: write division in
//! parentheses there.

use crate::compiler::ast::*;
use crate::compiler::diag::{Diagnostic, Span};
use crate::compiler::passes::lex::{Tok, Token};

mod config;
pub use config::{MAX_RING_BYTES, PAGE_BYTES, ScriptConfig};

/// Nesting beyond this is refused (keeps recursion bounded on hostile input).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    toks: &'a [Token],
    pos: usize,
    diags: &'a mut Vec<Diagnostic>,
    in_predicate: bool,
    depth: usize,
}

type PResult<T> = Result<T, ()>;

impl<'a> Parser<'a> {
    fn new(toks: &'a [Token], diags: &'a mut Vec<Diagnostic>) -> Self {
        Parser {
            toks,
            pos: 0,
            diags,
            in_predicate: false,
            depth: 0,
        }
    }
}

pub fn parse(toks: &[Token], diags: &mut Vec<Diagnostic>) -> Script {
    parse_with_config(toks, diags).0
}

/// The script and what its `config = { ... }` block set.
pub fn parse_with_config(toks: &[Token], diags: &mut Vec<Diagnostic>) -> (Script, ScriptConfig) {
    let mut p = Parser::new(toks, diags);
    let mut cfg = ScriptConfig::default();
    if p.at_config() {
        let start = p.pos;
        if p.config(&mut cfg).is_err() {
            p.recover(start);
        }
    }
    let mut probes = Vec::new();
    while !p.at_eof() {
        let start = p.pos;
        if p.at_config() {
            let t = p.peek().span;
            p.diags.push(
                Diagnostic::new(t, "the config block must come first in the script")
                    .hint("move `config = { ... }` above the first probe"),
            );
            if p.config(&mut ScriptConfig::default()).is_err() {
                p.recover(start);
            }
            continue;
        }
        match p.probe() {
            Ok(pr) => probes.push(pr),
            Err(()) => p.recover(start),
        }
    }
    if probes.is_empty() && p.diags.is_empty() {
        p.diags.push(
            Diagnostic::new(Span::default(), "the script has no probes")
                .hint("start with an attach point, e.g. `tracepoint:signal:signal_generate { emit { sig = args.sig } }`"),
        );
    }
    (Script { probes }, cfg)
}

/// Parses one expression that must use every token (for host-side rule conditions).
pub fn parse_expr(toks: &[Token], diags: &mut Vec<Diagnostic>) -> Option<Expr> {
    let mut p = Parser::new(toks, diags);
    let e = p.expr().ok()?;
    if !p.at_eof() {
        let t = p.peek().clone();
        p.diags.push(Diagnostic::new(
            t.span,
            format!(
                "unexpected {} after the condition",
                Parser::describe(&t.tok)
            ),
        ));
        return None;
    }
    Some(e)
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }
    fn at_eof(&self) -> bool {
        self.peek().tok == Tok::Eof
    }
    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if !self.at_eof() {
            self.pos += 1;
        }
        t
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek().tok, Tok::Punct(q) if q == p)
    }
    fn is_ident(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == w)
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn describe(t: &Tok) -> String {
        match t {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(v) => format!("`{v}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "the end of the script".into(),
        }
    }
    fn error<T>(&mut self, span: Span, msg: String, hint: Option<&str>) -> PResult<T> {
        let mut d = Diagnostic::new(span, msg);
        if let Some(h) = hint {
            d = d.hint(h);
        }
        self.diags.push(d);
        Err(())
    }
    fn expect_punct(&mut self, p: &str, hint: Option<&str>) -> PResult<Span> {
        if self.is_punct(p) {
            Ok(self.bump().span)
        } else {
            let t = self.peek().clone();
            self.error(
                t.span,
                format!("expected `{p}`, found {}", Self::describe(&t.tok)),
                hint,
            )
        }
    }
    fn expect_ident(&mut self, what: &str) -> PResult<(String, Span)> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) => {
                self.pos += 1;
                Ok((s, t.span))
            }
            other => self.error(
                t.span,
                format!("expected {what}, found {}", Self::describe(&other)),
                None,
            ),
        }
    }

    /// Skips to the token after the `}` that closes the broken probe's body, counting
    /// braces from the probe's start so a mistake in a nested block does not end it early.
    fn recover(&mut self, start: usize) {
        let failed_at = self.pos.max(start + 1);
        self.pos = start;
        let mut depth = 0i32;
        while !self.at_eof() {
            let t = self.bump();
            match t.tok {
                Tok::Punct("{") => depth += 1,
                Tok::Punct("}") => {
                    depth -= 1;
                    if depth <= 0 && self.pos >= failed_at {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    fn probe(&mut self) -> PResult<Probe> {
        let start = self.peek().span;
        let mut attach = vec![self.attach()?];
        while self.eat_punct(",") {
            attach.push(self.attach()?);
        }
        let predicate = if self.eat_punct("/") {
            self.in_predicate = true;
            let e = self.expr();
            self.in_predicate = false;
            let e = e?;
            self.expect_punct(
                "/",
                Some("a predicate is `/ condition /`; put a division inside it in parentheses"),
            )?;
            Some(e)
        } else {
            None
        };
        let body_hint = if predicate.is_some() {
            "a probe's body is `{ emit { ... } }`; if `/` was meant as division in the predicate, write it in parentheses: (a / b)"
        } else {
            "a probe's body is `{ emit { name = value, ... } }`"
        };
        self.expect_punct("{", Some(body_hint))?;
        let (body, end) = self.block()?;
        Ok(Probe {
            attach,
            predicate,
            body,
            span: start.to(end),
        })
    }

    /// Statements up to and including the closing `}` (the `{` is already taken).
    fn block(&mut self) -> PResult<(Vec<Stmt>, Span)> {
        self.depth += 1;
        let r = self.block_inner();
        self.depth -= 1;
        r
    }

    fn block_inner(&mut self) -> PResult<(Vec<Stmt>, Span)> {
        if self.depth > MAX_DEPTH {
            let t = self.peek().span;
            return self.error(
                t,
                format!("blocks nested deeper than {MAX_DEPTH} levels"),
                None,
            );
        }
        let mut body = Vec::new();
        while !self.is_punct("}") {
            if self.at_eof() {
                let t = self.peek().span;
                return self.error(
                    t,
                    "unclosed `{`: the block never ends".into(),
                    Some("add `}`"),
                );
            }
            body.push(self.stmt()?);
        }
        Ok((body, self.bump().span))
    }

    /// `;` ends a simple statement; before `}` it may be left out.
    fn end_stmt(&mut self, what: &str) -> PResult<()> {
        if self.eat_punct(";") || self.is_punct("}") {
            return Ok(());
        }
        self.expect_punct(";", Some(&format!("end the {what} with `;`")))
            .map(|_| ())
    }

    fn stmt(&mut self) -> PResult<Stmt> {
        let (word, span) = self.expect_ident(
            "a statement: `emit { ... }`, `$name = value;`, `@map[key] = value;`, `delete(@map[key]);` or `if (...) { ... }`",
        )?;
        if word.starts_with('$') {
            self.expect_punct("=", Some("assign a variable with `$name = value;`"))?;
            let value = self.expr()?;
            self.end_stmt("assignment")?;
            return Ok(Stmt::Let(Let {
                name: word,
                name_span: span,
                value,
            }));
        }
        if word.starts_with('@') {
            let map = self.map_ref(word, span)?;
            self.expect_punct("=", Some("store into a map with `@name[key] = value;`"))?;
            let value = self.expr()?;
            self.end_stmt("assignment")?;
            return Ok(Stmt::MapAssign { map, value });
        }
        match word.as_str() {
            "emit" => {
                let e = self.emit(span)?;
                self.eat_punct(";");
                Ok(Stmt::Emit(e))
            }
            "delete" => {
                let hint = Some("delete(@name[key]);");
                self.expect_punct("(", hint)?;
                let (name, nspan) = self.expect_ident("a map, as in delete(@start[tid])")?;
                if !name.starts_with('@') {
                    return self.error(nspan, format!("`{name}` is not a map"), hint);
                }
                let map = self.map_ref(name, nspan)?;
                self.expect_punct(")", hint)?;
                self.end_stmt("delete")?;
                Ok(Stmt::Delete(map))
            }
            "if" => self.if_stmt(),
            "print" | "clear" => {
                let hint = format!("{word}(@name);");
                self.expect_punct("(", Some(&hint))?;
                let (name, nspan) = self.expect_ident("a map, as in print(@usecs)")?;
                if !name.starts_with('@') {
                    return self.error(nspan, format!("`{name}` is not a map"), Some(&hint));
                }
                let map = self.map_ref(name, nspan)?;
                self.expect_punct(")", Some(&hint))?;
                self.end_stmt(&word)?;
                Ok(if word == "print" {
                    Stmt::Print(map)
                } else {
                    Stmt::Clear(map)
                })
            }
            _ => self.error(
                span,
                format!("unknown statement `{word}`"),
                Some("statements are `emit { ... }`, `$name = value;`, `@map[key] = value;`, `delete(@map[key]);` and `if (...) { ... } else { ... }`"),
            ),
        }
    }

    /// After `if`: `(cond) { ... }`, then `else { ... }` or `else if ...`.
    fn if_stmt(&mut self) -> PResult<Stmt> {
        let cond = self.expr()?;
        self.expect_punct("{", Some("if (condition) { statements }"))?;
        let (then, _) = self.block()?;
        let els = if self.is_ident("else") {
            self.bump();
            if self.is_ident("if") {
                self.bump();
                vec![self.if_stmt()?]
            } else {
                self.expect_punct("{", Some("else { statements }"))?;
                self.block()?.0
            }
        } else {
            Vec::new()
        };
        Ok(Stmt::If { cond, then, els })
    }

    /// After `@name`: an optional `[key, ...]`.
    fn map_ref(&mut self, name: String, span: Span) -> PResult<MapRef> {
        let mut keys = Vec::new();
        let mut end = span;
        if self.eat_punct("[") {
            let saved = self.in_predicate;
            self.in_predicate = false;
            let r = (|| {
                keys.push(self.expr()?);
                while self.eat_punct(",") {
                    keys.push(self.expr()?);
                }
                self.expect_punct("]", Some("close the key with `]`: @name[key1, key2]"))
            })();
            self.in_predicate = saved;
            end = r?;
        }
        Ok(MapRef {
            name,
            keys,
            span: span.to(end),
        })
    }

    fn attach(&mut self) -> PResult<Attach> {
        let (kind, kspan) =
            self.expect_ident("an attach point (tracepoint:, kprobe: or kretprobe:)")?;
        let hint = "attach points: tracepoint:CATEGORY:NAME, kprobe:FUNCTION, kretprobe:FUNCTION, interval:s:N, interval:ms:N";
        match kind.as_str() {
            "tracepoint" | "kprobe" | "kretprobe" | "interval" => {}
            _ => return self.error(kspan, format!("unknown probe type `{kind}`"), Some(hint)),
        }
        self.expect_punct(":", Some(hint))?;
        if kind == "interval" {
            return self.interval(kspan);
        }
        let (a, aspan) = self.expect_ident("a name")?;
        let (spec, end) = match kind.as_str() {
            "tracepoint" => {
                self.expect_punct(
                    ":",
                    Some("tracepoint:CATEGORY:NAME, e.g. tracepoint:signal:signal_generate"),
                )?;
                let (n, nspan) = self.expect_ident("a tracepoint name")?;
                (
                    AttachSpec::Tracepoint {
                        category: a,
                        name: n,
                    },
                    nspan,
                )
            }
            "kprobe" => (AttachSpec::Kprobe { function: a }, aspan),
            _ => (AttachSpec::Kretprobe { function: a }, aspan),
        };
        Ok(Attach {
            spec,
            span: kspan.to(end),
        })
    }

    /// After `interval:`: `s:N` or `ms:N`.
    fn interval(&mut self, kspan: Span) -> PResult<Attach> {
        let hint = Some("interval:s:N or interval:ms:N, e.g. interval:s:1");
        let (unit, uspan) = self.expect_ident("a unit, s or ms")?;
        let per = match unit.as_str() {
            "s" => 1000,
            "ms" => 1,
            _ => return self.error(uspan, format!("unknown interval unit `{unit}`"), hint),
        };
        self.expect_punct(":", hint)?;
        let t = self.bump();
        let Tok::Int(n) = t.tok else {
            return self.error(t.span, "an interval is a whole number".into(), hint);
        };
        let ms = u64::try_from(n).ok().and_then(|n| n.checked_mul(per));
        let Some(ms) = ms else {
            return self.error(t.span, "an interval is a whole number".into(), hint);
        };
        Ok(Attach {
            spec: AttachSpec::Interval { ms },
            span: kspan.to(t.span),
        })
    }

    fn emit(&mut self, kw: Span) -> PResult<Emit> {
        self.expect_punct("{", Some("emit { name = value, ... }"))?;
        let mut fields = Vec::new();
        while !self.is_punct("}") {
            let (name, name_span) = self.expect_ident("a field name")?;
            self.expect_punct("=", Some("each field is `name = value`"))?;
            let value = self.expr()?;
            fields.push(EmitField {
                name,
                name_span,
                value,
            });
            if !self.eat_punct(",") {
                break;
            }
        }
        let end = self.expect_punct("}", Some("separate fields with `,` and close with `}`"))?;
        Ok(Emit {
            fields,
            span: kw.to(end),
        })
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let t = self.peek().span;
            self.depth -= 1;
            return self.error(
                t,
                format!("expression nested deeper than {MAX_DEPTH} levels"),
                None,
            );
        }
        let r = self.binary(0);
        self.depth -= 1;
        r
    }

    /// Precedence climbing over the levels listed in the module docs.
    fn binary(&mut self, level: usize) -> PResult<Expr> {
        const LEVELS: &[&[(&str, BinOp)]] = &[
            &[("||", BinOp::Or)],
            &[("&&", BinOp::And)],
            &[], // comparisons: handled below
            &[("|", BinOp::BitOr)],
            &[("^", BinOp::BitXor)],
            &[("&", BinOp::BitAnd)],
            &[("<<", BinOp::Shl), (">>", BinOp::Shr)],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Mod)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        if level == 2 {
            return self.comparison();
        }
        let mut lhs = self.binary(level + 1)?;
        loop {
            let op = LEVELS[level]
                .iter()
                .find(|(p, _)| self.is_punct(p) && !(self.in_predicate && *p == "/"));
            let Some(&(_, op)) = op else { return Ok(lhs) };
            self.bump();
            let rhs = self.binary(level + 1)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let lhs = self.binary(3)?;
        const CMP: &[(&str, BinOp)] = &[
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ];
        if let Some(&(_, op)) = CMP.iter().find(|(p, _)| self.is_punct(p)) {
            self.bump();
            let rhs = self.binary(3)?;
            let span = lhs.span.to(rhs.span);
            return Ok(Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            });
        }
        if self.is_ident("in") {
            self.bump();
            self.expect_punct("[", Some("`x in [a, b, c]`"))?;
            let mut items = vec![self.expr()?];
            while self.eat_punct(",") {
                if self.is_punct("]") {
                    break;
                }
                items.push(self.expr()?);
            }
            let end = self.expect_punct("]", Some("close the list with `]`"))?;
            let span = lhs.span.to(end);
            return Ok(Expr {
                kind: ExprKind::In(Box::new(lhs), items),
                span,
            });
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        let op = if self.is_punct("!") {
            Some(UnOp::Not)
        } else if self.is_punct("-") {
            Some(UnOp::Neg)
        } else {
            None
        };
        if let Some(op) = op {
            let s = self.bump().span;
            let e = self.nested_unary(s)?;
            let span = s.to(e.span);
            return Ok(Expr {
                kind: ExprKind::Unary(op, Box::new(e)),
                span,
            });
        }
        let e = self.primary()?;
        self.postfix(e)
    }

    /// The operand of a prefix operator or a cast, one level deeper (bounded, so a hostile
    /// script cannot exhaust the stack).
    fn nested_unary(&mut self, at: Span) -> PResult<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.depth -= 1;
            return self.error(
                at,
                format!("expression nested deeper than {MAX_DEPTH} levels"),
                None,
            );
        }
        let e = self.unary();
        self.depth -= 1;
        e
    }

    /// `e->name` and `e.name`, chained.
    fn postfix(&mut self, mut e: Expr) -> PResult<Expr> {
        loop {
            let arrow = if self.is_punct("->") {
                true
            } else if self.is_punct(".") {
                false
            } else {
                return Ok(e);
            };
            self.bump();
            let (name, span) = self.expect_ident(if arrow {
                "a member name after `->`"
            } else {
                "a member name after `.`"
            })?;
            let span = e.span.to(span);
            e = Expr {
                kind: ExprKind::Member {
                    base: Box::new(e),
                    name,
                    arrow,
                },
                span,
            };
        }
    }

    /// After `(`: `struct NAME *)` or `union NAME *)`, when the parenthesis is a cast.
    fn cast_type(&mut self) -> PResult<Option<CastType>> {
        let union = self.is_ident("union");
        if !union && !self.is_ident("struct") {
            return Ok(None);
        }
        let kw = self.bump().span;
        let (name, nspan) = self.expect_ident("a struct name, as in (struct task_struct *)")?;
        self.expect_punct(
            "*",
            Some("casts are to pointers: (struct task_struct *)arg0"),
        )?;
        self.expect_punct(")", Some("close the cast: (struct task_struct *)"))?;
        Ok(Some(CastType {
            union,
            name,
            span: kw.to(nspan),
        }))
    }

    /// The operand of a cast: `(struct task_struct *)arg0`.
    fn cast(&mut self, open: Span, ty: CastType) -> PResult<Expr> {
        let e = self.nested_unary(open)?;
        let span = open.to(e.span);
        Ok(Expr {
            kind: ExprKind::Cast(ty, Box::new(e)),
            span,
        })
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.bump();
        match t.tok {
            Tok::Int(v) => Ok(Expr {
                kind: ExprKind::Int(v),
                span: t.span,
            }),
            Tok::Str(s) => Ok(Expr {
                kind: ExprKind::Str(s),
                span: t.span,
            }),
            Tok::Punct("(") => {
                if let Some(ty) = self.cast_type()? {
                    return self.cast(t.span, ty);
                }
                let saved = self.in_predicate;
                self.in_predicate = false;
                let e = self.expr();
                self.in_predicate = saved;
                let mut e = e?;
                let end = self.expect_punct(")", Some("close the parenthesis"))?;
                e.span = t.span.to(end);
                Ok(e)
            }
            Tok::Ident(name) if name == "args" => {
                if !self.eat_punct("->") {
                    self.expect_punct(".", Some("probe arguments are `args.NAME`"))?;
                }
                let (field, fspan) = self.expect_ident("a field name after `args.`")?;
                Ok(Expr {
                    kind: ExprKind::Field(field),
                    span: t.span.to(fspan),
                })
            }
            Tok::Ident(name) if self.is_punct("(") => {
                self.bump();
                let mut args = Vec::new();
                if !self.is_punct(")") {
                    args.push(self.expr()?);
                    while self.eat_punct(",") {
                        args.push(self.expr()?);
                    }
                }
                let end = self.expect_punct(")", Some("close the call with `)`"))?;
                Ok(Expr {
                    kind: ExprKind::Call(name, args),
                    span: t.span.to(end),
                })
            }
            Tok::Ident(name) if name.starts_with('@') => {
                let m = self.map_ref(name, t.span)?;
                Ok(Expr {
                    span: m.span,
                    kind: ExprKind::Map(m),
                })
            }
            Tok::Ident(name) => Ok(Expr {
                kind: ExprKind::Ident(name),
                span: t.span,
            }),
            other => self.error(
                t.span,
                format!("expected a value, found {}", Self::describe(&other)),
                None,
            ),
        }
    }
}
