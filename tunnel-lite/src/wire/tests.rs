use super::*;

fn encoded(token: &str, target: &str, port: u16) -> Vec<u8> {
    let mut out = [0u8; MAX_REQUEST];
    let n = encode_request(
        &Request {
            token,
            target,
            port,
        },
        &mut out,
    )
    .unwrap();
    out[..n].to_vec()
}

#[test]
fn request_exact_bytes() {
    let bytes = encoded("abc", "pg-prod", 5432);
    assert_eq!(
        bytes,
        [
            b'T', b'L', 1, 0, // magic, version, flags
            0, 3, b'a', b'b', b'c', // token
            7, b'p', b'g', b'-', b'p', b'r', b'o', b'd', // target
            0x15, 0x38, // 5432
        ]
    );
    let (req, used) = decode_request(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(
        req,
        Request {
            token: "abc",
            target: "pg-prod",
            port: 5432
        }
    );
}

#[test]
fn request_with_trailing_bytes_reports_consumed_length() {
    let mut bytes = encoded("t", "a", 1);
    let n = bytes.len();
    bytes.extend_from_slice(b"\0\0\0\x08\x04\xd2\x16\x2f");
    let (_, used) = decode_request(&bytes).unwrap().unwrap();
    assert_eq!(used, n);
}

#[test]
fn every_strict_prefix_needs_more() {
    let bytes = encoded("tok.en-1_x", "db.internal", 65535);
    for cut in 0..bytes.len() {
        assert_eq!(decode_request(&bytes[..cut]), Ok(None), "prefix {cut}");
    }
}

#[test]
fn garbage_is_refused_at_the_first_byte() {
    assert_eq!(decode_request(b"G"), Err(WireError::BadMagic));
    assert_eq!(
        decode_request(b"GET / HTTP/1.1\r\n"),
        Err(WireError::BadMagic)
    );
    assert_eq!(decode_request(b"TX"), Err(WireError::BadMagic));
    assert_eq!(
        decode_request(b"TL\x02"),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode_request(b"TL\x01\x80"),
        Err(WireError::BadFlags(0x80))
    );
}

#[test]
fn lengths_are_checked_before_waiting_for_the_bytes() {
    // A peer claiming a 65535-byte token is refused immediately.
    assert_eq!(
        decode_request(b"TL\x01\x00\xff\xff"),
        Err(WireError::TokenLength(65535))
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x00"),
        Err(WireError::TokenLength(0))
    );
    let max_plus_one = ((MAX_TOKEN + 1) as u16).to_be_bytes();
    let mut b = b"TL\x01\x00".to_vec();
    b.extend_from_slice(&max_plus_one);
    assert_eq!(
        decode_request(&b),
        Err(WireError::TokenLength(MAX_TOKEN + 1))
    );
    // target length 0 and > 253
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x01t\x00"),
        Err(WireError::TargetLength(0))
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x01t\xfe"),
        Err(WireError::TargetLength(254))
    );
}

#[test]
fn charsets_are_enforced_as_bytes_arrive() {
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x05ab "),
        Err(WireError::TokenNotAscii)
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x02a\xff"),
        Err(WireError::TokenNotAscii)
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x01t\x03PG"),
        Err(WireError::TargetCharset)
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x01t\x03a/"),
        Err(WireError::TargetCharset)
    );
    assert_eq!(
        decode_request(b"TL\x01\x00\x00\x01t\x01a\x00\x00"),
        Err(WireError::PortZero)
    );
}

#[test]
fn maximal_request_fits_the_bound() {
    let token = "x".repeat(MAX_TOKEN);
    let target = "a".repeat(MAX_TARGET);
    let bytes = encoded(&token, &target, 22);
    assert_eq!(bytes.len(), MAX_REQUEST);
    assert!(decode_request(&bytes).unwrap().is_some());
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let mut out = [0u8; MAX_REQUEST];
    let r = |token, target, port| Request {
        token,
        target,
        port,
    };
    assert_eq!(
        encode_request(&r("", "a", 1), &mut out),
        Err(WireError::TokenLength(0))
    );
    assert_eq!(
        encode_request(&r("a b", "a", 1), &mut out),
        Err(WireError::TokenNotAscii)
    );
    assert_eq!(
        encode_request(&r("t", "A", 1), &mut out),
        Err(WireError::TargetCharset)
    );
    assert_eq!(
        encode_request(&r("t", "a", 0), &mut out),
        Err(WireError::PortZero)
    );
    let mut small = [0u8; 8];
    assert_eq!(
        encode_request(&r("t", "abc", 1), &mut small),
        Err(WireError::BufferTooSmall(8))
    );
}

#[test]
fn response_exact_bytes_and_round_trip() {
    let mut out = [0u8; MAX_RESPONSE];
    let n = encode_response(Status::PortNotAllowed, "port 80 not allowed", &mut out).unwrap();
    let mut want = vec![1, 3, 0, 19];
    want.extend_from_slice(b"port 80 not allowed");
    assert_eq!(&out[..n], &want[..]);
    let (resp, used) = decode_response(&out[..n]).unwrap().unwrap();
    assert_eq!(used, n);
    assert_eq!(resp.status, Status::PortNotAllowed);
    assert_eq!(resp.reason, "port 80 not allowed");
    for cut in 0..n {
        assert_eq!(decode_response(&out[..cut]), Ok(None));
    }
}

#[test]
fn response_errors() {
    assert_eq!(
        decode_response(b"\x02"),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode_response(b"\x01\x63\x00\x00"),
        Err(WireError::UnknownStatus(0x63))
    );
    assert_eq!(
        decode_response(b"\x01\x00\x04\x01"),
        Err(WireError::ReasonLength(1025))
    );
    assert_eq!(
        decode_response(b"\x01\x00\x00\x01\xff"),
        Err(WireError::ReasonNotUtf8)
    );
}

#[test]
fn long_reason_is_cut_on_a_char_boundary() {
    let reason = "é".repeat(MAX_REASON); // 2 bytes each
    let mut out = [0u8; MAX_RESPONSE];
    let n = encode_response(Status::Internal, &reason, &mut out).unwrap();
    let (resp, _) = decode_response(&out[..n]).unwrap().unwrap();
    assert_eq!(resp.reason.len(), MAX_REASON);
}

#[test]
fn every_status_round_trips() {
    for v in 0..=255u8 {
        if let Some(s) = Status::from_u8(v) {
            assert_eq!(s as u8, v);
            assert!(!s.as_str().is_empty());
        }
    }
    assert_eq!(Status::from_u8(12), None);
}
