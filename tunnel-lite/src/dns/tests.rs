//! `answer` tested with byte vectors; the I/O loops are exercised end to end in
//! tests/e2e/dns.rs with the real `dig`.

use super::*;
use hickory_proto::op::Message;

const T_A: u16 = 1;
const T_NS: u16 = 2;
const T_SOA: u16 = 6;
const T_MX: u16 = 15;
const T_AAAA: u16 = 28;
const T_ANY: u16 = 255;

fn table() -> DnsTable {
    DnsTable {
        suffix: "hoop".into(),
        names: [
            ("pg-prod".to_string(), Ipv4Addr::new(127, 77, 1, 10)),
            ("web-1".to_string(), Ipv4Addr::new(127, 77, 2, 20)),
        ]
        .into_iter()
        .collect(),
    }
}

/// A query with RD set, one question of class IN.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&encode_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn ask(bytes: &[u8]) -> Message {
    let response = answer(bytes, &table()).expect("a response");
    Message::from_vec(&response).expect("a parsable response")
}

fn soa_only(m: &Message) {
    assert!(m.answers().is_empty());
    assert_eq!(m.name_servers().len(), 1);
    let soa = &m.name_servers()[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name().to_ascii(), "hoop.");
    assert_eq!(soa.ttl(), TTL);
}

#[test]
fn a_record_exact_bytes() {
    let response = answer(&query(0x1234, "pg-prod.hoop", T_A), &table()).unwrap();
    let mut expected = vec![0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0];
    expected.extend_from_slice(b"\x07pg-prod\x04hoop\x00\x00\x01\x00\x01");
    // Owner compressed to the question at offset 12, A, IN, TTL 5, 127.77.1.10.
    expected.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 77, 1, 10]);
    assert_eq!(response, expected);
}

#[test]
fn nxdomain_exact_bytes() {
    let response = answer(&query(0xbeef, "nothere.hoop.", T_A), &table()).unwrap();
    let mut expected = vec![0xbe, 0xef, 0x85, 0x03, 0, 1, 0, 0, 0, 1, 0, 0];
    expected.extend_from_slice(b"\x07nothere\x04hoop\x00\x00\x01\x00\x01");
    // SOA owned by `hoop.` (pointer to offset 20), TTL 5, 44 bytes of rdata.
    expected.extend_from_slice(&[0xc0, 20, 0, 6, 0, 1, 0, 0, 0, 5, 0, 44]);
    expected.extend_from_slice(b"\x09localhost\x00\x0ahostmaster\xc0\x14");
    for n in [1u32, 3600, 600, 86_400, 5] {
        expected.extend_from_slice(&n.to_be_bytes());
    }
    assert_eq!(response, expected);
}

#[test]
fn a_record() {
    let m = ask(&query(7, "pg-prod.hoop", T_A));
    assert_eq!(m.id(), 7);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative() && m.recursion_desired() && !m.recursion_available());
    assert_eq!(m.queries().len(), 1);
    assert_eq!(m.queries()[0].name().to_ascii(), "pg-prod.hoop.");
    assert_eq!(m.answers().len(), 1);
    assert_eq!(m.answers()[0].ttl(), 5);
    assert_eq!(
        m.answers()[0].data(),
        &RData::A(A(Ipv4Addr::new(127, 77, 1, 10)))
    );
    assert!(m.name_servers().is_empty() && m.additionals().is_empty());
}

#[test]
fn aaaa_and_mx_are_nodata_with_soa() {
    for qtype in [T_AAAA, T_MX, 16 /* TXT */, 65 /* HTTPS */] {
        let m = ask(&query(8, "web-1.hoop", qtype));
        assert_eq!(m.response_code(), ResponseCode::NoError, "type {qtype}");
        assert!(m.authoritative());
        soa_only(&m);
    }
}

#[test]
fn any_for_a_known_name_returns_its_a_record() {
    let m = ask(&query(9, "web-1.hoop", T_ANY));
    assert_eq!(m.answers().len(), 1);
    assert_eq!(
        m.answers()[0].data(),
        &RData::A(A(Ipv4Addr::new(127, 77, 2, 20)))
    );
}

#[test]
fn unknown_and_deeper_names_are_nxdomain() {
    for name in ["unknown.hoop", "a.pg-prod.hoop", "x.y.z.hoop"] {
        let m = ask(&query(10, name, T_A));
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{name}");
        assert!(m.authoritative());
        soa_only(&m);
    }
}

#[test]
fn apex() {
    let m = ask(&query(11, "hoop", T_A));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    soa_only(&m);

    let m = ask(&query(12, "HOOP.", T_SOA));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(m.answers().len(), 1);
    let RData::SOA(soa) = m.answers()[0].data() else {
        panic!("not an SOA: {:?}", m.answers());
    };
    assert_eq!(soa.mname().to_ascii(), "localhost.");
    assert_eq!(soa.rname().to_ascii(), "hostmaster.hoop.");
    assert_eq!(soa.minimum(), TTL);

    let m = ask(&query(13, "hoop", T_NS));
    assert_eq!(m.answers().len(), 1);
    assert_eq!(
        m.answers()[0].data(),
        &RData::NS(NS(Name::from_ascii("localhost.").unwrap()))
    );
    assert!(m.name_servers().is_empty());
}

#[test]
fn outside_suffix_is_refused() {
    for name in ["example.com", "hoop.example.com", "pg-prod.hoopla", "."] {
        let m = ask(&query(14, name, T_A));
        assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
        assert!(!m.authoritative() && !m.recursion_available());
        assert!(m.answers().is_empty() && m.name_servers().is_empty());
        assert_eq!(m.queries().len(), 1);
    }
}

#[test]
fn zone_transfer_and_other_classes_are_refused() {
    let m = ask(&query(15, "hoop", 252 /* AXFR */));
    assert_eq!(m.response_code(), ResponseCode::Refused);
    let mut chaos = query(16, "pg-prod.hoop", T_A);
    let len = chaos.len();
    chaos[len - 1] = 3; // class CH
    assert_eq!(ask(&chaos).response_code(), ResponseCode::Refused);
}

#[test]
fn uppercase_is_answered_and_echoed_as_sent() {
    let m = ask(&query(17, "PG-Prod.HOOP", T_A));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(m.queries()[0].name().to_ascii(), "PG-Prod.HOOP.");
    assert_eq!(m.answers()[0].name().to_ascii(), "PG-Prod.HOOP.");
    assert_eq!(
        m.answers()[0].data(),
        &RData::A(A(Ipv4Addr::new(127, 77, 1, 10)))
    );
}

#[test]
fn suffix_with_trailing_dot_uppercase_and_several_labels() {
    let mut t = table();
    t.suffix = "Corp.Hoop.".into();
    let r = answer(&query(18, "pg-prod.corp.hoop", T_A), &t).unwrap();
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.answers().len(), 1);
    let r = answer(&query(19, "pg-prod.hoop", T_A), &t).unwrap();
    assert_eq!(
        Message::from_vec(&r).unwrap().response_code(),
        ResponseCode::Refused
    );
}

#[test]
fn table_keys_match_case_insensitively() {
    let mut t = table();
    t.names
        .insert("Grafana".into(), Ipv4Addr::new(127, 77, 3, 30));
    let r = answer(&query(31, "grafana.hoop", T_A), &t).unwrap();
    assert!(r.ends_with(&[127, 77, 3, 30]));
}

#[test]
fn empty_suffix_refuses_everything() {
    let t = DnsTable {
        suffix: String::new(),
        ..table()
    };
    let r = answer(&query(20, "pg-prod", T_A), &t).unwrap();
    assert_eq!(
        Message::from_vec(&r).unwrap().response_code(),
        ResponseCode::Refused
    );
}

#[test]
fn garbage_with_a_header_is_formerr_with_the_id() {
    // Header says 1 question, then a label length running past the end.
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0x3f, b'x', b'y']);
    let response = answer(&garbage, &table()).unwrap();
    assert_eq!(response, [0xab, 0xcd, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
    // A reserved label type (0b10) and a forward compression pointer.
    for question in [&[0x80, 1, 0, 1, 0, 1][..], &[0xc0, 0x40, 0, 1, 0, 1]] {
        let mut q = garbage[..12].to_vec();
        q.extend_from_slice(question);
        let m = Message::from_vec(&answer(&q, &table()).unwrap()).unwrap();
        assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
    }
}

#[test]
fn truncated_header_and_responses_are_dropped() {
    let q = query(21, "pg-prod.hoop", T_A);
    for len in 0..12 {
        assert_eq!(answer(&q[..len], &table()), None, "len {len}");
    }
    let mut response = q.clone();
    response[2] |= 0x80; // QR: this is a response, never answer it
    assert_eq!(answer(&response, &table()), None);
}

#[test]
fn two_questions_are_formerr() {
    let mut q = query(22, "pg-prod.hoop", T_A);
    q[5] = 2;
    q.extend_from_slice(&encode_name("web-1.hoop"));
    q.extend_from_slice(&[0, 1, 0, 1]);
    let response = answer(&q, &table()).unwrap();
    assert_eq!(response, [0, 22, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
    q[5] = 0; // and zero questions
    let m = Message::from_vec(&answer(&q, &table()).unwrap()).unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
}

#[test]
fn opcode_status_is_notimp() {
    let mut q = query(23, "pg-prod.hoop", T_A);
    q[2] = 0x10 | 0x01; // opcode 2 (STATUS), RD
    let response = answer(&q, &table()).unwrap();
    assert_eq!(response, [0, 23, 0x91, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// `query` plus an OPT record: payload 4096, the given version, DO set, no options.
fn with_edns(mut q: Vec<u8>, version: u8) -> Vec<u8> {
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, version, 0x80, 0, 0, 0]);
    q
}

#[test]
fn edns_is_answered_with_opt() {
    let response = answer(&with_edns(query(24, "pg-prod.hoop", T_A), 0), &table()).unwrap();
    let opt = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
    assert!(response.ends_with(&opt), "{response:02x?}");
    assert_eq!(&response[6..12], &[0, 1, 0, 0, 0, 1]);
    let m = Message::from_vec(&response).unwrap();
    assert_eq!(m.answers().len(), 1);
    assert_eq!(m.max_payload(), 1232);
}

#[test]
fn edns_version_1_is_badvers() {
    let response = answer(&with_edns(query(25, "pg-prod.hoop", T_A), 1), &table()).unwrap();
    let m = Message::from_vec(&response).unwrap();
    // BADVERS and BADSIG share the value 16: 4 bits in the header, 8 in the OPT TTL.
    assert_eq!(u16::from(m.response_code()), 16);
    assert_eq!(response[3] & 0x0f, 0);
    assert!(response.ends_with(&[0, 0, 41, 0x04, 0xd0, 1, 0, 0, 0, 0, 0]));
    assert!(m.answers().is_empty());
}

#[test]
fn malformed_additional_section_is_formerr() {
    let mut q = with_edns(query(26, "pg-prod.hoop", T_A), 0);
    q.truncate(q.len() - 3); // rdlength cut short
    let m = Message::from_vec(&answer(&q, &table()).unwrap()).unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    let mut two_opts = with_edns(query(27, "pg-prod.hoop", T_A), 0);
    two_opts[11] = 2;
    two_opts.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    let m = Message::from_vec(&answer(&two_opts, &table()).unwrap()).unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
}

#[test]
fn largest_possible_response_fits_in_512_bytes() {
    // Labels of 62, 61, 61, 61 bytes + "hoop": a 255-byte wire name -> NXDOMAIN + SOA.
    let label = "x".repeat(61);
    let name = format!("y{label}.{label}.{label}.{label}.hoop");
    assert_eq!(encode_name(&name).len(), 255);
    let q = with_edns(query(28, &name, T_A), 0);
    let response = answer(&q, &table()).unwrap();
    assert_eq!(
        Message::from_vec(&response).unwrap().response_code(),
        ResponseCode::NXDomain
    );
    assert!(response.len() <= 512, "{}", response.len());
}

#[test]
fn table_changes_reach_the_zone() {
    let (tx, mut rx) = watch::channel(table());
    let mut zone = Zone::current(&mut rx);
    let mut out = Vec::new();
    let q = query(29, "new.hoop", T_A);
    assert!(zone.respond(&q, &mut out));
    assert_eq!(out[3] & 0x0f, 3);
    tx.send_modify(|t| {
        t.names.insert("new".into(), Ipv4Addr::new(127, 77, 9, 9));
    });
    zone.refresh(&mut rx);
    assert!(zone.respond(&q, &mut out));
    assert_eq!(out[3] & 0x0f, 0);
    assert!(out.ends_with(&[127, 77, 9, 9]));
    drop(tx);
    zone.refresh(&mut rx); // a closed sender keeps the last table
    assert!(zone.respond(&q, &mut out));
    assert!(out.ends_with(&[127, 77, 9, 9]));
}

#[test]
fn random_bytes_never_panic() {
    let t = table();
    let valid = query(30, "pg-prod.hoop", T_A);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut answered = 0;
    for i in 0..10_000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            // Half the cases: a valid query with a few bytes flipped, to get past the header.
            bytes = valid.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
        }
        if let Some(response) = answer(&bytes, &t) {
            answered += 1;
            assert!(response.len() >= 12 && response[..2] == bytes[..2]);
        }
    }
    assert!(answered > 1000, "{answered}");
}
