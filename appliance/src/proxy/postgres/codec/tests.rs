//! Codec tests: startup and frame decoding (bounds, prefixes, lies) and
//! encoders against hand-built golden bytes. View decoding is in
//! `tests_views.rs`, the random-bytes loop in `tests_fuzz.rs`.

use bytes::BytesMut;

use super::backend::{Field, TransactionStatus};
use super::*;

/// A tagged frame with a correct length.
pub(super) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An untagged startup packet with a correct length.
fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = (rest.len() as u32 + 8).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

fn assert_prefixes_incomplete_startup(bytes: &[u8]) {
    for n in 0..bytes.len() {
        assert_eq!(
            decode_startup(&bytes[..n]),
            Ok(None),
            "prefix {n} of {bytes:?}"
        );
    }
}

fn assert_prefixes_incomplete_frame(bytes: &[u8]) {
    for n in 0..bytes.len() {
        assert_eq!(
            decode_frame(&bytes[..n], DEFAULT_MAX_MESSAGE),
            Ok(None),
            "prefix {n}"
        );
    }
}

// ----------------------------------------------------------------- startup

#[test]
fn startup_ssl_and_gssenc_requests() {
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert_eq!(
        decode_startup(&ssl),
        Ok(Some((StartupMessage::SslRequest, 8)))
    );
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    assert_eq!(
        decode_startup(&gss),
        Ok(Some((StartupMessage::GssEncRequest, 8)))
    );
    assert_prefixes_incomplete_startup(&ssl);
    // A following StartupMessage is not consumed.
    let mut two = ssl.to_vec();
    two.extend_from_slice(&packet(196_608, b"user\0a\0\0"));
    assert_eq!(decode_startup(&two).map(|o| o.map(|(_, n)| n)), Ok(Some(8)));
}

#[test]
fn startup_ssl_request_with_wrong_length_fails_at_eight_bytes() {
    let mut lie = packet(SSL_REQUEST_CODE, &[0; 8]);
    lie.truncate(8);
    assert_eq!(decode_startup(&lie), Err(CodecError::TrailingBytes));
}

#[test]
fn startup_v30_with_params() {
    let bytes = packet(
        196_608,
        b"user\0alice\0database\0prod\0application_name\0psql\0\0",
    );
    assert_prefixes_incomplete_startup(&bytes);
    let Some((StartupMessage::Startup(s), n)) = decode_startup(&bytes).unwrap() else {
        panic!("not a startup");
    };
    assert_eq!(n, bytes.len());
    assert_eq!(s.version, ProtocolVersion::V3_0);
    assert_eq!((s.version.major(), s.version.minor()), (3, 0));
    let pairs: Vec<_> = s.params.iter().collect();
    assert_eq!(
        pairs,
        [
            ("user", "alice"),
            ("database", "prod"),
            ("application_name", "psql")
        ]
    );
    assert_eq!(s.params.user(), Some("alice"));
    assert_eq!(s.params.database(), Some("prod"));
    assert_eq!(s.params.get("options"), None);
}

#[test]
fn startup_v32_and_empty_values() {
    let bytes = packet(196_610, b"user\0bob\0options\0\0\0");
    let Some((StartupMessage::Startup(s), _)) = decode_startup(&bytes).unwrap() else {
        panic!("not a startup");
    };
    assert_eq!(s.version, ProtocolVersion::V3_2);
    assert_eq!(s.version.code(), 196_610);
    assert_eq!(s.params.get("options"), Some(""));
    // No parameters at all: only the terminator.
    let bytes = packet(196_608, b"\0");
    let Some((StartupMessage::Startup(s), _)) = decode_startup(&bytes).unwrap() else {
        panic!("not a startup");
    };
    assert!(s.params.is_empty());
    assert_eq!(s.params.iter().count(), 0);
}

#[test]
fn startup_cancel_requests_30_and_32() {
    let bytes = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 42, 1, 2, 3, 4]);
    assert_prefixes_incomplete_startup(&bytes);
    let expect = StartupMessage::Cancel(CancelRequest {
        process_id: 42,
        secret_key: &[1, 2, 3, 4],
    });
    assert_eq!(decode_startup(&bytes), Ok(Some((expect, 16))));
    let mut rest = vec![0, 0, 1, 0];
    rest.extend_from_slice(&[7; 256]);
    let bytes = packet(CANCEL_REQUEST_CODE, &rest);
    let Some((StartupMessage::Cancel(c), 268)) = decode_startup(&bytes).unwrap() else {
        panic!("not a 3.2 cancel");
    };
    assert_eq!((c.process_id, c.secret_key.len()), (256, 256));
}

#[test]
fn startup_cancel_key_length_checked_from_header() {
    let short = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 1, 1, 2, 3]);
    assert_eq!(decode_startup(&short), Err(CodecError::BadKeyLength(3)));
    // 257-byte key: refused from the first 8 bytes.
    let mut long = (12u32 + 257).to_be_bytes().to_vec();
    long.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    assert_eq!(decode_startup(&long), Err(CodecError::BadKeyLength(257)));
    let tiny = packet(CANCEL_REQUEST_CODE, &[]);
    assert_eq!(decode_startup(&tiny), Err(CodecError::BadKeyLength(0)));
}

#[test]
fn startup_length_lies_fail_from_the_length_word() {
    // Claims 2 GB: refused from 4 bytes, nothing reserved.
    let e = decode_startup(&[0x80, 0, 0, 0]).unwrap_err();
    assert_eq!(
        e,
        CodecError::LengthTooLarge {
            len: 0x8000_0000,
            max: MAX_STARTUP + 4
        }
    );
    assert_eq!(
        decode_startup(&[0, 0, 0, 3]),
        Err(CodecError::LengthTooSmall(3))
    );
    assert_eq!(
        decode_startup(&[0, 0, 0, 0]),
        Err(CodecError::LengthTooSmall(0))
    );
    assert_eq!(
        decode_startup(&[0, 0, 0, 7, 0]),
        Err(CodecError::LengthTooSmall(7))
    );
    // PostgreSQL's bound: 10000 bytes after the length word.
    let at_max = ((MAX_STARTUP + 4) as u32).to_be_bytes();
    assert_eq!(decode_startup(&at_max), Ok(None));
    let over = ((MAX_STARTUP + 5) as u32).to_be_bytes();
    assert!(matches!(
        decode_startup(&over),
        Err(CodecError::LengthTooLarge { .. })
    ));
}

#[test]
fn startup_unknown_protocol_fails_at_eight_bytes() {
    let mut v2 = 1000u32.to_be_bytes().to_vec();
    v2.extend_from_slice(&0x0002_0000u32.to_be_bytes());
    let e = decode_startup(&v2).unwrap_err();
    assert_eq!(e, CodecError::UnknownProtocol(0x0002_0000));
    assert!(e.to_string().contains("2.0"), "{e}");
    let v31 = packet(0x0003_0001, b"user\0a\0\0");
    assert_eq!(
        decode_startup(&v31),
        Err(CodecError::UnknownProtocol(0x0003_0001))
    );
    assert!(decode_startup(&v31)
        .unwrap_err()
        .to_string()
        .contains("3.1"));
}

#[test]
fn startup_parameters_must_fill_the_packet_exactly() {
    let no_terminator = packet(196_608, b"user\0bob\0");
    assert_eq!(decode_startup(&no_terminator), Err(CodecError::MissingNul));
    let no_value = packet(196_608, b"user\0\0");
    assert_eq!(decode_startup(&no_value), Err(CodecError::MissingNul));
    let unterminated_value = packet(196_608, b"user\0bob");
    assert_eq!(
        decode_startup(&unterminated_value),
        Err(CodecError::MissingNul)
    );
    let garbage_after = packet(196_608, b"user\0bob\0\0x\0");
    assert_eq!(
        decode_startup(&garbage_after),
        Err(CodecError::TrailingBytes)
    );
    let garbage_tail = packet(196_608, b"user\0bob\0\0xyz");
    assert_eq!(decode_startup(&garbage_tail), Err(CodecError::MissingNul));
    let empty = packet(196_608, b"");
    assert_eq!(decode_startup(&empty), Err(CodecError::MissingNul));
    let latin1 = packet(196_608, b"user\0b\xe9b\0\0");
    assert_eq!(decode_startup(&latin1), Err(CodecError::NotUtf8));
}

// ------------------------------------------------------------------ frames

#[test]
fn frame_decode_and_prefixes() {
    let mut bytes = frame(b'Q', b"SELECT 1\0");
    assert_prefixes_incomplete_frame(&bytes);
    bytes.extend_from_slice(&frame(b'S', b""));
    let (f, n) = decode_frame(&bytes, DEFAULT_MAX_MESSAGE).unwrap().unwrap();
    assert_eq!((f.tag, f.body, n), (b'Q', &b"SELECT 1\0"[..], 14));
    let (f, n) = decode_frame(&bytes[n..], DEFAULT_MAX_MESSAGE)
        .unwrap()
        .unwrap();
    assert_eq!((f.tag, f.body, n), (b'S', &b""[..], 5));
}

#[test]
fn frame_length_lies_fail_from_the_header() {
    assert_eq!(
        decode_frame(&[b'Q', 0, 0, 0, 3], DEFAULT_MAX_MESSAGE),
        Err(CodecError::LengthTooSmall(3))
    );
    // A client claiming 2 GB is refused from 5 bytes.
    assert_eq!(
        decode_frame(&[b'Q', 0x80, 0, 0, 0], DEFAULT_MAX_MESSAGE),
        Err(CodecError::LengthTooLarge {
            len: 0x8000_0000,
            max: DEFAULT_MAX_MESSAGE
        })
    );
    assert_eq!(
        decode_frame(&[b'd', 0, 0, 1, 1], 256),
        Err(CodecError::LengthTooLarge { len: 257, max: 256 })
    );
    assert_eq!(decode_frame(&[b'd', 0, 0, 1, 0], 256), Ok(None));
    // A max above the protocol's own limit is clamped to i32::MAX.
    assert_eq!(
        frame_len(&[b'D', 0xff, 0xff, 0xff, 0xff], usize::MAX),
        Err(CodecError::LengthTooLarge {
            len: 0xffff_ffff,
            max: i32::MAX as usize
        })
    );
}

#[test]
fn frame_len_for_streaming() {
    assert_eq!(frame_len(&[b'd', 0, 0, 0, 4], 1 << 30), Ok(5));
    assert_eq!(
        frame_len(&[b'd', 0x3f, 0xff, 0xff, 0xff], 1 << 30),
        Ok(1 << 30)
    );
    assert_eq!(
        frame_len(&[b'd', 0x40, 0, 0, 0], 1 << 30),
        Ok((1 << 30) + 1)
    );
    assert!(frame_len(&[b'd', 0x40, 0, 0, 1], 1 << 30).is_err());
}

#[test]
fn empty_messages() {
    assert_eq!(parse_empty(b""), Ok(()));
    assert_eq!(parse_empty(b"x"), Err(CodecError::NotEmpty));
}

#[test]
fn errors_are_copy_and_readable() {
    let e = CodecError::LengthTooLarge { len: 5, max: 4 };
    let copy = e;
    assert_eq!(
        copy.to_string(),
        "invalid message length 5: exceeds the limit of 4 bytes"
    );
    assert_eq!(
        CodecError::BadAuthSubtype(99).to_string(),
        "unsupported authentication request 99"
    );
}

// ---------------------------------------------------------------- encoders

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = b"prefix".to_vec();
    f(&mut v);
    assert_eq!(&v[..6], b"prefix", "encoders append");
    v.split_off(6)
}

#[test]
fn encode_backend_golden() {
    assert_eq!(encoded(authentication_ok), b"R\0\0\0\x08\0\0\0\0");
    assert_eq!(
        encoded(|b| error_response(b, &Diagnostic::new(Severity::Error, "08P01", "bad")).unwrap()),
        b"E\0\0\0\x1fSERROR\0VERROR\0C08P01\0Mbad\0\0"
    );
    let d = Diagnostic::new(Severity::Fatal, "28000", "no")
        .with_detail("d")
        .with_hint("h");
    assert_eq!(
        encoded(|b| error_response(b, &d).unwrap()),
        b"E\0\0\0\x24SFATAL\0VFATAL\0C28000\0Mno\0Dd\0Hh\0\0"
    );
    let n = Diagnostic::new(Severity::Notice, "00000", "hi");
    assert_eq!(
        encoded(|b| notice_response(b, &n).unwrap()),
        b"N\0\0\0\x20SNOTICE\0VNOTICE\0C00000\0Mhi\0\0"
    );
    assert_eq!(
        encoded(|b| parameter_status(b, "client_encoding", "UTF8").unwrap()),
        b"S\0\0\0\x19client_encoding\0UTF8\0"
    );
    assert_eq!(
        encoded(|b| backend_key_data(b, 0x0102_0304, [0xa, 0xb, 0xc, 0xd])),
        b"K\0\0\0\x0c\x01\x02\x03\x04\x0a\x0b\x0c\x0d"
    );
    let mut want = b"K\0\0\0\x28\0\0\0\x07".to_vec();
    want.extend_from_slice(&[0x5a; 32]);
    assert_eq!(
        encoded(|b| backend_key_data_var(b, 7, &[0x5a; 32]).unwrap()),
        want
    );
    assert_eq!(
        encoded(|b| ready_for_query(b, TransactionStatus::Idle)),
        b"Z\0\0\0\x05I"
    );
    assert_eq!(
        encoded(|b| ready_for_query(b, TransactionStatus::InTransaction)),
        b"Z\0\0\0\x05T"
    );
    assert_eq!(
        encoded(|b| ready_for_query(b, TransactionStatus::Failed)),
        b"Z\0\0\0\x05E"
    );
    assert_eq!(
        encoded(|b| command_complete(b, "SELECT 1").unwrap()),
        b"C\0\0\0\x0dSELECT 1\0"
    );
    assert_eq!(encoded(empty_query_response), b"I\0\0\0\x04");
    assert_eq!(encoded(parse_complete), b"1\0\0\0\x04");
    assert_eq!(encoded(bind_complete), b"2\0\0\0\x04");
}

#[test]
fn encode_row_description_and_data_row_golden() {
    let id = Field {
        name: "id".into(),
        table_oid: 16384,
        column_id: 1,
        type_oid: 23,
        type_size: 4,
        type_modifier: -1,
        format: 0,
    };
    assert_eq!(
        encoded(|b| row_description(b, [id]).unwrap()),
        b"T\0\0\0\x1b\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"
    );
    assert_eq!(
        encoded(|b| row_description(b, []).unwrap()),
        b"T\0\0\0\x06\0\0"
    );
    let values: [Option<&[u8]>; 3] = [Some(b"1"), None, Some(b"")];
    assert_eq!(
        encoded(|b| data_row(b, values).unwrap()),
        b"D\0\0\0\x13\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0"
    );
}

#[test]
fn encode_frontend_golden() {
    let params = [("user", "bob"), ("database", "db")];
    assert_eq!(
        encoded(|b| startup_message(b, ProtocolVersion::V3_0, params).unwrap()),
        b"\0\0\0\x1e\0\x03\0\0user\0bob\0database\0db\0\0"
    );
    assert_eq!(
        encoded(|b| startup_message(b, ProtocolVersion::V3_2, []).unwrap()),
        b"\0\0\0\x09\0\x03\0\x02\0"
    );
    assert_eq!(encoded(ssl_request), b"\0\0\0\x08\x04\xd2\x16\x2f");
    assert_eq!(encoded(gssenc_request), b"\0\0\0\x08\x04\xd2\x16\x30");
    assert_eq!(
        encoded(|b| cancel_request(b, 1, &[1, 2, 3, 4]).unwrap()),
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\x01\x02\x03\x04"
    );
    assert_eq!(
        encoded(|b| password_message(b, b"secret").unwrap()),
        b"p\0\0\0\x0bsecret\0"
    );
    assert_eq!(
        encoded(|b| sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc").unwrap()),
        b"p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc"
    );
    assert_eq!(
        encoded(|b| sasl_response(b, b"c=biws").unwrap()),
        b"p\0\0\0\x0ac=biws"
    );
    assert_eq!(
        encoded(|b| query(b, "SELECT 1").unwrap()),
        b"Q\0\0\0\x0dSELECT 1\0"
    );
    assert_eq!(encoded(terminate), b"X\0\0\0\x04");
    assert_eq!(encoded(sync), b"S\0\0\0\x04");
    assert_eq!(encoded(flush), b"H\0\0\0\x04");
    assert_eq!(SSL_NOT_SUPPORTED, b'N');
}

#[test]
fn encoders_decode_back() {
    let mut buf = Vec::new();
    startup_message(
        &mut buf,
        ProtocolVersion::V3_2,
        [("user", "u"), ("database", "d")],
    )
    .unwrap();
    let Some((StartupMessage::Startup(s), n)) = decode_startup(&buf).unwrap() else {
        panic!("not a startup");
    };
    assert_eq!(
        (n, s.params.user(), s.params.database()),
        (buf.len(), Some("u"), Some("d"))
    );
    let mut buf = Vec::new();
    cancel_request(&mut buf, -5, &[9; 32]).unwrap();
    let Some((StartupMessage::Cancel(c), _)) = decode_startup(&buf).unwrap() else {
        panic!("not a cancel");
    };
    assert_eq!((c.process_id, c.secret_key), (-5, &[9u8; 32][..]));
}

#[test]
fn encoders_into_bytes_mut() {
    let mut b = BytesMut::new();
    query(&mut b, "SELECT 1").unwrap();
    authentication_ok(&mut b);
    assert_eq!(&b[..], b"Q\0\0\0\x0dSELECT 1\0R\0\0\0\x08\0\0\0\0");
    let mut row = DataRowBuilder::new(&mut b);
    row.value(b"x");
    row.finish().unwrap();
    assert_eq!(&b[23..], b"D\0\0\0\x0b\0\x01\0\0\0\x01x");
}

#[test]
fn failed_encoders_leave_the_buffer_unchanged() {
    let mut buf = b"keep".to_vec();
    assert_eq!(query(&mut buf, "a\0b"), Err(CodecError::EmbeddedNul));
    assert_eq!(
        parameter_status(&mut buf, "a", "b\0"),
        Err(CodecError::EmbeddedNul)
    );
    let bad = Diagnostic::new(Severity::Error, "XX000", "m\0");
    assert_eq!(error_response(&mut buf, &bad), Err(CodecError::EmbeddedNul));
    assert_eq!(
        startup_message(&mut buf, ProtocolVersion::V3_0, [("", "x")]),
        Err(CodecError::EmptyName)
    );
    let big = "x".repeat(MAX_STARTUP);
    assert!(matches!(
        startup_message(&mut buf, ProtocolVersion::V3_0, [("options", big.as_str())]),
        Err(CodecError::LengthTooLarge { .. })
    ));
    assert_eq!(
        cancel_request(&mut buf, 1, &[1, 2, 3]),
        Err(CodecError::BadKeyLength(3))
    );
    assert_eq!(
        backend_key_data_var(&mut buf, 1, &[0; 257]),
        Err(CodecError::BadKeyLength(257))
    );
    let many = vec![None; 65_536];
    assert_eq!(
        data_row(&mut buf, many),
        Err(CodecError::TooManyItems(65_536))
    );
    let mut row = DataRowBuilder::new(&mut buf);
    row.value(b"abandoned");
    drop(row);
    assert_eq!(buf, b"keep");
}
