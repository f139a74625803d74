//! View tests: each frontend and backend view decoded from hand-built
//! bodies (layouts from the protocol's message-formats chapter), their
//! length lies, and the DataRow rebuild used by masking.

use super::backend::*;
use super::frontend::*;
use super::tests::frame;
use super::*;

/// Concatenates byte pieces.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------- frontend

#[test]
fn query_view() {
    let q = Query::parse(b"SELECT 1; SELECT 2\0").unwrap();
    assert_eq!(q.sql.to_str(), Ok("SELECT 1; SELECT 2"));
    assert_eq!(Query::parse(b"SELECT 1"), Err(CodecError::MissingNul));
    assert_eq!(Query::parse(b"SELECT 1\0x"), Err(CodecError::TrailingBytes));
    // Non-UTF-8 client encodings are carried; UTF-8 is checked on request.
    let latin1 = Query::parse(b"SELECT '\xe9'\0").unwrap();
    assert_eq!(latin1.sql.to_str(), Err(CodecError::NotUtf8));
    assert_eq!(latin1.sql.as_bytes(), b"SELECT '\xe9'");
}

#[test]
fn parse_view() {
    let body = cat(&[
        b"s1\0",
        b"SELECT $1, $2\0",
        &[0, 2],
        &[0, 0, 0, 23],
        &[0, 0, 0, 0],
    ]);
    let p = Parse::parse(&body).unwrap();
    assert_eq!((p.name, p.query), ("s1".into(), "SELECT $1, $2".into()));
    assert_eq!(p.param_type_count(), 2);
    assert_eq!(p.param_types().collect::<Vec<_>>(), [23, 0]);
    // Count says 3 types, 2 present.
    let lie = cat(&[b"\0", b"q\0", &[0, 3], &[0; 8]]);
    assert_eq!(Parse::parse(&lie), Err(CodecError::Truncated));
    let extra = cat(&[b"\0", b"q\0", &[0, 0], &[0]]);
    assert_eq!(Parse::parse(&extra), Err(CodecError::TrailingBytes));
}

#[test]
fn bind_view() {
    let body = cat(&[
        b"portal\0stmt\0",
        &[0, 1, 0, 1], // one format code: binary for all
        &[0, 3],       // three values
        &[0, 0, 0, 2],
        b"42",                     // "42"
        &[0xff, 0xff, 0xff, 0xff], // NULL
        &[0, 0, 0, 0],             // empty
        &[0, 2, 0, 0, 0, 1],       // result formats: text, binary
    ]);
    let b = Bind::parse(&body).unwrap();
    assert_eq!((b.portal, b.statement), ("portal".into(), "stmt".into()));
    assert_eq!(b.param_formats().collect::<Vec<_>>(), [1]);
    assert_eq!((b.param_format(0), b.param_format(2)), (1, 1));
    assert_eq!(b.param_count(), 3);
    let values: Vec<_> = b.params().collect();
    assert_eq!(values, [Some(&b"42"[..]), None, Some(&b""[..])]);
    assert_eq!(b.params().len(), 3);
    assert_eq!(b.result_formats().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        (b.result_format(0), b.result_format(1), b.result_format(5)),
        (0, 1, 0)
    );
    // A value claiming more bytes than the message holds.
    let lie = cat(&[
        b"\0\0",
        &[0, 0],
        &[0, 1],
        &[0x7f, 0xff, 0xff, 0xff],
        b"x",
        &[0, 0],
    ]);
    assert_eq!(Bind::parse(&lie), Err(CodecError::Truncated));
    let neg = cat(&[
        b"\0\0",
        &[0, 0],
        &[0, 1],
        &[0xff, 0xff, 0xff, 0xfe],
        &[0, 0],
    ]);
    assert_eq!(Bind::parse(&neg), Err(CodecError::BadValueLength(-2)));
    // No format codes: everything text.
    let plain = cat(&[b"\0\0", &[0, 0, 0, 0, 0, 0]]);
    let plain = Bind::parse(&plain).unwrap();
    assert_eq!(
        (
            plain.param_count(),
            plain.param_format(0),
            plain.result_format(0)
        ),
        (0, 0, 0)
    );
}

#[test]
fn execute_describe_close_views() {
    let e = Execute::parse(b"p1\0\0\0\0\x0a").unwrap();
    assert_eq!((e.portal, e.max_rows), ("p1".into(), 10));
    assert_eq!(Execute::parse(b"p1\0\0\0"), Err(CodecError::Truncated));
    let d = Describe::parse(b"Sstmt\0").unwrap();
    assert_eq!((d.target, d.name), (Target::Statement, "stmt".into()));
    let d = Describe::parse(b"P\0").unwrap();
    assert_eq!((d.target, d.name.is_empty()), (Target::Portal, true));
    assert_eq!(Describe::parse(b"Xa\0"), Err(CodecError::BadTarget(b'X')));
    let c = Close::parse(b"Ps\0").unwrap();
    assert_eq!(
        (c.target, c.name, c.target.byte()),
        (Target::Portal, "s".into(), b'P')
    );
    assert_eq!(Close::parse(b""), Err(CodecError::Truncated));
}

#[test]
fn copy_and_function_call_views() {
    assert_eq!(CopyData::parse(b"1\t2\n").unwrap().data, b"1\t2\n");
    assert_eq!(CopyFail::parse(b"aborted\0").unwrap().message, "aborted");
    let body = cat(&[
        &[0, 0, 0x04, 0xd2], // function OID 1234
        &[0, 1, 0, 0],       // one arg format: text
        &[0, 2],             // two args
        &[0, 0, 0, 1],
        b"7",
        &[0xff, 0xff, 0xff, 0xff],
        &[0, 1], // binary result
    ]);
    let f = FunctionCall::parse(&body).unwrap();
    assert_eq!((f.function, f.arg_count(), f.result_format), (1234, 2, 1));
    assert_eq!(f.arg_formats().collect::<Vec<_>>(), [0]);
    assert_eq!(f.args().collect::<Vec<_>>(), [Some(&b"7"[..]), None]);
    assert_eq!(
        FunctionCall::parse(&body[..body.len() - 1]),
        Err(CodecError::Truncated)
    );
}

#[test]
fn password_and_sasl_views() {
    assert_eq!(
        PasswordMessage::parse(b"md5abc\0").unwrap().password,
        "md5abc"
    );
    let body = cat(&[b"SCRAM-SHA-256\0", &[0, 0, 0, 3], b"n,,"]);
    let s = SaslInitialResponse::parse(&body).unwrap();
    assert_eq!(
        (s.mechanism, s.data),
        ("SCRAM-SHA-256".into(), Some(&b"n,,"[..]))
    );
    let none = SaslInitialResponse::parse(b"X\0\xff\xff\xff\xff").unwrap();
    assert_eq!(none.data, None);
    assert_eq!(SaslResponse::parse(b"c=biws").unwrap().data, b"c=biws");
}

// ----------------------------------------------------------------- backend

#[test]
fn authentication_views() {
    assert_eq!(Authentication::parse(&[0, 0, 0, 0]), Ok(Authentication::Ok));
    assert_eq!(
        Authentication::parse(&[0, 0, 0, 3]),
        Ok(Authentication::CleartextPassword)
    );
    assert_eq!(
        Authentication::parse(&[0, 0, 0, 5, 1, 2, 3, 4]),
        Ok(Authentication::Md5Password { salt: [1, 2, 3, 4] })
    );
    assert_eq!(
        Authentication::parse(&[0, 0, 0, 5, 1, 2, 3]),
        Err(CodecError::Truncated)
    );
    let sasl = cat(&[&[0, 0, 0, 10], b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"]);
    let Ok(Authentication::Sasl(m)) = Authentication::parse(&sasl) else {
        panic!("not SASL");
    };
    let names: Vec<_> = m.iter().collect();
    assert_eq!(
        names,
        [
            PgStr::from("SCRAM-SHA-256-PLUS"),
            PgStr::from("SCRAM-SHA-256")
        ]
    );
    assert!(m.contains("SCRAM-SHA-256") && !m.contains("PLAIN"));
    let unterminated = cat(&[&[0, 0, 0, 10], b"SCRAM-SHA-256\0"]);
    assert_eq!(
        Authentication::parse(&unterminated),
        Err(CodecError::MissingNul)
    );
    let cont = cat(&[&[0, 0, 0, 11], b"r=abc,s=xyz,i=4096"]);
    assert_eq!(
        Authentication::parse(&cont),
        Ok(Authentication::SaslContinue {
            data: b"r=abc,s=xyz,i=4096"
        })
    );
    let fin = cat(&[&[0, 0, 0, 12], b"v=sig"]);
    assert_eq!(
        Authentication::parse(&fin),
        Ok(Authentication::SaslFinal { data: b"v=sig" })
    );
    assert_eq!(
        Authentication::parse(&[0, 0, 0, 99]),
        Err(CodecError::BadAuthSubtype(99))
    );
    assert_eq!(
        Authentication::parse(&[0, 0, 0, 0, 0]),
        Err(CodecError::TrailingBytes)
    );
    // The encoder's AuthenticationOk decodes back.
    let mut out = Vec::new();
    authentication_ok(&mut out);
    let (f, _) = decode_frame(&out, 64).unwrap().unwrap();
    assert_eq!(
        (f.tag, Authentication::parse(f.body)),
        (AUTHENTICATION_TAG, Ok(Authentication::Ok))
    );
}

#[test]
fn status_key_and_ready_views() {
    let p = ParameterStatus::parse(b"server_version\x0017.2\0").unwrap();
    assert_eq!((p.name, p.value), ("server_version".into(), "17.2".into()));
    let k = BackendKeyData::parse(&[0, 0, 0, 9, 1, 2, 3, 4]).unwrap();
    assert_eq!((k.process_id, k.secret_key), (9, &[1u8, 2, 3, 4][..]));
    let long = cat(&[&[0, 0, 0, 9], &[7; 32]]);
    assert_eq!(BackendKeyData::parse(&long).unwrap().secret_key.len(), 32);
    assert_eq!(
        BackendKeyData::parse(&[0, 0, 0, 9, 1, 2, 3]),
        Err(CodecError::BadKeyLength(3))
    );
    assert_eq!(
        ReadyForQuery::parse(b"T").unwrap().status,
        TransactionStatus::InTransaction
    );
    assert_eq!(
        ReadyForQuery::parse(b"E").unwrap().status,
        TransactionStatus::Failed
    );
    assert_eq!(
        ReadyForQuery::parse(b"X"),
        Err(CodecError::BadTransactionStatus(b'X'))
    );
    assert_eq!(ReadyForQuery::parse(b"II"), Err(CodecError::TrailingBytes));
}

#[test]
fn row_description_view_round_trips() {
    let body = cat(&[
        &[0, 2],
        b"id\0",
        &[0, 0, 0x40, 0],
        &[0, 1],
        &[0, 0, 0, 23],
        &[0, 4],
        &[0xff; 4],
        &[0, 0],
        b"email\0",
        &[0, 0, 0x40, 0],
        &[0, 2],
        &[0, 0, 0, 25],
        &[0xff, 0xff],
        &[0xff; 4],
        &[0, 1],
    ]);
    let rd = RowDescription::parse(&body).unwrap();
    assert_eq!(rd.len(), 2);
    let fields: Vec<_> = rd.fields().collect();
    assert_eq!(fields[1].name, "email");
    assert_eq!(
        (
            fields[1].table_oid,
            fields[1].column_id,
            fields[1].type_oid,
            fields[1].type_size
        ),
        (16384, 2, 25, -1)
    );
    assert_eq!((fields[0].type_modifier, fields[1].format), (-1, 1));
    // Masking may switch a column to text; the rebuilt message stays valid.
    let mut out = Vec::new();
    row_description(&mut out, rd.fields().map(|f| Field { format: 0, ..f })).unwrap();
    let (f, _) = decode_frame(&out, 1024).unwrap().unwrap();
    let again = RowDescription::parse(f.body).unwrap();
    assert!(again.fields().all(|f| f.format == 0));
    assert_eq!(
        again.fields().map(|f| f.name).collect::<Vec<_>>(),
        ["id", "email"]
    );
    assert_eq!(
        RowDescription::parse(&body[..body.len() - 1]),
        Err(CodecError::Truncated)
    );
    assert_eq!(
        RowDescription::parse(&cat(&[&body, b"x"])),
        Err(CodecError::TrailingBytes)
    );
    assert!(RowDescription::parse(&[0, 0]).unwrap().is_empty());
}

#[test]
fn data_row_view() {
    let body = cat(&[&[0, 3], &[0, 0, 0, 1], b"1", &[0xff; 4], &[0, 0, 0, 0]]);
    let row = DataRow::parse(&body).unwrap();
    assert_eq!(row.len(), 3);
    assert_eq!(
        row.values().collect::<Vec<_>>(),
        [Some(&b"1"[..]), None, Some(&b""[..])]
    );
    // Count says 4 values, 3 present; a length running past the end.
    let mut lie = body.clone();
    lie[1] = 4;
    assert_eq!(DataRow::parse(&lie), Err(CodecError::Truncated));
    let long = cat(&[&[0, 1], &[0, 0, 0, 9], b"short"]);
    assert_eq!(DataRow::parse(&long), Err(CodecError::Truncated));
    let neg = cat(&[&[0, 1], &[0x80, 0, 0, 0]]);
    assert_eq!(
        DataRow::parse(&neg),
        Err(CodecError::BadValueLength(i32::MIN))
    );
}

#[test]
fn data_row_rebuild_round_trips_with_nulls_and_empties() {
    let values: [Option<&[u8]>; 5] = [Some(b"42"), None, Some(b""), Some(b"a@b.example"), None];
    let mut wire = Vec::new();
    data_row(&mut wire, values).unwrap();
    let (f, n) = decode_frame(&wire, 1 << 20).unwrap().unwrap();
    assert_eq!((f.tag, n), (DATA_ROW_TAG, wire.len()));
    let row = DataRow::parse(f.body).unwrap();

    // Unchanged rebuild: byte-identical.
    let mut same = Vec::new();
    let mut b = DataRowBuilder::new(&mut same);
    for v in row.values() {
        b.push(v);
    }
    assert_eq!(b.len(), 5);
    b.finish().unwrap();
    assert_eq!(same, wire);

    // Mask column 3 in place (longer value), blank column 0 (shorter).
    let mut masked = b"already here".to_vec();
    let mut b = DataRowBuilder::new(&mut masked);
    for (i, v) in row.values().enumerate() {
        match (i, v) {
            (0, Some(_)) => b.value(b"*"),
            (3, Some(v)) => b.value_with(|out| {
                out.extend_from_slice(b"****");
                out.extend_from_slice(&v[v.len() - 4..]);
            }),
            (_, v) => b.push(v),
        }
    }
    b.finish().unwrap();
    let (f, n) = decode_frame(&masked[12..], 1 << 20).unwrap().unwrap();
    assert_eq!(n, masked.len() - 12);
    let again: Vec<_> = DataRow::parse(f.body).unwrap().values().collect();
    assert_eq!(
        again,
        [
            Some(&b"*"[..]),
            None,
            Some(&b""[..]),
            Some(&b"****mple"[..]),
            None
        ]
    );
}

#[test]
fn command_complete_rows() {
    for (tag, rows) in [
        ("SELECT 5", Some(5)),
        ("INSERT 0 3", Some(3)),
        ("UPDATE 0", Some(0)),
        ("DELETE 10", Some(10)),
        ("MERGE 2", Some(2)),
        ("COPY 1000000", Some(1_000_000)),
        ("FETCH 1", Some(1)),
        ("MOVE 4", Some(4)),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("INSERT 0", None),
        ("SELECT x", None),
        ("SELECT 1 2", None),
    ] {
        let body = cat(&[tag.as_bytes(), b"\0"]);
        let cc = CommandComplete::parse(&body).unwrap();
        assert_eq!((cc.tag, cc.rows()), (tag, rows), "{tag}");
    }
    let cc = CommandComplete::parse(b"CREATE TABLE\0").unwrap();
    assert_eq!(cc.command(), "CREATE");
    assert_eq!(
        CommandComplete::parse(b"SELECT 1"),
        Err(CodecError::MissingNul)
    );
}

#[test]
fn error_and_notice_views() {
    let mut wire = Vec::new();
    let d = Diagnostic::new(Severity::Error, "42P01", "relation \"x\" does not exist")
        .with_hint("check the name");
    error_response(&mut wire, &d).unwrap();
    let (f, _) = decode_frame(&wire, 1024).unwrap().unwrap();
    assert_eq!(f.tag, ERROR_RESPONSE_TAG);
    let e = ErrorResponse::parse(f.body).unwrap();
    assert_eq!(e.sqlstate(), Some("42P01"));
    assert_eq!(e.message(), Some("relation \"x\" does not exist".into()));
    assert_eq!(e.severity(), Some("ERROR".into()));
    assert_eq!(
        (e.hint(), e.detail()),
        (Some("check the name".into()), None)
    );
    assert_eq!(e.fields().count(), 5);
    // A localized 'S' with no 'V' (servers before 9.6) still gives a severity.
    let old = NoticeResponse::parse(b"SAVIS\0Mm\0\0").unwrap();
    assert_eq!(
        (old.severity(), old.sqlstate()),
        (Some("AVIS".into()), None)
    );
    assert_eq!(ErrorNotice::parse(b"\0").unwrap().fields().count(), 0);
    assert_eq!(ErrorNotice::parse(b"SERROR\0"), Err(CodecError::Truncated));
    assert_eq!(ErrorNotice::parse(b"SERROR"), Err(CodecError::MissingNul));
    assert_eq!(ErrorNotice::parse(b"\0x"), Err(CodecError::TrailingBytes));
}

#[test]
fn notification_parameter_description_copy_negotiate_views() {
    let n = NotificationResponse::parse(b"\0\0\0\x07chan\0hello\0").unwrap();
    assert_eq!(
        (n.process_id, n.channel, n.payload),
        (7, "chan".into(), "hello".into())
    );
    let pd = ParameterDescription::parse(&[0, 2, 0, 0, 0, 23, 0, 0, 0, 25]).unwrap();
    assert_eq!(
        (pd.len(), pd.types().collect::<Vec<_>>()),
        (2, vec![23, 25])
    );
    assert_eq!(
        ParameterDescription::parse(&[0, 2, 0, 0, 0, 23]),
        Err(CodecError::Truncated)
    );
    let c = CopyResponse::parse(&[0, 0, 2, 0, 0, 0, 0]).unwrap();
    assert_eq!(
        (c.format, c.column_formats().collect::<Vec<_>>()),
        (0, vec![0, 0])
    );
    assert_eq!(CopyResponse::parse(&[1, 0, 1]), Err(CodecError::Truncated));
    let v = cat(&[&[0, 0, 0, 0], &[0, 0, 0, 1], b"_pq_.opt\0"]);
    let v = NegotiateProtocolVersion::parse(&v).unwrap();
    assert_eq!(v.newest_minor, 0);
    assert_eq!(
        v.unrecognized_options().collect::<Vec<_>>(),
        [PgStr::from("_pq_.opt")]
    );
    let lie = cat(&[&[0, 0, 0, 0], &[0x7f, 0xff, 0xff, 0xff], b"a\0"]);
    assert_eq!(
        NegotiateProtocolVersion::parse(&lie),
        Err(CodecError::Truncated)
    );
    assert_eq!(FunctionCallResponse::parse(&[0xff; 4]).unwrap().value, None);
    assert_eq!(
        FunctionCallResponse::parse(&[0, 0, 0, 1, 9]).unwrap().value,
        Some(&[9u8][..])
    );
}

#[test]
fn bodiless_backend_messages() {
    for tag in [
        NO_DATA_TAG,
        PARSE_COMPLETE_TAG,
        BIND_COMPLETE_TAG,
        CLOSE_COMPLETE_TAG,
        PORTAL_SUSPENDED_TAG,
        EMPTY_QUERY_RESPONSE_TAG,
    ] {
        let wire = frame(tag, b"");
        let (f, n) = decode_frame(&wire, 64).unwrap().unwrap();
        assert_eq!((f.tag, n, parse_empty(f.body)), (tag, 5, Ok(())));
    }
}

#[test]
fn pg_str_display_and_debug() {
    let s = PgStr::new(b"caf\xe9");
    assert_eq!(s.to_string(), "caf\u{FFFD}");
    assert_eq!(format!("{s:?}"), "b\"caf\\xe9\"");
    assert_eq!(format!("{:?}", PgStr::from("ok")), "\"ok\"");
}
