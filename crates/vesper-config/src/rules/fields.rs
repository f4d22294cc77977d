//! What rules read: the fields of a probe's records and their types, a decoded record's
//! values, and the count of records each rule could not judge.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;
use vesper_probe::ProbeSource;
use vesper_probe::eval::{EvalError, Fields, Type, Value as EvalValue};

/// Fields every record has.
const COMMON_FIELDS: &[(&str, Type)] = &[
    ("vm", Type::Str),
    ("probe", Type::Str),
    ("seq", Type::Int),
    ("ts_ns", Type::Int),
    ("host_ms", Type::Int),
];
/// The host's own events (pseudo-probe `vesper`).
const HOST_PROBE_FIELDS: &[(&str, Type)] = &[
    ("event", Type::Str),
    ("detail", Type::Str),
    ("by_guest", Type::Int),
];

fn with_common(own: Fields) -> Fields {
    let mut f = Fields::default();
    for (n, t) in COMMON_FIELDS {
        f.add(n, Some(*t));
    }
    for (n, t) in own.0 {
        f.add(&n, t);
    }
    f
}

/// The fields `probe`'s records carry, as far as the host knows them without a guest:
/// the host's events, a built-in probe or a script of `sources` (what the guest's kernel
/// decides left untyped), a prebuilt object of `sources` (all typed); None for a probe
/// the host does not know.
pub fn fields_of(probe: &str, sources: &[ProbeSource]) -> Option<Fields> {
    if probe == "vesper" {
        let mut own = Fields::default();
        for (n, t) in HOST_PROBE_FIELDS {
            own.add(n, Some(*t));
        }
        return Some(with_common(own));
    }
    let own = match sources.iter().find(|s| s.name() == probe) {
        Some(ProbeSource::Object { manifest, .. }) => Fields::of_manifest(manifest),
        Some(ProbeSource::Script { file, text, .. }) => Fields::of_script(text, file).ok()?,
        _ => {
            let src = vesper_probe::builtin::source(probe).ok()?;
            Fields::of_script(src, &format!("{probe}.vsp")).ok()?
        }
    };
    Some(with_common(own))
}

/// The fields of a probe compiled for a guest, every one typed.
pub fn fields_of_manifest(m: &vesper_probe::Manifest) -> Fields {
    with_common(Fields::of_manifest(m))
}

/// A decoded record's field as the language sees it. An unsigned 64-bit number above
/// `i64::MAX` is the same 64-bit word the probe computed with, as in the kernel.
pub(super) fn lookup(record: &Value, name: &str) -> Result<EvalValue, EvalError> {
    let odd = |found| EvalError::FieldValue {
        field: name.to_string(),
        found,
    };
    match record.get(name) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .map(EvalValue::Int)
            .ok_or_else(|| odd("a fraction")),
        Some(Value::String(s)) => Ok(EvalValue::Str(s.clone())),
        Some(Value::Bool(b)) => Ok(EvalValue::Int(i64::from(*b))),
        Some(Value::Array(_)) => Err(odd("a list")),
        Some(Value::Object(_)) => Err(odd("an object")),
        None | Some(Value::Null) => Err(EvalError::MissingField {
            field: name.to_string(),
        }),
    }
}

/// (vm, rule) → records the rule could not judge. Kept here, not in a session, so the
/// count never goes back when a reload restarts a VM's session; read at each scrape.
static ERRORS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

fn errors() -> std::sync::MutexGuard<'static, BTreeMap<(String, String), u64>> {
    ERRORS.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn count_error(vm: &str, rule: &str) {
    *errors()
        .entry((vm.to_string(), rule.to_string()))
        .or_default() += 1;
}

/// Records rule `rule` of VM `vm` could not judge.
pub fn error_count(vm: &str, rule: &str) -> u64 {
    errors()
        .get(&(vm.to_string(), rule.to_string()))
        .copied()
        .unwrap_or(0)
}

/// Every (vm, rule) with records it could not judge, and how many.
pub fn error_counts() -> Vec<((String, String), u64)> {
    errors().iter().map(|(k, n)| (k.clone(), *n)).collect()
}
