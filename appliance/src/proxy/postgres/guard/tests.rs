use super::*;
use crate::policy::kinds::postgres_controls::{GroupGuardrails, Guardrails};
use crate::proxy::postgres::classify::classify;
use crate::proxy::postgres::mask::MaskRules;
use StatementClass::*;

fn set(classes: &[StatementClass]) -> BTreeSet<StatementClass> {
    classes.iter().copied().collect()
}

fn controls() -> PgControls {
    PgControls {
        guardrails: Guardrails {
            deny: set(&[Drop, DeleteWithoutWhere, System]),
            hold: set(&[Write, Ddl]),
            allow_unparsed: false,
            deny_functions_on_masked: false,
            groups: vec![
                GroupGuardrails {
                    groups: vec!["dba".into()],
                    deny: set(&[System]),
                    hold: set(&[]),
                },
                GroupGuardrails {
                    groups: vec!["oncall".into(), "dba".into()],
                    deny: set(&[]),
                    hold: set(&[Drop]),
                },
            ],
        },
        ..PgControls::default()
    }
}

fn deny(class: StatementClass, rule: &str) -> GuardDecision {
    GuardDecision::Deny {
        class,
        rule: rule.into(),
    }
}

fn hold(class: StatementClass, rule: &str) -> GuardDecision {
    GuardDecision::Hold {
        class,
        rule: rule.into(),
    }
}

#[test]
fn deny_wins_over_hold_and_names_the_first_class() {
    let c = controls();
    let none: &[String] = &[];
    assert_eq!(decide(&c, none, &set(&[Read])), GuardDecision::Allow);
    assert_eq!(decide(&c, none, &set(&[])), GuardDecision::Allow);
    assert_eq!(
        decide(&c, none, &set(&[Read, Write])),
        hold(Write, "guardrails.hold")
    );
    assert_eq!(
        decide(&c, none, &set(&[Write, DeleteWithoutWhere])),
        deny(DeleteWithoutWhere, "guardrails.deny")
    );
    assert_eq!(
        decide(&c, none, &set(&[Ddl, Drop])),
        deny(Drop, "guardrails.deny")
    );
    assert_eq!(
        decide(&c, none, &set(&[Ddl, System])),
        deny(System, "guardrails.deny")
    );
}

#[test]
fn unparsed_is_fail_closed() {
    let mut c = controls();
    let none: &[String] = &[];
    let d = decide(&c, none, &set(&[Read, Unparsed]));
    assert_eq!(d, deny(Unparsed, "guardrails (allow_unparsed = false)"));
    // Group members too.
    assert!(matches!(
        decide(&c, &["dba".into()], &set(&[Unparsed])),
        GuardDecision::Deny {
            class: Unparsed,
            ..
        }
    ));
    c.guardrails.allow_unparsed = true;
    assert_eq!(decide(&c, none, &set(&[Unparsed])), GuardDecision::Allow);
    c.guardrails.hold.insert(Unparsed);
    assert_eq!(
        decide(&c, none, &set(&[Unparsed])),
        hold(Unparsed, "guardrails.hold")
    );
    // No guardrails table at all: nothing enforced.
    assert_eq!(
        decide(&PgControls::default(), none, &set(&[Unparsed, Drop])),
        GuardDecision::Allow
    );
}

#[test]
fn first_matching_group_rule_replaces_the_defaults() {
    let c = controls();
    let dba = ["dba".to_string()];
    let oncall = ["web".to_string(), "oncall".to_string()];
    // dba: only system denied, nothing held.
    assert_eq!(decide(&c, &dba, &set(&[Write])), GuardDecision::Allow);
    assert_eq!(decide(&c, &dba, &set(&[Drop, Ddl])), GuardDecision::Allow);
    assert_eq!(
        decide(&c, &dba, &set(&[System])),
        deny(System, "guardrails.deny (group dba)")
    );
    // oncall: drop is held, the rest allowed.
    assert_eq!(
        decide(&c, &oncall, &set(&[Ddl, Drop])),
        hold(Drop, "guardrails.hold (group oncall)")
    );
    assert_eq!(decide(&c, &oncall, &set(&[System])), GuardDecision::Allow);
    // Group names are exact.
    assert_eq!(
        decide(&c, &["DBA".to_string()], &set(&[Drop])),
        deny(Drop, "guardrails.deny")
    );
}

#[test]
fn denial_message_names_rule_and_version() {
    assert_eq!(
        denial_message(Drop, "guardrails.deny", Some(7)),
        "statement denied by policy: class drop is denied by guardrails.deny (policy version 7)"
    );
    assert_eq!(
        denial_message(Unparsed, "guardrails.deny (group dba)", None),
        "statement denied by policy: class unparsed is denied by guardrails.deny (group dba)"
    );
    assert_eq!(GuardDecision::Allow.as_str(), "allow");
}

#[test]
fn functions_on_masked_columns() {
    let mut c = controls();
    c.guardrails.groups.clear();
    c.guardrails.deny_functions_on_masked = true;
    c.masking.columns = MaskRules::parse(&["public.customers.email", "*.ssn"]).expect("rules");
    let run = |sql: &str| {
        let k = classify(sql);
        decide_statement(&c, &[], &k.classes, &k.exposures)
    };
    assert_eq!(
        run("SELECT email, ssn FROM customers"),
        GuardDecision::Allow
    );
    assert_eq!(
        run("SELECT lower(name) FROM customers"),
        GuardDecision::Allow
    );
    let d = run("SELECT lower(email) FROM customers");
    assert_eq!(
        d,
        deny(Read, "guardrails.deny_functions_on_masked (column customers.email matches masking rule public.customers.email)")
    );
    assert!(matches!(
        run("SELECT md5(x.ssn) FROM people x"),
        GuardDecision::Deny { class: Read, .. }
    ));
    assert!(matches!(
        run("SELECT lower(email) FROM crm.customers"),
        GuardDecision::Allow
    ));
    assert!(matches!(
        run("SELECT row_to_json(c) FROM customers c"),
        GuardDecision::Deny { .. }
    ));
    // `*.ssn` could be in any table, so any whole row may hold it.
    assert!(matches!(
        run("SELECT c FROM orders c"),
        GuardDecision::Deny { .. }
    ));
    assert!(matches!(
        run("SELECT o.id, lower(o.status) FROM orders o"),
        GuardDecision::Allow
    ));
    // A held write that also exposes: the exposure denies.
    assert!(matches!(
        run("UPDATE customers SET a = 1 WHERE id = 1 RETURNING upper(email)"),
        GuardDecision::Deny { class: Read, .. }
    ));
    // An earlier denial stands.
    assert_eq!(
        run("DELETE FROM customers RETURNING lower(email)"),
        deny(DeleteWithoutWhere, "guardrails.deny")
    );
    // Off: allowed.
    c.guardrails.deny_functions_on_masked = false;
    let k = classify("SELECT lower(email) FROM customers");
    assert_eq!(
        decide_statement(&c, &[], &k.classes, &k.exposures),
        GuardDecision::Allow
    );
}
