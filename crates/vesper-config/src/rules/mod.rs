//! Rules turn records into verdicts: "this record means resource R failed, because …".
//!
//! A rule names a probe, a condition in the probe language's predicate syntax and a cause
//! template whose `{field}` parts are filled from the record. The condition is typed
//! against the probe's record fields when the configuration loads (as far as the host
//! knows them without a guest) and again when the probe is compiled for a guest; it is
//! evaluated by the language's own semantics ([`vesper_probe::eval`]), the ones the
//! compiler folds constants with. Built-in rules cover what a VM with a `resource` needs
//! by default; `[[rule]]` sections add more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use vesper_probe::compiler::ast::{Expr, ExprKind};
use vesper_probe::eval::{EvalError, Fields, TypeError};

mod fields;
pub use fields::{error_count, error_counts, fields_of, fields_of_manifest};

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
    /// Why the probe's records, as last compiled for the guest, cannot be judged by it.
    /// Shared by the rule's clones, like `reported`: a session judges with `&self`.
    refused: Arc<Mutex<Option<RuleError>>>,
    /// An error was logged: later ones are only counted (a flood of records must not
    /// become a flood of log lines).
    reported: Arc<AtomicBool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Condition(Box<vesper_probe::Diagnostics>),
    #[error("rule {rule:?}: records of probe {probe:?} have no field {field:?}{}; they have: {}",
        .near.as_ref().map(|n| format!(" (did you mean {n:?}?)")).unwrap_or_default(), .known.join(", "))]
    UnknownField {
        rule: String,
        probe: String,
        field: String,
        /// The known field closest to it, for a typo.
        near: Option<String>,
        known: Vec<String>,
    },
    #[error("rule {rule:?} on probe {probe:?}: {source}")]
    Type {
        rule: String,
        probe: String,
        source: TypeError,
    },
}

/// Why a rule did not judge a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("refused when its probe was compiled for the guest: {0}")]
    Refused(Box<RuleError>),
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

    /// Checks the rule against its probe's record fields: every field it names exists,
    /// and the condition evaluates over their types.
    pub fn validate(&self, fields: &Fields) -> Result<(), RuleError> {
        if let Some(field) = self
            .fields_used()
            .into_iter()
            .find(|f| fields.get(f).is_none())
        {
            let known = fields.names();
            let near = vesper_probe::compiler::diag::did_you_mean(
                &field,
                known.iter().map(String::as_str),
            )
            .map(str::to_string);
            return Err(RuleError::UnknownField {
                rule: self.name.clone(),
                probe: self.probe.clone(),
                field,
                near,
                known,
            });
        }
        vesper_probe::eval::check_condition(&self.when, fields).map_err(|source| RuleError::Type {
            rule: self.name.clone(),
            probe: self.probe.clone(),
            source,
        })
    }

    pub fn new(name: &str, probe: &str, when: &str, cause: &str) -> Result<Rule, RuleError> {
        let when = vesper_probe::compiler::parse_condition(when, &format!("rule {name}"))
            .map_err(|d| RuleError::Condition(Box::new(d)))?;
        Ok(Rule {
            name: name.into(),
            probe: probe.into(),
            when,
            cause: cause.into(),
            refused: Default::default(),
            reported: Default::default(),
        })
    }

    fn refusal(&self) -> std::sync::MutexGuard<'_, Option<RuleError>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cause, if `record` (a decoded record) is of this rule's probe and matches.
    pub fn evaluate(&self, record: &Value) -> Result<Option<String>, JudgeError> {
        if record["probe"].as_str() != Some(self.probe.as_str()) {
            return Ok(None);
        }
        if let Some(r) = &*self.refusal() {
            return Err(JudgeError::Refused(Box::new(r.clone())));
        }
        let v = vesper_probe::eval::eval(&self.when, &|name| fields::lookup(record, name))?;
        Ok(vesper_probe::eval::truthy(&v)?.then(|| fill(&self.cause, record)))
    }

    /// [`Rule::evaluate`] as a session judges: a record the rule cannot judge is counted
    /// under the record's VM ([`error_count`]), and the first one logged.
    pub fn check(&self, record: &Value) -> Option<String> {
        match self.evaluate(record) {
            Ok(cause) => cause,
            Err(e) => {
                let vm = record["vm"].as_str().unwrap_or("?");
                fields::count_error(vm, &self.name);
                if !self.reported.swap(true, Ordering::Relaxed) {
                    tracing::error!(vm, rule = %self.name, probe = %self.probe, error = %e,
                        "rule cannot judge a record of its probe; it is logged once, every such record is counted in vesper_rule_errors_total");
                }
                None
            }
        }
    }

    /// Checks the rule against its probe as just compiled for `vm`'s guest (the record
    /// types the guest's kernel decided). A rule that does not fit is refused, not the
    /// probe: the probe's other rules and records stay; this one's records are counted as
    /// errors until the probe loads again.
    pub fn bind(&self, vm: &str, manifest: &vesper_probe::Manifest) {
        let checked = self.validate(&fields_of_manifest(manifest)).err();
        let mut refused = self.refusal();
        if let Some(e) = &checked
            && refused.as_ref() != Some(e)
        {
            tracing::error!(vm, rule = %self.name, probe = %self.probe, error = %e,
                "rule refused: it cannot judge its probe's records as compiled for this guest");
        }
        *refused = checked;
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

/// What a rule concluded, with the evidence, as kept in the why-log.
pub use vesper_api::Verdict;

#[cfg(test)]
mod tests;
