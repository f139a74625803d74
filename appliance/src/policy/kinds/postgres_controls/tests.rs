use super::*;
use crate::proxy::postgres::mask::ColumnName;

const FULL: &str = r#"
[guardrails]
deny = ["drop", "truncate", "delete_without_where", "update_without_where", "privilege", "copy_program", "system", "unparsed"]
hold = ["write", "ddl"]
allow_unparsed = false
deny_functions_on_masked = true
[[guardrails.group]]
groups = ["dba"]
deny = ["system"]
hold = []
[[guardrails.group]]
groups = ["oncall", "sre"]
hold = ["drop"]
[masking]
columns = ["public.customers.email", "customers.ssn", "*.card_number", "pay*.iban"]
detectors = ["email", "credit_card", "iban", "phone"]
custom = [{ name = "api_key", regex = "sk_live_[A-Za-z0-9]{8,}" }]
mask = "fixed"
replacement = "<masked>"
[approval]
approvers_group = "dba-leads"
timeout = "10m"
reuse_window = "5m"
"#;

/// Splits a `[guardrails]`/`[masking]`/`[approval]` document into the three
/// tables `parse` takes.
fn tables(
    text: &str,
) -> (
    Option<toml::Table>,
    Option<toml::Table>,
    Option<toml::Table>,
) {
    let mut t: toml::Table = toml::from_str(text).expect("toml");
    let mut take = |k: &str| t.remove(k).map(|v| v.as_table().cloned().expect("a table"));
    (take("guardrails"), take("masking"), take("approval"))
}

fn parse_text(text: &str) -> Result<PgControls, PolicyError> {
    let (g, m, a) = tables(text);
    parse(g, m, a, "connection \"pg\"")
}

fn err(text: &str) -> String {
    match parse_text(text) {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn set(names: &[&str]) -> BTreeSet<StatementClass> {
    names.iter().map(|n| n.parse().expect("class")).collect()
}

#[test]
fn full_example_parses() {
    let c = parse_text(FULL).expect("parses");
    assert_eq!(
        c.guardrails.deny,
        set(&[
            "drop",
            "truncate",
            "delete_without_where",
            "update_without_where",
            "privilege",
            "copy_program",
            "system",
            "unparsed"
        ])
    );
    assert_eq!(c.guardrails.hold, set(&["write", "ddl"]));
    assert!(!c.guardrails.allow_unparsed);
    assert!(c.guardrails.deny_functions_on_masked);
    assert_eq!(
        c.guardrails.groups,
        vec![
            GroupGuardrails {
                groups: vec!["dba".into()],
                deny: set(&["system"]),
                hold: set(&[])
            },
            GroupGuardrails {
                groups: vec!["oncall".into(), "sre".into()],
                deny: set(&[]),
                hold: set(&["drop"])
            },
        ]
    );
    let m = &c.masking;
    assert!(m.is_active());
    let pats: Vec<&str> = m.columns.patterns().iter().map(|p| p.as_str()).collect();
    assert_eq!(
        pats,
        [
            "public.customers.email",
            "customers.ssn",
            "*.card_number",
            "pay*.iban"
        ]
    );
    assert!(m
        .columns
        .matches(&ColumnName::new("public", "customers", "email")));
    assert!(!m
        .columns
        .matches(&ColumnName::new("crm", "customers", "email")));
    assert!(m
        .columns
        .matches(&ColumnName::new("crm", "Customers", "SSN")));
    assert!(m
        .columns
        .matches(&ColumnName::new("x", "anything", "card_number")));
    assert!(m.columns.matches(&ColumnName::new("x", "payouts", "iban")));
    assert!(!m.columns.matches(&ColumnName::new("x", "invoices", "iban")));
    assert_eq!(m.detectors, BuiltinDetector::ALL.to_vec());
    assert_eq!(
        m.custom,
        vec![CustomDetector {
            name: "api_key".into(),
            regex: "sk_live_[A-Za-z0-9]{8,}".into()
        }]
    );
    assert_eq!(m.mask, MaskMode::Fixed("<masked>".into()));
    assert_eq!(
        c.approval,
        Some(ApprovalSettings {
            approvers_group: "dba-leads".into(),
            timeout: Duration::from_secs(600),
            reuse_window: Duration::from_secs(300),
        })
    );
}

#[test]
fn defaults() {
    let c = parse(None, None, None, "x").expect("parses");
    assert_eq!(c, PgControls::default());
    assert!(
        c.guardrails.allow_unparsed,
        "no guardrails table: nothing enforced"
    );
    assert!(!c.masking.is_active());
    // With a table, unparsed is fail closed.
    let c = parse_text("[guardrails]\ndeny = [\"drop\"]").expect("parses");
    assert!(!c.guardrails.allow_unparsed);
    let c = parse_text("[masking]\ncolumns = [\"*.ssn\"]\n[approval]\napprovers_group = \"g\"")
        .expect("parses");
    assert_eq!(c.masking.mask, MaskMode::KeepLast4);
    let a = c.approval.expect("approval");
    assert_eq!(
        (a.timeout, a.reuse_window),
        (DEFAULT_APPROVAL_TIMEOUT, Duration::ZERO)
    );
    let c = parse_text("[masking]\nmask = \"fixed\"").expect("parses");
    assert_eq!(c.masking.mask, MaskMode::Fixed("****".into()));
    let c = parse_text("[masking]\nmask = \"hash\"").expect("parses");
    assert_eq!(c.masking.mask, MaskMode::Hash);
}

#[test]
fn errors_are_precise() {
    let cases: &[(&str, &[&str])] = &[
        ("[guardrails]\ndeny = [\"dropp\"]", &["guardrails.deny", "\"dropp\"", "delete_without_where"]),
        ("[guardrails]\nhold = [\"write\", \"write\"]", &["twice"]),
        ("[guardrails]\ndeny = [\"write\"]\nhold = [\"write\"]\n[approval]\napprovers_group = \"g\"", &["both denied and held"]),
        ("[guardrails]\nhold = [\"write\"]", &["[connection.postgres.approval] is missing"]),
        ("[guardrails]\nhold = [\"unparsed\"]\n[approval]\napprovers_group = \"g\"", &["allow_unparsed"]),
        ("[guardrails]\ncolour = 1", &["[connection.postgres.guardrails]", "colour"]),
        ("[[guardrails.group]]\ngroups = []", &["group[0].groups"]),
        ("[[guardrails.group]]\ngroups = [\"a\"]\ndeny = [\"nope\"]", &["group[0].deny", "\"nope\""]),
        ("[[guardrails.group]]\ngroups = [\"a\"]\nhold = [\"ddl\"]", &["approval] is missing"]),
        ("[guardrails]\ndeny_functions_on_masked = true", &["needs masking.columns"]),
        ("[masking]\ncolumns = [\"ssn\"]", &["masking.columns", "\"ssn\"", "*.column"]),
        ("[masking]\ncolumns = [\"a.b.c.d\"]", &["masking.columns", "schema.table.column"]),
        ("[masking]\ncolumns = [\"a..b\"]", &["empty part"]),
        ("[masking]\ncolumns = [\"a. b\"]", &["spaces"]),
        ("[masking]\ndetectors = [\"ssn\"]", &["unknown detector \"ssn\"", "credit_card"]),
        ("[masking]\ndetectors = [\"email\", \"email\"]", &["twice"]),
        ("[masking]\ncustom = [{ name = \"k\", regex = \"(\" }]", &["custom \"k\"", "does not compile"]),
        ("[masking]\ncustom = [{ name = \"k\", regex = \"a*\" }]", &["matches the empty string"]),
        ("[masking]\ncustom = [{ name = \"k\", regex = \"a\" }, { name = \"k\", regex = \"b\" }]", &["used twice"]),
        ("[masking]\ncustom = [{ name = \"email\", regex = \"b\" }]", &["used twice"]),
        ("[masking]\ncustom = [{ name = \"k\", regex = \"a\", flags = \"i\" }]", &["flags"]),
        ("[masking]\nmask = \"blur\"", &["mask \"blur\"", "keep-last-4"]),
        ("[masking]\nreplacement = \"x\"", &["replacement only applies"]),
        ("[masking]\nmask = \"fixed\"\nreplacement = \"a\\u0000b\"", &["NUL"]),
        ("[approval]\napprovers_group = \"\"", &["approvers_group"]),
        ("[approval]\napprovers_group = \"g\"\ntimeout = \"soon\"", &["approval.timeout \"soon\""]),
        ("[approval]\napprovers_group = \"g\"\ntimeout = \"2d\"", &["between 1s and 24h"]),
        ("[approval]\napprovers_group = \"g\"\nreuse_window = \"25h\"", &["reuse_window"]),
        ("[approval]\ntimeout = \"1m\"", &["approvers_group"]),
    ];
    for (text, needles) in cases {
        let e = err(text);
        assert!(e.contains("connection \"pg\""), "{e}");
        for n in *needles {
            assert!(e.contains(n), "error for {text:?} lacks {n:?}: {e}");
        }
    }
}

#[test]
fn example_policy_pg_prod_controls() {
    let p = crate::policy::parse_policy(include_str!("../../../../../policy.example.toml"))
        .expect("example parses");
    let crate::policy::KindSettings::Postgres(pg) = &p.connections[0].settings else {
        panic!("pg-prod is postgres");
    };
    let c = &pg.controls;
    assert!(c.guardrails.deny.contains(&StatementClass::Drop));
    assert!(c.guardrails.hold.contains(&StatementClass::Write));
    assert!(c.guardrails.deny_functions_on_masked);
    assert_eq!(c.guardrails.groups.len(), 1);
    assert_eq!(c.masking.detectors.len(), 4);
    assert_eq!(c.masking.custom.len(), 1);
    assert_eq!(
        c.approval.as_ref().map(|a| a.approvers_group.as_str()),
        Some("dba-leads")
    );
}
