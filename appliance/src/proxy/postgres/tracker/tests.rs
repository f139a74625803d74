use super::*;
use crate::proxy::postgres::codec::{self, backend::TransactionStatus, Diagnostic, Severity};

fn body(frame: &[u8]) -> (u8, &[u8]) {
    (frame[0], &frame[5..])
}

fn msg(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![tag, 0, 0, 0, 0];
    for p in parts {
        b.extend_from_slice(p);
    }
    let len = (b.len() - 1) as u32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(
        b'P',
        &[
            name.as_bytes(),
            b"\0",
            sql.as_bytes(),
            b"\0",
            &0i16.to_be_bytes(),
        ],
    )
}

fn bind(portal: &str, stmt: &str, params: i16) -> Vec<u8> {
    let mut p: Vec<u8> = Vec::new();
    p.extend_from_slice(portal.as_bytes());
    p.push(0);
    p.extend_from_slice(stmt.as_bytes());
    p.push(0);
    p.extend_from_slice(&0i16.to_be_bytes()); // param formats
    p.extend_from_slice(&params.to_be_bytes());
    for _ in 0..params {
        p.extend_from_slice(&1i32.to_be_bytes());
        p.push(b'7');
    }
    p.extend_from_slice(&0i16.to_be_bytes()); // result formats
    msg(b'B', &[&p])
}

fn execute(portal: &str) -> Vec<u8> {
    msg(b'E', &[portal.as_bytes(), b"\0", &0i32.to_be_bytes()])
}

fn complete(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    codec::command_complete(&mut v, tag).unwrap();
    v
}

fn ready() -> Vec<u8> {
    let mut v = Vec::new();
    codec::ready_for_query(&mut v, TransactionStatus::Idle);
    v
}

fn error(state: &str) -> Vec<u8> {
    let mut v = Vec::new();
    codec::error_response(&mut v, &Diagnostic::new(Severity::Error, state, "boom")).unwrap();
    v
}

fn front(t: &mut Tracker, f: &[u8]) -> Option<StatementEvent> {
    let (tag, b) = body(f);
    t.on_frontend(tag, b, Instant::now()).unwrap()
}

fn back(t: &mut Tracker, f: &[u8]) -> Vec<StatementEvent> {
    let (tag, b) = body(f);
    let mut out = Vec::new();
    t.on_backend(tag, b, Instant::now(), &mut out).unwrap();
    out
}

#[test]
fn simple_query_with_several_statements_is_one_event() {
    let mut t = Tracker::default();
    let mut q = Vec::new();
    codec::query(&mut q, "insert into t values (1); select 1").unwrap();
    assert!(front(&mut t, &q).is_none());
    assert!(back(&mut t, &complete("INSERT 0 1")).is_empty());
    assert!(back(&mut t, &complete("SELECT 1")).is_empty());
    let ev = back(&mut t, &ready());
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, StepKind::Simple);
    assert_eq!(
        ev[0].text.as_deref(),
        Some("insert into t values (1); select 1")
    );
    assert_eq!(ev[0].tags, vec!["INSERT 0 1", "SELECT 1"]);
    assert_eq!(ev[0].rows, Some(2));
    assert_eq!(ev[0].outcome, "ok");
}

#[test]
fn simple_query_error_carries_sqlstate() {
    let mut t = Tracker::default();
    let mut q = Vec::new();
    codec::query(&mut q, "select nope").unwrap();
    front(&mut t, &q);
    assert!(back(&mut t, &error("42703")).is_empty());
    let ev = back(&mut t, &ready());
    assert_eq!(ev[0].sqlstate.as_deref(), Some("42703"));
    assert_eq!(ev[0].error.as_deref(), Some("boom"));
    assert_eq!(ev[0].outcome, "error");
}

#[test]
fn named_statement_is_prepared_once_and_executes_refer_to_it() {
    let mut t = Tracker::default();
    let ev = front(&mut t, &parse("s1", "select $1")).unwrap();
    assert_eq!(ev.kind, StepKind::Prepare);
    assert_eq!(ev.text.as_deref(), Some("select $1"));
    let mut sync = Vec::new();
    codec::sync(&mut sync);
    for _ in 0..2 {
        front(&mut t, &bind("", "s1", 1));
        front(&mut t, &execute(""));
        front(&mut t, &sync);
        let ev = back(&mut t, &complete("SELECT 1"));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, StepKind::Execute);
        assert_eq!(ev[0].statement.as_deref(), Some("s1"));
        assert_eq!(ev[0].text, None);
        assert_eq!(ev[0].params, Some(1));
        assert!(back(&mut t, &ready()).is_empty());
    }
}

#[test]
fn unnamed_statement_text_goes_with_each_execute() {
    let mut t = Tracker::default();
    assert!(front(&mut t, &parse("", "update t set x = $1")).is_none());
    front(&mut t, &bind("", "", 1));
    front(&mut t, &execute(""));
    let ev = back(&mut t, &complete("UPDATE 4"));
    assert_eq!(ev[0].text.as_deref(), Some("update t set x = $1"));
    assert_eq!(ev[0].rows, Some(4));
}

#[test]
fn pipeline_error_skips_to_sync() {
    let mut t = Tracker::default();
    let mut sync = Vec::new();
    codec::sync(&mut sync);
    front(&mut t, &parse("", "select 1"));
    for _ in 0..3 {
        front(&mut t, &bind("", "", 0));
        front(&mut t, &execute(""));
    }
    front(&mut t, &sync);
    front(&mut t, &bind("", "", 0));
    front(&mut t, &execute(""));
    front(&mut t, &sync);
    let ev = back(&mut t, &complete("SELECT 1"));
    assert_eq!(ev[0].outcome, "ok");
    let ev = back(&mut t, &error("22012"));
    assert_eq!(
        ev.iter().map(|e| e.outcome).collect::<Vec<_>>(),
        vec!["error", "skipped"]
    );
    assert!(back(&mut t, &ready()).is_empty());
    // The step after the Sync runs normally.
    let ev = back(&mut t, &complete("SELECT 1"));
    assert_eq!(ev[0].outcome, "ok");
    assert!(back(&mut t, &ready()).is_empty());
    let mut out = Vec::new();
    t.drain(Instant::now(), "gone", &mut out);
    assert!(out.is_empty());
}

#[test]
fn drain_reports_unfinished() {
    let mut t = Tracker::default();
    let mut q = Vec::new();
    codec::query(&mut q, "select pg_sleep(60)").unwrap();
    front(&mut t, &q);
    let mut out = Vec::new();
    t.drain(Instant::now(), "upstream connection lost", &mut out);
    assert_eq!(out[0].outcome, "unfinished");
    assert_eq!(out[0].error.as_deref(), Some("upstream connection lost"));
}

#[test]
fn long_text_is_cut_for_the_audit() {
    let long = "x".repeat(MAX_AUDIT_TEXT + 10);
    let cut = audit_text(&long);
    assert!(cut.ends_with("[10 more bytes]"));
    assert!(cut.len() < MAX_AUDIT_TEXT + 30);
}
