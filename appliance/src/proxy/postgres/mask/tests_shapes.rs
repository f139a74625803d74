//! Result shapes: which plan each DataRow gets, across simple and extended
//! query flows, errors and pipelining.

use std::sync::Arc;

use super::copy::CopyMask;
use super::shapes::*;
use super::MaskPlan;
use crate::proxy::postgres::codec::{backend as b, frontend as f};

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn query(sql: &str) -> Vec<u8> {
    let mut v = Vec::new();
    cstr(&mut v, sql);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut v = Vec::new();
    cstr(&mut v, name);
    cstr(&mut v, sql);
    v.extend_from_slice(&0u16.to_be_bytes());
    v
}

fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut v = Vec::new();
    cstr(&mut v, portal);
    cstr(&mut v, statement);
    v.extend_from_slice(&0u16.to_be_bytes()); // parameter formats
    v.extend_from_slice(&0u16.to_be_bytes()); // parameters
    v.extend_from_slice(&1u16.to_be_bytes()); // result formats
    v.extend_from_slice(&1i16.to_be_bytes());
    v
}

fn execute(portal: &str) -> Vec<u8> {
    let mut v = Vec::new();
    cstr(&mut v, portal);
    v.extend_from_slice(&0i32.to_be_bytes());
    v
}

fn plan() -> Arc<MaskPlan> {
    Arc::new(MaskPlan::default())
}

fn row(s: &mut Shapes) -> Option<Arc<MaskPlan>> {
    match s.on_backend(b::DATA_ROW_TAG, &[0, 0]).unwrap() {
        Action::Row(p) => Some(p),
        Action::Refuse(_) => None,
        other => panic!("unexpected {other:?}"),
    }
}

fn ready(s: &mut Shapes, status: u8) {
    assert!(matches!(
        s.on_backend(b::READY_FOR_QUERY_TAG, &[status]).unwrap(),
        Action::Forward
    ));
}

#[test]
fn simple_query_rows_follow_each_row_description() {
    let mut s = Shapes::default();
    assert!(!s
        .on_frontend(f::QUERY_TAG, &query("SELECT 1; SELECT 2"))
        .unwrap());
    assert!(matches!(
        s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap(),
        Action::Plan { swallow: false }
    ));
    let p1 = plan();
    s.planned(p1.clone());
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &p1));
    s.on_backend(b::COMMAND_COMPLETE_TAG, b"SELECT 1\0")
        .unwrap();
    // Between results no row is attributable.
    assert!(row(&mut s).is_none());
    s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap();
    let p2 = plan();
    s.planned(p2.clone());
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &p2));
    ready(&mut s, b'I');
    assert!(
        row(&mut s).is_none(),
        "after ReadyForQuery nothing is expected"
    );
}

#[test]
fn bind_gets_our_describe_and_its_answer_is_swallowed() {
    let mut s = Shapes::default();
    s.on_frontend(f::PARSE_TAG, &parse("s1", "SELECT email FROM t"))
        .unwrap();
    assert!(s.on_frontend(f::BIND_TAG, &bind("", "s1")).unwrap());
    s.on_frontend(f::DESCRIBE_TAG, b"P\0").unwrap();
    s.on_frontend(f::EXECUTE_TAG, &execute("")).unwrap();
    s.on_frontend(f::SYNC_TAG, &[]).unwrap();

    assert!(matches!(
        s.on_backend(b::PARSE_COMPLETE_TAG, &[]).unwrap(),
        Action::Forward
    ));
    assert!(matches!(
        s.on_backend(b::BIND_COMPLETE_TAG, &[]).unwrap(),
        Action::Forward
    ));
    // Ours first: swallowed and planned.
    assert!(matches!(
        s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap(),
        Action::Plan { swallow: true }
    ));
    let p = plan();
    s.planned(p.clone());
    // Then the client's own Describe answer: forwarded untouched.
    assert!(matches!(
        s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap(),
        Action::Forward
    ));
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &p));
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &p));
    s.on_backend(b::COMMAND_COMPLETE_TAG, b"SELECT 2\0")
        .unwrap();
    assert!(row(&mut s).is_none());
    ready(&mut s, b'I');
}

#[test]
fn pipelined_portals_keep_their_own_plans() {
    let mut s = Shapes::default();
    for (portal, stmt) in [("a", "s1"), ("b", "s2")] {
        assert!(s.on_frontend(f::BIND_TAG, &bind(portal, stmt)).unwrap());
    }
    s.on_frontend(f::EXECUTE_TAG, &execute("b")).unwrap();
    s.on_frontend(f::EXECUTE_TAG, &execute("a")).unwrap();
    s.on_frontend(f::SYNC_TAG, &[]).unwrap();
    let (pa, pb) = (plan(), plan());
    for p in [&pa, &pb] {
        s.on_backend(b::BIND_COMPLETE_TAG, &[]).unwrap();
        assert!(matches!(
            s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap(),
            Action::Plan { swallow: true }
        ));
        s.planned(p.clone());
    }
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &pb));
    s.on_backend(b::COMMAND_COMPLETE_TAG, b"SELECT 1\0")
        .unwrap();
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &pa));
    s.on_backend(b::PORTAL_SUSPENDED_TAG, &[]).unwrap();
    ready(&mut s, b'T');
    // Inside the transaction a named portal can be executed again later.
    s.on_frontend(f::EXECUTE_TAG, &execute("a")).unwrap();
    s.on_frontend(f::SYNC_TAG, &[]).unwrap();
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &pa));
    s.on_backend(b::COMMAND_COMPLETE_TAG, b"SELECT 1\0")
        .unwrap();
    ready(&mut s, b'I');
    // The transaction ended: the portal is gone, its rows would be refused.
    s.on_frontend(f::EXECUTE_TAG, &execute("a")).unwrap();
    assert!(row(&mut s).is_none());
}

#[test]
fn no_data_portal_and_errors_skip_to_sync() {
    let mut s = Shapes::default();
    assert!(s.on_frontend(f::BIND_TAG, &bind("", "ins")).unwrap());
    s.on_frontend(f::EXECUTE_TAG, &execute("")).unwrap();
    assert!(s.on_frontend(f::BIND_TAG, &bind("", "sel")).unwrap());
    s.on_frontend(f::EXECUTE_TAG, &execute("")).unwrap();
    s.on_frontend(f::SYNC_TAG, &[]).unwrap();
    s.on_frontend(f::QUERY_TAG, &query("SELECT 1")).unwrap();

    s.on_backend(b::BIND_COMPLETE_TAG, &[]).unwrap();
    assert!(matches!(
        s.on_backend(b::NO_DATA_TAG, &[]).unwrap(),
        Action::Swallow
    ));
    // A row for a NoData portal is not attributable.
    assert!(row(&mut s).is_none());
    // The INSERT fails: the second Bind and Execute are skipped by the server.
    s.on_backend(b::ERROR_RESPONSE_TAG, b"\0").unwrap();
    ready(&mut s, b'I');
    // The next answers belong to the simple query.
    assert!(matches!(
        s.on_backend(b::ROW_DESCRIPTION_TAG, &[]).unwrap(),
        Action::Plan { swallow: false }
    ));
    let p = plan();
    s.planned(p.clone());
    assert!(Arc::ptr_eq(&row(&mut s).unwrap(), &p));
    // A stray BindComplete means the model lost track: refuse.
    assert!(matches!(
        s.on_backend(b::BIND_COMPLETE_TAG, &[]).unwrap(),
        Action::Refuse(_)
    ));
}

#[test]
fn copy_out_statements_are_recognized_in_both_protocols() {
    let mut s = Shapes::default();
    s.on_frontend(f::QUERY_TAG, &query("copy public.t (a, b) to stdout"))
        .unwrap();
    match s.on_backend(b::COPY_OUT_RESPONSE_TAG, &[0, 0, 0]).unwrap() {
        Action::CopyStart(Some(spec)) => assert_eq!(spec.columns, ["a", "b"]),
        other => panic!("{other:?}"),
    }
    let m = Arc::new(CopyMask {
        format: super::copy::CopyFormat::Binary,
        masked: vec![],
    });
    s.copy_ready(m.clone(), true);
    assert!(matches!(
        s.on_backend(b::COPY_DATA_TAG, b"a\tb\n").unwrap(),
        Action::Forward
    ));
    assert!(matches!(
        s.on_backend(b::COPY_DATA_TAG, b"x\n").unwrap(),
        Action::CopyRow(c) if Arc::ptr_eq(&c, &m)
    ));
    s.on_backend(b::COPY_DONE_TAG, &[]).unwrap();
    assert!(matches!(
        s.on_backend(b::COPY_DATA_TAG, b"x\n").unwrap(),
        Action::Refuse(_)
    ));
    s.on_backend(b::COMMAND_COMPLETE_TAG, b"COPY 1\0").unwrap();
    ready(&mut s, b'I');

    // Extended: the statement's text travels from Parse to the portal.
    s.on_frontend(f::PARSE_TAG, &parse("c", "COPY t TO STDOUT WITH CSV"))
        .unwrap();
    s.on_frontend(f::BIND_TAG, &bind("", "c")).unwrap();
    s.on_frontend(f::EXECUTE_TAG, &execute("")).unwrap();
    s.on_frontend(f::SYNC_TAG, &[]).unwrap();
    s.on_backend(b::BIND_COMPLETE_TAG, &[]).unwrap();
    s.on_backend(b::NO_DATA_TAG, &[]).unwrap();
    assert!(matches!(
        s.on_backend(b::COPY_OUT_RESPONSE_TAG, &[0, 0, 0]).unwrap(),
        Action::CopyStart(Some(_))
    ));
    // A COPY the model did not recognize still announces itself (spec None).
    ready(&mut s, b'I');
    s.on_frontend(f::QUERY_TAG, &query("SELECT 1; COPY t TO STDOUT"))
        .unwrap();
    assert!(matches!(
        s.on_backend(b::COPY_OUT_RESPONSE_TAG, &[0, 0, 0]).unwrap(),
        Action::CopyStart(None)
    ));
    assert!(matches!(
        s.on_backend(b::COPY_BOTH_RESPONSE_TAG, &[0, 0, 0]).unwrap(),
        Action::Refuse(_)
    ));
}

#[test]
fn describe_frame_is_well_formed() {
    let mut out = Vec::new();
    describe_portal(b"p1", &mut out);
    assert_eq!(out, b"D\0\0\0\x08Pp1\0");
    let d = f::Describe::parse(&out[5..]).unwrap();
    assert_eq!(d.target, f::Target::Portal);
    assert_eq!(d.name.as_bytes(), b"p1");
}
