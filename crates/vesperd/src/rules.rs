//! Rules turn records into verdicts: "this record means resource R failed, because …".
//!
//! A rule names a probe, a condition in the probe language's predicate syntax (evaluated
//! here, on the host, against the decoded record's fields) and a cause template whose
//! `{field}` parts are filled from the record. Built-in rules cover what a VM with a
//! `resource` needs by default; `[[rule]]` sections add more.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vesper_probe::compiler::ast::{BinOp, Expr, ExprKind, UnOp};

/// Signals whose default action ends a process (SIGPIPE and SIGALRM left out: they are
/// routine for servers that handle them).
pub const FATAL_SIGNALS: &[i64] = &[1, 2, 3, 4, 6, 7, 8, 9, 11, 15];

/// `si_code` of a signal the kernel sends on its own behalf.
const SI_KERNEL: i64 = 0x80;

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// The probe whose records it reads (`vesper` for the host's own events).
    pub probe: String,
    pub when: Expr,
    pub cause: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Condition(Box<vesper_probe::Diagnostics>),
}

/// Fields every record has.
const COMMON_FIELDS: &[&str] = &["vm", "probe", "seq", "ts_ns", "host_ms"];
/// The host's own events (pseudo-probe `vesper`).
pub const HOST_PROBE_FIELDS: &[&str] = &["event", "detail", "by_guest"];

/// The fields a probe's records carry, when the host knows them without a guest (the
/// built-in probes and the host's own events); None for a probe from a file.
pub fn known_fields(probe: &str) -> Option<Vec<String>> {
    let mut f: Vec<String> = COMMON_FIELDS.iter().map(|s| s.to_string()).collect();
    if probe == "vesper" {
        f.extend(HOST_PROBE_FIELDS.iter().map(|s| s.to_string()));
        return Some(f);
    }
    let src = vesper_probe::builtin::source(probe).ok()?;
    f.extend(vesper_probe::compiler::record_fields(src, probe).ok()?);
    Some(f)
}

impl Rule {
    /// The record fields the condition and the cause refer to.
    pub fn fields_used(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match &e.kind {
                ExprKind::Ident(n) | ExprKind::Field(n) => out.push(n.clone()),
                ExprKind::Unary(_, x) => walk(x, out),
                ExprKind::Binary(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                ExprKind::In(x, items) => {
                    walk(x, out);
                    items.iter().for_each(|i| walk(i, out));
                }
                ExprKind::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
                ExprKind::Cast(_, x) => walk(x, out),
                ExprKind::Member { base, .. } => walk(base, out),
                ExprKind::Int(_) | ExprKind::Str(_) | ExprKind::Map(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.when, &mut out);
        let mut rest = self.cause.as_str();
        while let Some(i) = rest.find('{') {
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('{') {
                rest = stripped;
                continue;
            }
            let Some(j) = after.find('}') else { break };
            out.push(after[..j].to_string());
            rest = &after[j + 1..];
        }
        out.sort();
        out.dedup();
        out
    }

    /// A field the rule uses that `probe`'s records never carry, with the fields they do.
    pub fn unknown_field(&self) -> Option<(String, Vec<String>)> {
        let known = known_fields(&self.probe)?;
        self.fields_used()
            .into_iter()
            .find(|f| !known.contains(f))
            .map(|f| (f, known))
    }

    pub fn new(name: &str, probe: &str, when: &str, cause: &str) -> Result<Rule, RuleError> {
        let when = vesper_probe::compiler::parse_condition(when, &format!("rule {name}"))
            .map_err(|d| RuleError::Condition(Box::new(d)))?;
        Ok(Rule {
            name: name.into(),
            probe: probe.into(),
            when,
            cause: cause.into(),
        })
    }

    /// The cause, if `record` (a decoded record of this rule's probe) matches.
    pub fn check(&self, record: &Value) -> Option<String> {
        if record["probe"].as_str() != Some(self.probe.as_str()) {
            return None;
        }
        match eval(&self.when, record) {
            Ok(v) if v.truthy() => Some(fill(&self.cause, record)),
            _ => None,
        }
    }
}

/// The default rules for a VM backing a resource, watching `services` by task name.
pub fn builtin(services: &[String]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let quoted: Vec<String> = services.iter().map(|s| format!("{s:?}")).collect();
    let any_of = |field: &str| {
        quoted
            .iter()
            .map(|q| format!("{field} == {q}"))
            .collect::<Vec<_>>()
            .join(" || ")
    };
    let fatal: Vec<String> = FATAL_SIGNALS.iter().map(i64::to_string).collect();
    if !services.is_empty() {
        rules.push(Rule::new(
            "service-killed",
            "signal",
            // A SIGKILL the kernel sends itself (SI_KERNEL) is the OOM killer's: left to the
            // OOM rule, which can say more.
            &format!(
                "sig in [{}] && result == 0 && !(sig == 9 && code == {SI_KERNEL}) && ({})",
                fatal.join(", "),
                any_of("target_comm")
            ),
            "{target_comm} (pid {target_pid}) killed by {sig_name} from {sender_comm} (pid {sender_pid}, uid {sender_uid})",
        ));
        rules.push(Rule::new(
            "service-oom",
            "oom",
            &any_of("victim_comm"),
            "OOM killer took {victim_comm} (pid {victim_pid}, anon-rss {anon_rss_kb} kB, total-vm {total_vm_kb} kB)",
        ));
    }
    rules.push(Rule::new(
        "agent-silent",
        "vesper",
        "event == \"agent_unresponsive\"",
        "agent in {vm} silent: {detail}",
    ));
    rules.push(Rule::new(
        "guest-panic",
        "vesper",
        "event == \"guest_panicked\"",
        "guest kernel of {vm} panicked",
    ));
    rules.push(Rule::new(
        "guest-shutdown",
        "vesper",
        "event == \"guest_shutdown\" && by_guest == 1",
        "guest {vm} shut itself down: {detail}",
    ));
    // The texts above are fixed and parse; a failure here is a bug caught by the tests.
    rules.into_iter().flatten().collect()
}

/// `{name}` replaced by the record's field (strings without quotes); `{{` and `}}` are braces.
pub fn fill(template: &str, record: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i].replace("}}", "}"));
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('{') {
            out.push('{');
            rest = stripped;
            continue;
        }
        match after.find('}') {
            Some(j) => {
                let key = &after[..j];
                match &record[key] {
                    Value::String(s) => {
                        out.extend(s.chars().map(|c| if c.is_control() { '?' } else { c }))
                    }
                    Value::Null => out.push('?'),
                    v => out.push_str(&v.to_string()),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(&rest.replace("}}", "}"));
    out
}

#[derive(Debug, Clone, PartialEq)]
enum HVal {
    Int(i64),
    Str(String),
}

impl HVal {
    fn truthy(&self) -> bool {
        match self {
            HVal::Int(i) => *i != 0,
            HVal::Str(s) => !s.is_empty(),
        }
    }
}

/// Evaluates a condition against a record; names (and `args.NAME`) are its fields.
fn eval(e: &Expr, r: &Value) -> Result<HVal, String> {
    Ok(match &e.kind {
        ExprKind::Int(i) => HVal::Int(*i),
        ExprKind::Str(s) => HVal::Str(s.clone()),
        ExprKind::Ident(name) | ExprKind::Field(name) => match &r[name.as_str()] {
            Value::Number(n) => HVal::Int(
                n.as_i64()
                    .or_else(|| n.as_u64().map(|u| u as i64))
                    .unwrap_or(0),
            ),
            Value::String(s) => HVal::Str(s.clone()),
            Value::Bool(b) => HVal::Int(i64::from(*b)),
            _ => return Err(format!("the record has no field {name}")),
        },
        ExprKind::Unary(UnOp::Not, x) => HVal::Int(i64::from(!eval(x, r)?.truthy())),
        ExprKind::Unary(UnOp::Neg, x) => match eval(x, r)? {
            HVal::Int(i) => HVal::Int(i.wrapping_neg()),
            HVal::Str(_) => return Err("cannot negate a string".into()),
        },
        ExprKind::Binary(BinOp::And, a, b) => {
            HVal::Int(i64::from(eval(a, r)?.truthy() && eval(b, r)?.truthy()))
        }
        ExprKind::Binary(BinOp::Or, a, b) => {
            HVal::Int(i64::from(eval(a, r)?.truthy() || eval(b, r)?.truthy()))
        }
        ExprKind::Binary(op, a, b) => {
            let (a, b) = (eval(a, r)?, eval(b, r)?);
            match (a, b) {
                (HVal::Int(a), HVal::Int(b)) => HVal::Int(match op {
                    BinOp::Add => a.wrapping_add(b),
                    BinOp::Sub => a.wrapping_sub(b),
                    BinOp::Mul => a.wrapping_mul(b),
                    BinOp::Div => a.checked_div(b).unwrap_or(0),
                    BinOp::Mod => a.checked_rem(b).unwrap_or(0),
                    BinOp::BitAnd => a & b,
                    BinOp::BitOr => a | b,
                    BinOp::BitXor => a ^ b,
                    BinOp::Shl => a.wrapping_shl(b as u32),
                    BinOp::Shr => a.wrapping_shr(b as u32),
                    BinOp::Eq => i64::from(a == b),
                    BinOp::Ne => i64::from(a != b),
                    BinOp::Lt => i64::from(a < b),
                    BinOp::Le => i64::from(a <= b),
                    BinOp::Gt => i64::from(a > b),
                    BinOp::Ge => i64::from(a >= b),
                    BinOp::And | BinOp::Or => 0,
                }),
                (HVal::Str(a), HVal::Str(b)) => match op {
                    BinOp::Eq => HVal::Int(i64::from(a == b)),
                    BinOp::Ne => HVal::Int(i64::from(a != b)),
                    _ => return Err(format!("`{}` does not apply to strings", op.symbol())),
                },
                _ => return Err(format!("`{}` mixes a string and an integer", op.symbol())),
            }
        }
        ExprKind::In(x, items) => {
            let x = eval(x, r)?;
            let mut found = false;
            for i in items {
                found |= eval(i, r)? == x;
            }
            HVal::Int(i64::from(found))
        }
        ExprKind::Call(f, args) if f == "starts_with" && args.len() == 2 => {
            match (eval(&args[0], r)?, eval(&args[1], r)?) {
                (HVal::Str(s), HVal::Str(p)) => HVal::Int(i64::from(s.starts_with(&p))),
                _ => return Err("starts_with takes two strings".into()),
            }
        }
        ExprKind::Call(f, _) => return Err(format!("unknown function {f}")),
        ExprKind::Cast(..) | ExprKind::Member { .. } => {
            return Err(
                "casts and members read kernel memory, which a rule cannot: emit the member as a field of the probe and test that field".into(),
            );
        }
        ExprKind::Map(_) => {
            return Err(
                "maps live in the guest's kernel, which a rule cannot read: emit the map's value as a field of the probe and test that field".into(),
            );
        }
    })
}

/// What a rule concluded, with the evidence, as kept in the why-log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub id: u64,
    pub vm: String,
    pub resource: Option<String>,
    pub rule: String,
    pub cause: String,
    pub time_ms: u64,
    /// The agent connection it was judged on: a verdict after the agent reconnected (the
    /// guest came back) is a new fault, never debounced into the old one.
    pub connection: u64,
    /// The records that led to it (first evidence first).
    pub evidence: Vec<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sigterm(comm: &str, result: i64) -> Value {
        json!({"vm":"web1","probe":"signal","seq":3,"sig":15,"sig_name":"SIGTERM","sender_pid":301,"sender_uid":0,
               "sender_comm":"pkill","target_pid":212,"target_comm":comm,"result":result,"code":0})
    }

    #[test]
    fn the_oom_killers_sigkill_is_left_to_the_oom_rule() {
        let rules = builtin(&["httpd".into()]);
        let mut kill = sigterm("httpd", 0);
        kill["sig"] = json!(9);
        kill["sig_name"] = json!("SIGKILL");
        assert!(
            rules.iter().any(|r| r.check(&kill).is_some()),
            "kill -9 from a user"
        );
        kill["code"] = json!(0x80);
        assert!(
            rules.iter().all(|r| r.check(&kill).is_none()),
            "SIGKILL from the kernel"
        );
    }

    #[test]
    fn builtin_rules_parse_and_explain_a_killed_service() {
        let rules = builtin(&["httpd".into(), "nginx".into()]);
        assert_eq!(rules.len(), 5, "every built-in rule parses");
        let cause = rules.iter().find_map(|r| r.check(&sigterm("httpd", 0)));
        assert_eq!(
            cause.as_deref(),
            Some("httpd (pid 212) killed by SIGTERM from pkill (pid 301, uid 0)")
        );
        assert!(
            rules.iter().all(|r| r.check(&sigterm("bash", 0)).is_none()),
            "unwatched task"
        );
        assert!(
            rules
                .iter()
                .all(|r| r.check(&sigterm("httpd", 1)).is_none()),
            "ignored signal"
        );
    }

    #[test]
    fn oom_and_host_events() {
        let rules = builtin(&["postgres".into()]);
        let oom = json!({"vm":"db2","probe":"oom","victim_comm":"postgres","victim_pid":77,"anon_rss_kb":1024,"total_vm_kb":4096});
        assert_eq!(
            rules.iter().find_map(|r| r.check(&oom)).as_deref(),
            Some("OOM killer took postgres (pid 77, anon-rss 1024 kB, total-vm 4096 kB)")
        );
        let panic =
            json!({"vm":"db2","probe":"vesper","event":"guest_panicked","detail":"","by_guest":1});
        assert_eq!(
            rules.iter().find_map(|r| r.check(&panic)).as_deref(),
            Some("guest kernel of db2 panicked")
        );
        let host_stop = json!({"vm":"db2","probe":"vesper","event":"guest_shutdown","detail":"host-qmp-quit","by_guest":0});
        assert!(
            rules.iter().all(|r| r.check(&host_stop).is_none()),
            "a shutdown the host asked for is no failure"
        );
    }

    #[test]
    fn fields_are_checked_against_the_probes_schema() {
        let ok = Rule::new(
            "a",
            "signal",
            "target_comm == \"x\" && sig == 9",
            "{sig_name} {vm}",
        )
        .unwrap();
        assert_eq!(ok.unknown_field(), None);
        let typo = Rule::new("b", "signal", "target_com == \"x\"", "{sig_name}").unwrap();
        let (f, known) = typo.unknown_field().unwrap();
        assert_eq!(f, "target_com");
        assert!(known.contains(&"target_comm".to_string()));
        let bad_cause =
            Rule::new("c", "vesper", "event == \"guest_panicked\"", "{detial}").unwrap();
        assert_eq!(bad_cause.unknown_field().unwrap().0, "detial");
        for r in builtin(&["httpd".into()]) {
            assert_eq!(r.unknown_field(), None, "built-in rule {}", r.name);
        }
    }

    #[test]
    fn custom_conditions_and_templates() {
        let r = Rule::new(
            "big",
            "oom",
            "anon_rss_kb > 1000 && starts_with(victim_comm, \"java\")",
            "{victim_comm} {{big}}",
        )
        .unwrap();
        assert_eq!(
            r.check(&json!({"probe":"oom","anon_rss_kb":2000,"victim_comm":"java-app"}))
                .as_deref(),
            Some("java-app {big}")
        );
        assert!(
            r.check(&json!({"probe":"oom","anon_rss_kb":20,"victim_comm":"java-app"}))
                .is_none()
        );
        assert!(
            r.check(&json!({"probe":"oom"})).is_none(),
            "missing fields never match"
        );
        assert!(Rule::new("bad", "oom", "anon_rss_kb >", "x").is_err());
    }
}
