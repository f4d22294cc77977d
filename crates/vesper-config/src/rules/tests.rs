use super::*;
use serde_json::json;

/// The cause a rule gives, a rule that cannot judge the record failing the test.
trait Cause {
    fn cause(&self, record: &Value) -> Option<String>;
}

impl Cause for Rule {
    fn cause(&self, record: &Value) -> Option<String> {
        self.evaluate(record)
            .unwrap_or_else(|e| panic!("rule {}: {e}", self.name))
    }
}

fn signal_fields() -> Fields {
    fields_of("signal", &[]).unwrap()
}

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
        rules.iter().any(|r| r.cause(&kill).is_some()),
        "kill -9 from a user"
    );
    kill["code"] = json!(0x80);
    assert!(
        rules.iter().all(|r| r.cause(&kill).is_none()),
        "SIGKILL from the kernel"
    );
}

#[test]
fn builtin_rules_parse_and_explain_a_killed_service() {
    let rules = builtin(&["httpd".into(), "nginx".into()]);
    assert_eq!(rules.len(), 5, "every built-in rule parses");
    let cause = rules.iter().find_map(|r| r.cause(&sigterm("httpd", 0)));
    assert_eq!(
        cause.as_deref(),
        Some("httpd (pid 212) killed by SIGTERM from pkill (pid 301, uid 0)")
    );
    assert!(
        rules.iter().all(|r| r.cause(&sigterm("bash", 0)).is_none()),
        "unwatched task"
    );
    assert!(
        rules
            .iter()
            .all(|r| r.cause(&sigterm("httpd", 1)).is_none()),
        "ignored signal"
    );
}

#[test]
fn oom_and_host_events() {
    let rules = builtin(&["postgres".into()]);
    let oom = json!({"vm":"db2","probe":"oom","victim_comm":"postgres","victim_pid":77,"anon_rss_kb":1024,"total_vm_kb":4096});
    assert_eq!(
        rules.iter().find_map(|r| r.cause(&oom)).as_deref(),
        Some("OOM killer took postgres (pid 77, anon-rss 1024 kB, total-vm 4096 kB)")
    );
    let panic =
        json!({"vm":"db2","probe":"vesper","event":"guest_panicked","detail":"","by_guest":1});
    assert_eq!(
        rules.iter().find_map(|r| r.cause(&panic)).as_deref(),
        Some("guest kernel of db2 panicked")
    );
    let host_stop = json!({"vm":"db2","probe":"vesper","event":"guest_shutdown","detail":"host-qmp-quit","by_guest":0});
    assert!(
        rules.iter().all(|r| r.cause(&host_stop).is_none()),
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
    assert_eq!(ok.validate(&signal_fields()), Ok(()));
    let typo = Rule::new("b", "signal", "target_com == \"x\"", "{sig_name}").unwrap();
    let Err(RuleError::UnknownField { field, known, .. }) = typo.validate(&signal_fields()) else {
        panic!("target_com is no field");
    };
    assert_eq!(field, "target_com");
    assert_eq!(
        typo.validate(&signal_fields()).unwrap_err().to_string(),
        format!(
            "rule \"b\": records of probe \"signal\" have no field \"target_com\" (did you mean \"target_comm\"?); they have: {}",
            known.join(", ")
        )
    );
    assert!(known.contains(&"target_comm".to_string()));
    let bad_cause = Rule::new("c", "vesper", "event == \"guest_panicked\"", "{detial}").unwrap();
    let e = bad_cause.validate(&fields_of("vesper", &[]).unwrap());
    assert!(
        matches!(&e, Err(RuleError::UnknownField { field, .. }) if field == "detial"),
        "{e:?}"
    );
    for r in builtin(&["httpd".into()]) {
        let fields = fields_of(&r.probe, &[]).unwrap();
        assert_eq!(r.validate(&fields), Ok(()), "built-in rule {}", r.name);
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
        r.cause(&json!({"probe":"oom","anon_rss_kb":2000,"victim_comm":"java-app"}))
            .as_deref(),
        Some("java-app {big}")
    );
    assert!(
        r.cause(&json!({"probe":"oom","anon_rss_kb":20,"victim_comm":"java-app"}))
            .is_none()
    );
    assert_eq!(
        r.evaluate(&json!({"probe":"oom"})),
        Err(JudgeError::Eval(EvalError::MissingField {
            field: "anon_rss_kb".into()
        })),
        "a missing field is an error, not a silent no-match"
    );
    assert!(Rule::new("bad", "oom", "anon_rss_kb >", "x").is_err());
}

fn refusal(probe: &str, when: &str) -> String {
    let r = Rule::new("r", probe, when, "c").unwrap();
    let fields = fields_of(probe, &[]).unwrap();
    match r.validate(&fields) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("{when} is accepted"),
    }
}

#[test]
fn a_literal_of_the_wrong_type_is_refused_with_the_fix() {
    assert_eq!(
        refusal("signal", "sig == \"9\""),
        "rule \"r\" on probe \"signal\": sig is an integer and \"9\" is a string: write sig == 9"
    );
    assert_eq!(
        refusal("signal", "result == 0 && sender_comm == 9"),
        "rule \"r\" on probe \"signal\": sender_comm is a string and 9 is an integer: write sender_comm == \"9\""
    );
    assert_eq!(
        refusal("signal", "sig in [9, \"15\"]"),
        "rule \"r\" on probe \"signal\": sig is an integer and \"15\" is a string: write sig in [9, 15]"
    );
    assert_eq!(
        refusal("signal", "sig != \"SIGKILL\""),
        "rule \"r\" on probe \"signal\": sig is an integer and \"SIGKILL\" is a string: write sig_name != \"SIGKILL\""
    );
    assert_eq!(
        refusal(
            "vesper",
            "event == \"guest_panicked\" && by_guest == \"yes\""
        ),
        "rule \"r\" on probe \"vesper\": by_guest is an integer and \"yes\" is a string: compare by_guest with an integer"
    );
}

#[test]
fn an_unknown_field_an_operator_that_does_not_apply_and_a_string_condition_are_refused() {
    let e = refusal("oom", "victim == \"x\"");
    assert!(
        e.starts_with("rule \"r\": records of probe \"oom\" have no field \"victim\"; they have: vm, probe, seq, ts_ns, host_ms, victim_pid, victim_comm,"),
        "{e}"
    );
    assert_eq!(
        refusal("signal", "sender_comm > \"a\""),
        "rule \"r\" on probe \"signal\": `>` does not apply to a string (sender_comm): strings can only be compared (==, !=, in) or tested with starts_with(s, \"prefix\")"
    );
    assert_eq!(
        refusal("signal", "sender_comm"),
        "rule \"r\" on probe \"signal\": sender_comm is a string, not a condition: compare it, e.g. sender_comm == \"httpd\""
    );
    assert_eq!(
        refusal("signal", "sender_comm == sig"),
        "rule \"r\" on probe \"signal\": `==` cannot be applied to a string and an integer (sender_comm == sig): compare values of one type"
    );
    assert!(refusal("signal", "sender_pid->x == 1").contains("emit the value as a field"));
}

/// A manifest as the compiler makes one for `signal` on a guest: `target_comm`, whose
/// type the kernel's layout decides, is a string there.
fn compiled_signal() -> vesper_probe::Manifest {
    use vesper_probe::{FieldKind, FieldSpec, Schema};
    let field = |name: &str, kind| FieldSpec {
        name: name.into(),
        offset: 16,
        kind,
    };
    vesper_probe::Manifest {
        name: "signal".into(),
        kernel_release: None,
        attach: Vec::new(),
        ring_map: "ring".into(),
        drops_map: "drops".into(),
        schemas: vec![Schema {
            size: 64,
            fields: vec![
                field("sig", FieldKind::Signal),
                field("target_comm", FieldKind::Str { len: 16 }),
            ],
        }],
        maps: Vec::new(),
        intervals: Vec::new(),
    }
}

#[test]
fn a_rule_on_a_field_the_guests_kernel_types_is_checked_when_the_probe_loads() {
    let r = Rule::new("late", "signal", "target_comm == 9", "c").unwrap();
    assert_eq!(
        r.validate(&signal_fields()),
        Ok(()),
        "args.comm's type is the guest kernel's: unknown at config time"
    );
    r.bind("bind-vm", &compiled_signal());
    let mut record = sigterm("9", 0);
    record["vm"] = json!("bind-vm");
    let Err(JudgeError::Refused(e)) = r.evaluate(&record) else {
        panic!("refused once the probe's types are known");
    };
    assert_eq!(
        e.to_string(),
        "rule \"late\" on probe \"signal\": target_comm is a string and 9 is an integer: write target_comm == \"9\""
    );
    assert_eq!(r.check(&record), None);
    assert_eq!(error_count("bind-vm", "late"), 1);
    // Fixed (a reload makes a new rule) and loaded again: judged.
    let r = Rule::new("late", "signal", "target_comm == \"9\"", "{sig_name}").unwrap();
    r.bind("bind-vm", &compiled_signal());
    assert_eq!(r.check(&record).as_deref(), Some("SIGTERM"));
}

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_record_a_rule_cannot_judge_is_counted_every_time_and_logged_once() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let r = Rule::new("big", "oom", "anon_rss_kb > 1000", "{victim_comm}").unwrap();
    let odd = json!({"vm":"err-vm","probe":"oom","victim_comm":"java"});
    let good = json!({"vm":"err-vm","probe":"oom","victim_comm":"java","anon_rss_kb":2000});
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            assert_eq!(r.check(&odd), None);
        }
        assert_eq!(r.check(&good).as_deref(), Some("java"));
        let stack = json!({"vm":"err-vm","probe":"oom","victim_comm":"j","anon_rss_kb":[1]});
        assert_eq!(r.check(&stack), None);
    });
    assert_eq!(error_count("err-vm", "big"), 4);
    assert!(
        error_counts().contains(&(("err-vm".into(), "big".into()), 4)),
        "the metrics read every count"
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("rule cannot judge").count(),
        1,
        "logged once: {text}"
    );
    assert!(
        text.contains("the record has no field \"anon_rss_kb\""),
        "{text}"
    );
}

#[test]
fn rules_evaluate_with_the_languages_semantics() {
    let r = |when: &str| Rule::new("s", "oom", when, "m").unwrap();
    let rec = json!({"probe":"oom","anon_rss_kb":7,"victim_pid":-8,"total_vm_kb":u64::MAX,"victim_comm":"x"});
    // Unsigned division, as in the kernel: -8 / 2 is not -4.
    assert_eq!(r("victim_pid / 2 == -4").cause(&rec), None);
    assert_eq!(
        r("victim_pid / 2 == 9223372036854775804")
            .cause(&rec)
            .as_deref(),
        Some("m")
    );
    // A u64 above i64::MAX is the same 64-bit word: -1 compared signed.
    assert_eq!(
        r("total_vm_kb == -1 && total_vm_kb < 0")
            .cause(&rec)
            .as_deref(),
        Some("m")
    );
    assert_eq!(
        r("anon_rss_kb % 0 == 7 && anon_rss_kb / 0 == 0")
            .cause(&rec)
            .as_deref(),
        Some("m")
    );
    assert_eq!(
        r("victim_comm in [\"y\", \"x\"]").cause(&rec).as_deref(),
        Some("m")
    );
}
