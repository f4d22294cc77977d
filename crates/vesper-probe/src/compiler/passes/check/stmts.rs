//! Statements: variables, maps, `if`, and the records a probe emits.

use super::{Checked, Checker, Ctx, MAX_LOCALS, decay};
use crate::compiler::ast::*;
use crate::compiler::diag::Span;
use crate::compiler::typed::*;
use crate::manifest::{self, KeyPart, MapSpec, MapValue};

/// Entries a map holds; a store of a new key into a full map is dropped and counted
/// (bpftrace's default bound too).
pub const MAP_ENTRIES: u32 = 4096;
/// Most maps in one script, and most parts in one key.
pub const MAX_MAPS: usize = 32;
pub const MAX_KEY_PARTS: usize = 8;
/// The shortest and longest interval of an `interval` probe.
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Most buckets of one lhist().
pub const MAX_LHIST_BUCKETS: i64 = 1000;

/// A map as the checker knows it: its spec, where it first appeared, where it was
/// written and read (an aggregation may not be read in a probe).
pub struct ScriptMap {
    pub spec: MapSpec,
    first: Span,
    written: Option<Span>,
    reads: Vec<Span>,
    deletes: Vec<Span>,
}

/// How a statement or expression uses a map.
#[derive(Clone, Copy)]
enum Use {
    Read,
    Write(MapValue),
    Delete,
}

/// Whether a body has an effect: a record, or a map store or delete.
pub fn does_something(stmts: &[Stmt]) -> bool {
    stmts.iter().any(|s| match s {
        Stmt::Let(_) => false,
        Stmt::If { then, els, .. } => does_something(then) || does_something(els),
        Stmt::MapAssign { .. } | Stmt::Delete(_) | Stmt::Emit(_) => true,
        Stmt::Print(_) | Stmt::Clear(_) => true,
    })
}

fn key_text(parts: &[KeyPart]) -> String {
    let names: Vec<&str> = parts
        .iter()
        .map(|p| match p {
            KeyPart::Int => "integer",
            KeyPart::Str { .. } => "string",
        })
        .collect();
    if names.is_empty() {
        "no key".into()
    } else {
        format!("key [{}]", names.join(", "))
    }
}

/// The aggregation a function name stands for (bpftrace's names).
fn aggregation(name: &str) -> Option<MapValue> {
    Some(match name {
        "count" => MapValue::Count,
        "sum" => MapValue::Sum,
        "min" => MapValue::Min,
        "max" => MapValue::Max,
        "avg" => MapValue::Avg,
        "hist" => MapValue::Hist,
        "lhist" => MapValue::Lhist {
            min: 0,
            max: 0,
            step: 0,
        },
        _ => return None,
    })
}

impl<'a> Checker<'a> {
    pub(super) fn stmts(&mut self, stmts: &[Stmt], ctx: &Ctx) -> Option<Vec<TStmt>> {
        let mut out = Vec::new();
        let mut ok = true;
        for s in stmts {
            match self.stmt(s, ctx) {
                Some(t) => out.extend([TStmt::Line(s.span()), t]),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn stmt(&mut self, s: &Stmt, ctx: &Ctx) -> Option<TStmt> {
        match s {
            Stmt::Let(l) => self.let_stmt(l, ctx),
            Stmt::MapAssign { map, value } => {
                if let ExprKind::Call(name, args) = &value.kind
                    && let Some(kind) = aggregation(name)
                {
                    let agg = self.aggregation(kind, args, value.span, ctx);
                    let (v, arg) = agg?;
                    let (m, key) = self.map_key(map, ctx, Use::Write(v))?;
                    return Some(TStmt::Aggregate { map: m, key, arg });
                }
                let v = self.map_value(value, ctx);
                let (m, key) = self.map_key(map, ctx, Use::Write(MapValue::Int))?;
                Some(TStmt::MapUpdate {
                    map: m,
                    key,
                    value: v?,
                })
            }
            Stmt::Delete(map) => {
                let (m, key) = self.map_key(map, ctx, Use::Delete)?;
                Some(TStmt::MapDelete { map: m, key })
            }
            Stmt::If { cond, then, els } => {
                let c = self.condition(cond, ctx);
                let t = self.stmts(then, ctx);
                let e = self.stmts(els, ctx);
                Some(TStmt::If {
                    cond: c?,
                    then: t?,
                    els: e?,
                })
            }
            Stmt::Emit(e) => self.emit(e, ctx).map(TStmt::Emit),
            Stmt::Print(m) | Stmt::Clear(m) => {
                let word = if matches!(s, Stmt::Print(_)) {
                    "print"
                } else {
                    "clear"
                };
                self.err(
                    m.span,
                    format!("{word}() runs on the host, in an interval probe"),
                )
                .hints
                .push(format!("interval:s:1 {{ {word}({}); }}", m.name));
                None
            }
        }
    }

    /// An `interval:s:N` probe: what the host does every N.
    pub(super) fn interval(&mut self, probe: &Probe) -> Option<manifest::IntervalSpec> {
        let [attach] = probe.attach.as_slice() else {
            self.err(
                probe.span,
                "an interval probe has one attach point, and no other".into(),
            );
            return None;
        };
        let AttachSpec::Interval { ms } = attach.spec else {
            self.err(
                attach.span,
                "an interval probe has one attach point, and no other".into(),
            );
            return None;
        };
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
            self.err(
                attach.span,
                format!("an interval is from {MIN_INTERVAL_MS} ms to a day"),
            )
            .hints
            .push(
                "interval:ms:100 at the shortest: the host reads the guest's maps each time".into(),
            );
            return None;
        }
        if let Some(p) = &probe.predicate {
            self.err(
                p.span,
                "an interval probe has no predicate: it runs on the host".into(),
            );
            return None;
        }
        let mut spec = manifest::IntervalSpec {
            every_ms: ms,
            print: Vec::new(),
            clear: Vec::new(),
        };
        let mut ok = true;
        for s in &probe.body {
            let (m, list) = match s {
                Stmt::Print(m) => (m, &mut spec.print),
                Stmt::Clear(m) => (m, &mut spec.clear),
                _ => {
                    self.err(
                        probe.span,
                        "an interval probe runs on the host: it can only print() and clear() maps"
                            .into(),
                    )
                    .hints
                    .push("interval:s:1 { print(@usecs); clear(@usecs); }".into());
                    return None;
                }
            };
            if !m.keys.is_empty() {
                self.err(
                    m.span,
                    "print() and clear() take a whole map: no key".into(),
                );
                ok = false;
                continue;
            }
            match self.maps.iter().find(|x| x.spec.name == m.name) {
                Some(x) => {
                    if !list.contains(&x.spec.symbol) {
                        list.push(x.spec.symbol.clone());
                    }
                }
                None => {
                    let names: Vec<String> =
                        self.maps.iter().map(|x| x.spec.name.clone()).collect();
                    let d = self.err(m.span, format!("the script has no map {}", m.name));
                    if let Some(near) = crate::compiler::diag::did_you_mean(
                        &m.name,
                        names.iter().map(|n| n.as_str()),
                    ) {
                        d.hints.push(format!("did you mean `{near}`?"));
                    }
                    ok = false;
                }
            }
        }
        ok.then_some(spec)
    }

    /// `$name = value;`: one stack slot per name, whatever the branch it is assigned in.
    fn let_stmt(&mut self, l: &Let, ctx: &Ctx) -> Option<TStmt> {
        let (value, pointee) = match self.value(&l.value, ctx)? {
            Checked::Int(e) => (e, None),
            Checked::Ptr(e, ty) => (e, Some(ty)),
            _ => {
                self.err(l.value.span, format!("{} would hold a string, which variables cannot yet", l.name))
                    .hints
                    .push("use the string where it is emitted or compared: emit { path = str(args.filename) }".into());
                return None;
            }
        };
        if let Some(slot) = self.locals.iter().position(|(n, _)| *n == l.name) {
            if self.locals[slot].1 != pointee {
                let kind = |p: Option<_>| {
                    if p.is_some() {
                        "a pointer"
                    } else {
                        "an integer"
                    }
                };
                let (was, now) = (kind(self.locals[slot].1), kind(pointee));
                let what = if was == now {
                    "a pointer to another type"
                } else {
                    now
                };
                self.err(
                    l.name_span,
                    format!("{} holds {was}, and is assigned {what} here", l.name),
                )
                .hints
                .push("a variable keeps one type: use another name".into());
                return None;
            }
            return Some(TStmt::Let {
                slot: slot as u32,
                value,
            });
        }
        if self.locals.len() == MAX_LOCALS {
            self.err(
                l.name_span,
                format!("more than {MAX_LOCALS} variables in one probe"),
            )
            .hints
            .push("reuse a variable, or compute the value where it is emitted".into());
            return None;
        }
        self.locals.push((l.name.clone(), pointee));
        Some(TStmt::Let {
            slot: self.locals.len() as u32 - 1,
            value,
        })
    }

    /// The arguments of an aggregation: what its map holds, and the value it takes in.
    fn aggregation(
        &mut self,
        kind: MapValue,
        args: &[Expr],
        span: Span,
        ctx: &Ctx,
    ) -> Option<(MapValue, Option<TExpr>)> {
        let name = kind.function();
        match (kind, args) {
            (MapValue::Count, []) => Some((kind, None)),
            (MapValue::Count, _) => {
                self.err(span, "count() takes no argument".into())
                    .hints
                    .push("@n[comm] = count();".into());
                None
            }
            (MapValue::Lhist { .. }, [x, lo, hi, step]) => {
                // Constant bounds: `-10`, `60 * 1000`.
                let lit = crate::eval::constant;
                let x = self.int(x, ctx, "lhist()");
                match (lit(lo), lit(hi), lit(step)) {
                    (Some(min), Some(max), Some(step))
                        if step > 0
                            && max > min
                            && max
                                .checked_sub(min)
                                .is_some_and(|d| (d - 1) / step < MAX_LHIST_BUCKETS) =>
                    {
                        Some((MapValue::Lhist { min, max, step }, Some(x?)))
                    }
                    _ => {
                        self.err(span, format!("lhist(value, min, max, step) takes constant bounds with min < max, a step above 0, and at most {MAX_LHIST_BUCKETS} buckets"))
                            .hints
                            .push("@ms = lhist($ms, 0, 1000, 10);".into());
                        None
                    }
                }
            }
            (MapValue::Lhist { .. }, _) => {
                self.err(
                    span,
                    "lhist() takes four arguments: lhist(value, min, max, step)".into(),
                );
                None
            }
            (_, [x]) => {
                let x = self.int(x, ctx, &format!("{name}()"))?;
                Some((kind, Some(x)))
            }
            _ => {
                self.err(
                    span,
                    format!("{name}() takes one argument: @m[key] = {name}(value)"),
                );
                None
            }
        }
    }

    /// A value stored into a map: an integer.
    fn map_value(&mut self, e: &Expr, ctx: &Ctx) -> Option<TExpr> {
        match decay(self.value(e, ctx)?) {
            Checked::Int(t) => Some(t),
            _ => {
                self.err(e.span, "map values are integers; this is a string".into())
                    .hints
                    .push("use the string as the key instead: @seen[comm] = 1;".into());
                None
            }
        }
    }

    /// `@m[k]` in an expression: the stored value, 0 if none.
    pub(super) fn map_read(&mut self, m: &MapRef, ctx: &Ctx) -> Option<Checked> {
        let (map, key) = self.map_key(m, ctx, Use::Read)?;
        Some(Checked::Int(TExpr::MapRead { map, key }))
    }

    /// The map `m` names (declared here if new) and its key, checked against the map's
    /// earlier uses.
    fn map_key(&mut self, m: &MapRef, ctx: &Ctx, how: Use) -> Option<(u32, Vec<TKey>)> {
        if m.keys.len() > MAX_KEY_PARTS {
            self.err(m.span, format!("a key has at most {MAX_KEY_PARTS} parts"));
            return None;
        }
        let mut key = Vec::new();
        let mut parts = Vec::new();
        let mut ok = true;
        for k in &m.keys {
            match self.value(k, ctx).map(decay) {
                Some(Checked::Int(t)) => {
                    key.push(TKey::Int(t));
                    parts.push(KeyPart::Int);
                }
                Some(Checked::Str(s)) => {
                    parts.push(KeyPart::Str { len: s.capacity() });
                    key.push(TKey::Str(s));
                }
                Some(_) => {
                    self.err(
                        k.span,
                        "a key part is an integer or a string the kernel holds".into(),
                    )
                    .hints
                    .push("for a constant, use a keyless map: @total = ...".into());
                    ok = false;
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let Some(i) = self.maps.iter().position(|x| x.spec.name == m.name) else {
            if self.maps.len() == MAX_MAPS {
                self.err(m.span, format!("more than {MAX_MAPS} maps in one script"));
                return None;
            }
            self.maps.push(ScriptMap {
                spec: MapSpec {
                    name: m.name.clone(),
                    symbol: format!("map_{}", self.maps.len()),
                    key: parts,
                    value: MapValue::Int,
                    max_entries: MAP_ENTRIES,
                },
                first: m.span,
                written: None,
                reads: Vec::new(),
                deletes: Vec::new(),
            });
            let i = self.maps.len() - 1;
            self.map_use(i, how, m.span)?;
            return Some((i as u32, key));
        };
        let had = &self.maps[i].spec.key;
        let same = had.len() == parts.len()
            && had.iter().zip(&parts).all(|(a, b)| {
                matches!(
                    (a, b),
                    (KeyPart::Int, KeyPart::Int) | (KeyPart::Str { .. }, KeyPart::Str { .. })
                )
            });
        if !same {
            let (was, now) = (key_text(had), key_text(&parts));
            self.err(
                m.span,
                format!(
                    "{} is used with {now} here, but with {was} where it first appears",
                    m.name
                ),
            )
            .hints
            .push("a map has one key type: give the other use its own map".into());
            return None;
        }
        // Strings of different capacities share a key part of the largest.
        for (a, b) in self.maps[i].spec.key.iter_mut().zip(&parts) {
            if let (KeyPart::Str { len: a }, KeyPart::Str { len: b }) = (a, b) {
                *a = (*a).max(*b);
            }
        }
        self.map_use(i, how, m.span)?;
        Some((i as u32, key))
    }

    /// Notes a use of map `i`; a write must agree with the map's earlier writes.
    fn map_use(&mut self, i: usize, how: Use, span: Span) -> Option<()> {
        let m = &mut self.maps[i];
        match how {
            Use::Read => m.reads.push(span),
            Use::Delete => m.deletes.push(span),
            Use::Write(v) if m.written.is_none() => {
                m.spec.value = v;
                m.written = Some(span);
            }
            Use::Write(v) if m.spec.value != v => {
                let (was, now) = (m.spec.value.function(), v.function());
                let name = m.spec.name.clone();
                let what = |f: &str| {
                    if f == "value" {
                        "an integer".to_string()
                    } else {
                        format!("a {f}()")
                    }
                };
                self.err(
                    span,
                    format!(
                        "{name} is {} here, but {} where it was first assigned",
                        what(now),
                        what(was)
                    ),
                )
                .hints
                .push("a map holds one kind of value: give the other its own map".into());
                return None;
            }
            Use::Write(_) => {}
        }
        Some(())
    }

    /// Mistakes only the whole script shows: a map never assigned (a typo of another's
    /// name), an aggregation read in a probe (its values are per CPU: the host reads
    /// them), a histogram's entry deleted (its key has a bucket).
    pub(super) fn finish_maps(&mut self) {
        let written: Vec<String> = (self.maps.iter())
            .filter(|m| m.written.is_some())
            .map(|m| m.spec.name.clone())
            .collect();
        let mut found: Vec<(Span, String, Vec<String>)> = Vec::new();
        for m in &self.maps {
            let name = &m.spec.name;
            if m.written.is_none() {
                let mut hints = Vec::new();
                let near =
                    crate::compiler::diag::did_you_mean(name, written.iter().map(|n| n.as_str()));
                if let Some(s) = near {
                    hints.push(format!("did you mean `{s}`?"));
                }
                hints.push(format!("store into it somewhere: {name}[tid] = nsecs;"));
                found.push((
                    m.first,
                    format!("{name} is never assigned, so it is always 0"),
                    hints,
                ));
                continue;
            }
            let f = m.spec.value.function();
            if m.spec.value.is_aggregation() {
                for r in &m.reads {
                    found.push((*r, format!("{name} is a {f}(), kept per CPU in the kernel: a probe cannot read it"), vec![
                        "read it on the host: vesper maps VM PROBE, or print it from an interval probe: interval:s:1 { print(@m); }".into(),
                        "to use a value in the probe, keep it in a map of its own: @last[tid] = value;".into(),
                    ]));
                }
            }
            if m.spec.value.bucketed() {
                for d in &m.deletes {
                    found.push((*d, format!("an entry of the {f}() {name} cannot be deleted alone"), vec![
                        format!("empty the whole map from an interval probe: interval:s:1 {{ print({name}); clear({name}); }}"),
                    ]));
                }
            }
        }
        for (span, msg, hints) in found {
            self.err(span, msg).hints.extend(hints);
        }
    }
}
