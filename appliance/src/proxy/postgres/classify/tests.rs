use super::corpus::{CORPUS, SAMPLE_DENY, SAMPLE_HOLD};
use super::*;
use crate::policy::kinds::postgres_controls::{ApprovalSettings, Guardrails, PgControls};
use crate::proxy::postgres::guard::{decide, GuardDecision};

fn sample_policy() -> PgControls {
    let set = |names: &[&str]| names.iter().map(|n| n.parse().expect("class")).collect();
    PgControls {
        guardrails: Guardrails {
            deny: set(SAMPLE_DENY),
            hold: set(SAMPLE_HOLD),
            allow_unparsed: false,
            deny_functions_on_masked: false,
            groups: Vec::new(),
        },
        approval: Some(ApprovalSettings {
            approvers_group: "dba-leads".into(),
            timeout: std::time::Duration::from_secs(600),
            reuse_window: std::time::Duration::ZERO,
        }),
        ..PgControls::default()
    }
}

fn names(classes: &BTreeSet<StatementClass>) -> String {
    classes
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn decision_text(d: &GuardDecision) -> String {
    match d {
        GuardDecision::Allow => "allow".into(),
        GuardDecision::Deny { class, .. } => format!("deny {class}"),
        GuardDecision::Hold { class, .. } => format!("hold {class}"),
    }
}

#[test]
fn corpus_classes_and_decisions() {
    assert!(
        CORPUS.len() >= 150,
        "corpus has {} statements",
        CORPUS.len()
    );
    let policy = sample_policy();
    let mut session = PreparedStatements::default();
    let mut failures = Vec::new();
    for (sql, want_classes, want_decision) in CORPUS {
        let c = classify(sql);
        let classes = session.effective(&c);
        session.record(&c);
        let mut want: Vec<&str> = want_classes.split_whitespace().collect();
        want.sort_by_key(|n| n.parse::<StatementClass>().map(|c| c as u8).unwrap_or(255));
        let got = names(&classes);
        let decision = decision_text(&decide(&policy, &[], &classes));
        if got != want.join(" ") || decision != *want_decision {
            failures.push(format!(
                "{sql:?}\n    classes  got [{got}] want [{}]\n    decision got [{decision}] want [{want_decision}] ({:?})",
                want.join(" "),
                c.unparsed_reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn class_names_round_trip() {
    for c in StatementClass::ALL {
        assert_eq!(c.as_str().parse::<StatementClass>(), Ok(c));
        assert_eq!(c.to_string(), c.as_str());
    }
    let e = "dropp".parse::<StatementClass>().unwrap_err().to_string();
    assert!(
        e.contains("\"dropp\"") && e.contains("delete_without_where"),
        "{e}"
    );
}

#[test]
fn statement_counts_and_prepared_names() {
    let c = classify("SELECT 1; ; SELECT 2 /* ; */; PREPARE \"Q\" AS DELETE FROM t WHERE a; EXECUTE x; DEALLOCATE y; DEALLOCATE ALL; DEALLOCATE \"ALL\"");
    assert_eq!(c.statements, 7);
    assert_eq!(c.prepares.len(), 1);
    assert_eq!(c.prepares[0].0, "Q");
    assert_eq!(names(&c.prepares[0].1), "write");
    assert_eq!(c.executes, vec!["x".to_string()]);
    assert_eq!(
        c.deallocates,
        vec![Some("y".into()), None, Some("ALL".into())]
    );
    assert_eq!(names(&c.classes), "read session_config");
    assert_eq!(classify("").statements, 0);
    assert!(classify("").classes.is_empty());
}

#[test]
fn prepared_statements_follow_the_session() {
    let mut s = PreparedStatements::default();
    let parse = classify("DELETE FROM t");
    s.record_parse("stmt1", s.effective(&parse));
    assert_eq!(
        names(&s.effective(&classify("EXECUTE stmt1"))),
        "write delete_without_where"
    );
    // Protocol names are exact: SQL EXECUTE folds to lower case.
    s.record_parse("Stmt2", s.effective(&classify("SELECT 1")));
    assert_eq!(names(&s.effective(&classify("EXECUTE \"Stmt2\""))), "read");
    assert_eq!(names(&s.effective(&classify("EXECUTE Stmt2"))), "unparsed");
    s.close("stmt1");
    assert_eq!(names(&s.effective(&classify("EXECUTE stmt1"))), "unparsed");
    // The unnamed statement is not remembered.
    s.record_parse("", parse.classes.clone());
    assert!(s.get("").is_none());
}

#[test]
fn standard_conforming_strings_off_is_fail_closed() {
    let off = ClassifyOptions {
        standard_conforming_strings: false,
        ..ClassifyOptions::default()
    };
    // With the setting on this is two strings; off, the server runs a DROP.
    let sql = "SELECT '\\' , ' ; DROP TABLE t; --'";
    assert_eq!(names(&classify(sql).classes), "read");
    let c = classify_with(sql, &off);
    assert_eq!(names(&c.classes), "unparsed");
    assert!(c
        .unparsed_reason
        .unwrap_or_default()
        .contains("standard_conforming_strings"));
    assert_eq!(
        names(&classify_with("SELECT 'plain'", &off).classes),
        "read"
    );
    assert_eq!(names(&classify_with("SELECT E'\\n'", &off).classes), "read");
}

#[test]
fn limits_are_fail_closed() {
    let small = ClassifyOptions {
        max_bytes: 16,
        ..ClassifyOptions::default()
    };
    assert_eq!(names(&classify_with("SELECT 1", &small).classes), "read");
    let c = classify_with("SELECT 1234567890123456", &small);
    assert_eq!(names(&c.classes), "unparsed");
    assert_eq!(
        names(&classify_bytes(b"SELECT '\xff'", &ClassifyOptions::default()).classes),
        "unparsed"
    );

    let deep = format!(
        "SELECT {}1{}",
        "(".repeat(MAX_PAREN_DEPTH + 1),
        ")".repeat(MAX_PAREN_DEPTH + 1)
    );
    assert_eq!(names(&classify(&deep).classes), "unparsed");
    let long = format!("SELECT 1{}", "+1".repeat(MAX_EXPRESSION_RUN + 1));
    let c = classify(&long);
    assert_eq!(names(&c.classes), "unparsed", "{:?}", c.unparsed_reason);
    // Commas reset the run: a long list is fine.
    let list = format!("SELECT {}", vec!["a + 1"; 5_000].join(", "));
    assert_eq!(names(&classify(&list).classes), "read");
    // Other statements of the text are still classified.
    let c = classify(&format!("{long}; DROP TABLE t"));
    assert_eq!(names(&c.classes), "ddl drop unparsed");
}

/// The worst case the bounds allow must classify on a small stack (tokio's
/// worker threads have 2 MiB; a debug build needs about 1 MiB here, a
/// release build a tenth of that).
#[test]
fn worst_case_nesting_fits_a_small_stack() {
    let cases = [
        format!("SELECT 1{}", "+1".repeat(MAX_EXPRESSION_RUN)),
        format!("SELECT 1{}", " OR a = 1".repeat(MAX_EXPRESSION_RUN / 2)),
        format!("SELECT x{}", "::text".repeat(MAX_EXPRESSION_RUN)),
        format!(
            "SELECT {}1{}",
            "(".repeat(MAX_PAREN_DEPTH),
            ")".repeat(MAX_PAREN_DEPTH)
        ),
        format!(
            "SELECT {}1{}",
            "f(".repeat(MAX_PAREN_DEPTH),
            ")".repeat(MAX_PAREN_DEPTH)
        ),
        format!("{}SELECT 1", "EXPLAIN ".repeat(5_000)),
        format!("SELECT {}1", "- ".repeat(MAX_EXPRESSION_RUN)),
        format!("SELECT {}true", "NOT ".repeat(MAX_EXPRESSION_RUN)),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(1536 << 10)
        .spawn(move || {
            cases
                .iter()
                .map(|c| classify(c).classes)
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    let results = handle.join().expect("no stack overflow");
    assert!(results.iter().all(|c| !c.is_empty()));
}

#[test]
fn exposures_name_transformed_and_whole_row_columns() {
    let ex = |sql: &str| classify(sql).exposures;
    let col = |rel: &[&str], c: &str| Exposure {
        relation: rel.iter().map(|s| s.to_string()).collect(),
        column: Some(c.to_string()),
    };
    let row = |rel: &[&str]| Exposure {
        relation: rel.iter().map(|s| s.to_string()).collect(),
        column: None,
    };
    assert!(ex("SELECT email, c.ssn, * FROM customers c").is_empty());
    assert_eq!(
        ex("SELECT lower(email) FROM customers"),
        vec![col(&["customers"], "email")]
    );
    assert_eq!(
        ex("SELECT c.email || '' FROM public.customers c"),
        vec![col(&["public", "customers"], "email")]
    );
    assert_eq!(
        ex("SELECT upper(x.Email) FROM a JOIN b x ON true"),
        vec![col(&["b"], "email")]
    );
    assert_eq!(ex("SELECT lower(email) FROM a, b"), vec![col(&[], "email")]);
    assert_eq!(ex("SELECT c FROM customers c"), vec![row(&["customers"])]);
    assert_eq!(
        ex("SELECT row_to_json(c.*) FROM customers c"),
        vec![row(&["customers"])]
    );
    assert_eq!(
        ex("SELECT to_json(customers) FROM customers"),
        vec![row(&["customers"])]
    );
    assert_eq!(
        ex("SELECT ssn::text AS s FROM customers"),
        vec![col(&["customers"], "ssn")]
    );
    assert_eq!(
        ex("UPDATE customers SET a = 1 WHERE id = 1 RETURNING md5(ssn)"),
        vec![col(&["customers"], "ssn")]
    );
    assert_eq!(
        ex("PREPARE p AS SELECT md5(ssn) FROM customers"),
        vec![col(&["customers"], "ssn")]
    );
    // The outer SELECT sees the subquery's column without its FROM.
    assert_eq!(
        ex("SELECT (SELECT lower(email) FROM customers LIMIT 1)"),
        vec![col(&[], "email"), col(&["customers"], "email")]
    );
}

/// Prints classification cost (a benchmark hook, not a timing assertion):
/// `cargo test --release -p appliance --lib classify::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_classification() {
    let short = "SELECT id, email FROM customers WHERE id = $1";
    let mut long = String::from(
        "SELECT id, name, email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE ",
    );
    let mut i = 0;
    while long.len() < 10 * 1024 {
        long.push_str(&format!("(o.status = 'state{i}' AND o.amount > {i}) OR "));
        i += 1;
    }
    long.push_str("false");
    let n_short = bench_classify_ns(short, 20_000);
    let n_long = bench_classify_ns(&long, 500);
    let mut cache = ClassifyCache::default();
    let opts = ClassifyOptions::default();
    let start = std::time::Instant::now();
    for _ in 0..200_000 {
        std::hint::black_box(cache.classify(std::hint::black_box(short), &opts));
    }
    let n_cached = start.elapsed().as_nanos() as f64 / 200_000.0;
    println!("classify short, cached: {n_cached:.0} ns");
    println!(
        "classify short ({} B): {n_short:.0} ns; 10 KB ({} B): {n_long:.0} ns",
        short.len(),
        long.len()
    );
}

#[test]
fn cache_returns_the_same_classification() {
    let mut cache = ClassifyCache::default();
    let opts = ClassifyOptions::default();
    let a = cache.classify("BEGIN", &opts);
    let b = cache.classify("BEGIN", &opts);
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(*a, classify("BEGIN"));
    let off = ClassifyOptions {
        standard_conforming_strings: false,
        ..opts
    };
    assert_eq!(
        names(&cache.classify("SELECT 'a\\'", &off).classes),
        "unparsed"
    );
    assert_eq!(
        names(&cache.classify("SELECT 'a\\'", &opts).classes),
        "read"
    );
    for i in 0..ClassifyCache::CAPACITY + 10 {
        cache.classify(&format!("SELECT {i}"), &opts);
    }
    assert!(!std::sync::Arc::ptr_eq(&a, &cache.classify("BEGIN", &opts)));
}
