//! Pass 1: source text to tokens.

use crate::compiler::diag::{Diagnostic, Span};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    /// Punctuation and operators, longest match first.
    Punct(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

const PUNCT: &[&str] = &[
    "->", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "+", "-", "*", "/", "%", "&", "|", "^",
    "<", ">", "!", "=", "(", ")", "{", "}", "[", "]", ",", ":", ";", ".",
];

/// Longest string literal accepted (strings are compared against 16-byte names).
pub const MAX_STR: usize = 64;

pub fn lex(src: &str, diags: &mut Vec<Diagnostic>) -> Vec<Token> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' || (c == b'/' && b.get(i + 1) == Some(&b'/')) {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic()
            || c == b'_'
            || (c == b'$'
                && b.get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphabetic() || *n == b'_'))
            || c == b'@'
        {
            // `$name` is a local variable and `@name` (or `@` alone) a map, each lexed
            // as one identifier.
            let s = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(src[s..i].to_string()),
                span: Span::new(s, i),
            });
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let text = src[s..i].replace('_', "");
            let parsed =
                if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                    u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
                } else {
                    text.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok())
                };
            match parsed {
                Some(v) => out.push(Token {
                    tok: Tok::Int(v),
                    span: Span::new(s, i),
                }),
                None => diags.push(
                    Diagnostic::new(
                        Span::new(s, i),
                        format!("`{}` is not a valid integer", &src[s..i]),
                    )
                    .hint("integers are decimal or 0x-prefixed hex and fit in 64 bits"),
                ),
            }
        } else if c == b'"' {
            let s = i;
            i += 1;
            let mut text = Vec::new();
            let mut closed = false;
            while i < b.len() && b[i] != b'\n' {
                match b[i] {
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        text.push(match b[i + 1] {
                            b'n' => b'\n',
                            b't' => b'\t',
                            b'0' => 0,
                            other => other,
                        });
                        i += 2;
                    }
                    other => {
                        text.push(other);
                        i += 1;
                    }
                }
            }
            let span = Span::new(s, i);
            if !closed {
                diags.push(
                    Diagnostic::new(span, "unterminated string")
                        .hint("close it with `\"` on the same line"),
                );
            } else if text.len() > MAX_STR {
                diags.push(Diagnostic::new(
                    span,
                    format!("string of {} bytes is longer than {MAX_STR}", text.len()),
                ));
            } else {
                out.push(Token {
                    tok: Tok::Str(String::from_utf8_lossy(&text).into_owned()),
                    span,
                });
            }
        } else if let Some(p) = PUNCT.iter().find(|p| b[i..].starts_with(p.as_bytes())) {
            out.push(Token {
                tok: Tok::Punct(p),
                span: Span::new(i, i + p.len()),
            });
            i += p.len();
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            diags.push(Diagnostic::new(
                Span::new(i, i + ch.len_utf8()),
                format!("unexpected character `{ch}`"),
            ));
            i += ch.len_utf8();
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(b.len(), b.len()),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_with_spans() {
        let mut d = Vec::new();
        let t = lex("a.b == 0x10 # c\n\"s\\n\"", &mut d);
        assert!(d.is_empty());
        let toks: Vec<Tok> = t.into_iter().map(|t| t.tok).collect();
        assert_eq!(
            toks,
            [
                Tok::Ident("a".into()),
                Tok::Punct("."),
                Tok::Ident("b".into()),
                Tok::Punct("=="),
                Tok::Int(16),
                Tok::Str("s\n".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn bad_tokens_are_reported_and_lexing_goes_on() {
        let mut d = Vec::new();
        let t = lex("a ` 99999999999999999999 \"x", &mut d);
        assert_eq!(d.len(), 3);
        assert_eq!(t.first().map(|t| &t.tok), Some(&Tok::Ident("a".into())));
    }
}
