//! A fixed-seed random-bytes loop over every decoder: noise and mutated
//! valid bodies must give errors, never panics, and the iterators of every
//! view that accepts them must yield exactly their declared counts.

use super::tests::frame;
use super::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// Runs every view over `body`, walking every iterator; ExactSizeIterator
/// counts must match what the iterators yield.
fn exercise_views(body: &[u8]) {
    use super::backend as b;
    use super::frontend as f;
    let _ = f::Query::parse(body);
    if let Ok(p) = f::Parse::parse(body) {
        assert_eq!(p.param_types().count(), p.param_type_count());
    }
    if let Ok(bind) = f::Bind::parse(body) {
        assert_eq!(bind.params().count(), bind.param_count());
        let _ = (bind.param_formats().count(), bind.result_formats().count());
        let _ = (bind.param_format(usize::MAX), bind.result_format(3));
    }
    let _ = f::Execute::parse(body);
    let _ = f::Describe::parse(body);
    let _ = f::Close::parse(body);
    let _ = f::CopyData::parse(body);
    let _ = f::CopyFail::parse(body);
    if let Ok(call) = f::FunctionCall::parse(body) {
        assert_eq!(call.args().count(), call.arg_count());
        let _ = call.arg_formats().count();
    }
    let _ = f::PasswordMessage::parse(body);
    let _ = f::SaslInitialResponse::parse(body);
    let _ = f::SaslResponse::parse(body);
    if let Ok(b::Authentication::Sasl(m)) = b::Authentication::parse(body) {
        let _ = (m.iter().count(), m.contains("SCRAM-SHA-256"));
    }
    let _ = b::ParameterStatus::parse(body);
    let _ = b::BackendKeyData::parse(body);
    let _ = b::ReadyForQuery::parse(body);
    if let Ok(rd) = b::RowDescription::parse(body) {
        assert_eq!(rd.fields().count(), rd.len());
    }
    if let Ok(row) = b::DataRow::parse(body) {
        assert_eq!(row.values().count(), row.len());
        let mut out = Vec::new();
        data_row(&mut out, row.values()).unwrap();
        assert_eq!(&out[5..], body, "rebuild is byte-identical");
    }
    if let Ok(cc) = b::CommandComplete::parse(body) {
        let _ = (cc.rows(), cc.command());
    }
    if let Ok(e) = b::ErrorNotice::parse(body) {
        let _ = (e.fields().count(), e.sqlstate(), e.message(), e.severity());
    }
    let _ = b::NotificationResponse::parse(body);
    if let Ok(pd) = b::ParameterDescription::parse(body) {
        assert_eq!(pd.types().count(), pd.len());
    }
    if let Ok(c) = b::CopyResponse::parse(body) {
        let _ = c.column_formats().count();
    }
    let _ = b::FunctionCallResponse::parse(body);
    if let Ok(v) = b::NegotiateProtocolVersion::parse(body) {
        let _ = v.unrecognized_options().count();
    }
    let _ = parse_empty(body);
}

/// Valid bodies of the parsed message kinds, to mutate.
const SEEDS: &[&[u8]] = &[
    b"\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0",
    b"\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    b"p\0s\0\0\x01\0\x01\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\x01\0\x01",
    b"s1\0SELECT $1\0\0\x01\0\0\0\x17",
    b"SERROR\0VERROR\0C08P01\0Mbad\0\0",
    b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
    b"\0\0\0\x05\x01\x02\x03\x04",
    b"\0\0\x04\xd2\0\x01\0\0\0\x01\0\0\0\x017\0\x01",
    b"\0\0\0\0\0\0\0\x01_pq_.opt\0",
    b"SCRAM-SHA-256\0\0\0\0\x03n,,",
    b"INSERT 0 3\0",
    b"\0\x02\0\0\0\x17\0\0\0\x19",
];

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::with_capacity(128);
    for _ in 0..10_000 {
        buf.clear();
        if rng.below(2) == 0 {
            // Pure noise; small integers are what parsers branch on.
            let len = rng.below(96);
            buf.extend((0..len).map(|_| rng.next() as u8));
            for b in buf.iter_mut() {
                if rng.below(3) == 0 {
                    *b = [0, 0, 0, 1, 2, 0xff][rng.below(6)];
                }
            }
        } else {
            // A valid body with a few bytes changed and maybe cut short.
            buf.extend_from_slice(SEEDS[rng.below(SEEDS.len() as u64)]);
            for _ in 0..=rng.below(3) {
                if !buf.is_empty() {
                    let at = rng.below(buf.len() as u64);
                    buf[at] = [0, 1, 0xff, 0x7f, rng.next() as u8][rng.below(5)];
                }
            }
            if rng.below(4) == 0 {
                buf.truncate(rng.below(buf.len() as u64 + 1));
            }
        }
        if let Ok(Some((_, n))) = decode_startup(&buf) {
            assert!(n <= buf.len());
        }
        // Same bytes behind a truthful length word, as startup and frame.
        let mut startup = ((buf.len() + 8) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&[0, 3, 0, [0, 2][rng.below(2)]]);
        startup.extend_from_slice(&buf);
        let _ = decode_startup(&startup);
        if let Ok(Some((f, n))) = decode_frame(&buf, 64) {
            assert_eq!(n, f.body.len() + 5);
        }
        let framed = frame(b'D', &buf);
        let (f, _) = decode_frame(&framed, DEFAULT_MAX_MESSAGE).unwrap().unwrap();
        exercise_views(f.body);
    }
}
