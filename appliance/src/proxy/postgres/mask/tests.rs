//! Column rules and detectors; result and COPY rewriting are in
//! `tests_rewrite.rs`.

use super::*;
use crate::policy::kinds::postgres_controls::Masking;

pub(super) const KEY: &[u8] = b"test key";

fn detectors(builtin: &[BuiltinDetector], custom: &[(&str, &str)], mask: MaskMode) -> Detectors {
    let masking = Masking {
        detectors: builtin.to_vec(),
        custom: custom
            .iter()
            .map(|(n, r)| CustomDetector {
                name: n.to_string(),
                regex: r.to_string(),
            })
            .collect(),
        mask,
        ..Masking::default()
    };
    Detectors::new(&masking, KEY).expect("compiles")
}

pub(super) fn all() -> Detectors {
    detectors(
        &BuiltinDetector::ALL,
        &[("api_key", "sk_live_[A-Za-z0-9]{8,}")],
        MaskMode::KeepLast4,
    )
}

fn scan(d: &Detectors, v: &str) -> Option<String> {
    let mut out = Vec::new();
    d.scan(v.as_bytes(), &mut out)
        .then(|| String::from_utf8(out).expect("utf8"))
}

#[test]
fn globs() {
    let g = NameGlob::new("pay*_id?");
    assert!(g.matches("payment_ids") && g.matches("PAY_idx") && g.matches("pay_ab_idé"));
    assert!(!g.matches("payment_id") && !g.matches("xpay_ids"));
    assert!(NameGlob::new("*").matches("") && NameGlob::new("*").is_any());
    assert!(NameGlob::new("a*b*c").matches("axxbyyc") && !NameGlob::new("a*b*c").matches("axxbyy"));
    assert!(NameGlob::new("*a*a*a*a*b").matches(&format!("{}b", "a".repeat(50))));
    assert!(!NameGlob::new("*a*a*a*a*b").matches(&"a".repeat(5_000)));
    // Case folding is ASCII only.
    assert!(!NameGlob::new("é?").matches("ÉX") && NameGlob::new("é?").matches("éx"));
}

#[test]
fn column_rules() {
    let r = MaskRules::parse(&[
        "public.customers.email",
        "customers.ssn",
        "*.card_number",
        "pay*.iban",
    ])
    .expect("rules");
    let c = |s: &str, t: &str, col: &str| ColumnName::new(s, t, col);
    assert!(r.matches(&c("public", "customers", "email")));
    assert!(!r.matches(&c("crm", "customers", "email")));
    assert!(r.matches(&c("crm", "customers", "ssn")));
    assert!(r.matches(&c("x", "y", "CARD_NUMBER")));
    assert!(r.matches(&c("x", "payments", "iban")) && !r.matches(&c("x", "refunds", "iban")));
    assert!(
        r.matches_label("card_number") && r.matches_label("email") && !r.matches_label("lower")
    );
    assert_eq!(
        r.first_partial(None, Some("customers"), None)
            .map(|p| p.as_str()),
        Some("public.customers.email")
    );
    assert_eq!(
        r.first_partial(Some("crm"), Some("customers"), Some("email")),
        None
    );
    assert!(r.first_partial(None, None, Some("ssn")).is_some());
    for bad in ["email", "a.b.c.d", ".a", "a.", "a b.c", "\"a\".b"] {
        assert!(ColumnPattern::parse(bad).is_err(), "{bad}");
    }
    assert!(ColumnPattern::parse(&format!("a.{}", "b".repeat(MAX_PATTERN))).is_err());
}

#[test]
fn email_detector() {
    let d = detectors(&[BuiltinDetector::Email], &[], MaskMode::KeepLast4);
    assert_eq!(
        scan(&d, "alice@example.com").as_deref(),
        Some("*************.com")
    );
    assert_eq!(
        scan(&d, "to: <b.o+b@mail.co.uk>, cc").as_deref(),
        Some("to: <************o.uk>, cc")
    );
    assert_eq!(scan(&d, "a@b.io").as_deref(), Some("******"));
    assert_eq!(scan(&d, "x a@b.c y@z and me@host. q@w.e1"), None);
    assert_eq!(scan(&d, "no at sign"), None);
    assert_eq!(scan(&d, "@example.com"), None);
    assert_eq!(
        scan(&d, "one@a.bc two@c.de").as_deref(),
        Some("****a.bc ****c.de"),
        "every match is masked"
    );
}

#[test]
fn credit_card_detector() {
    let d = detectors(&[BuiltinDetector::CreditCard], &[], MaskMode::KeepLast4);
    assert_eq!(
        scan(&d, "4111111111111111").as_deref(),
        Some("************1111")
    );
    assert_eq!(
        scan(&d, "card 4111 1111 1111 1111 ok").as_deref(),
        Some("card ***************1111 ok")
    );
    assert_eq!(
        scan(&d, "5500-0000-0000-0004").as_deref(),
        Some("***************0004")
    );
    assert_eq!(
        scan(&d, "amex 3782 822463 10005.").as_deref(),
        Some("amex *************0005.")
    );
    // Luhn fails, too short, too long, part of a longer number.
    assert_eq!(scan(&d, "4111111111111112"), None);
    assert_eq!(scan(&d, "411111111111"), None);
    assert_eq!(scan(&d, "41111111111111111111111"), None);
    // A card followed by a year in the same run of groups is still found.
    assert_eq!(
        scan(&d, "4111 1111 1111 1111 2024").as_deref(),
        Some("***************1111 2024")
    );
    assert_eq!(scan(&d, "2024-01-15 12:00"), None);
}

#[test]
fn iban_detector() {
    let d = detectors(&[BuiltinDetector::Iban], &[], MaskMode::KeepLast4);
    assert_eq!(
        scan(&d, "DE89370400440532013000").as_deref(),
        Some("******************3000")
    );
    assert_eq!(
        scan(&d, "iban: DE89 3704 0044 0532 0130 00.").as_deref(),
        Some("iban: ***********************0 00.")
    );
    assert_eq!(
        scan(&d, "GB82WEST12345698765432").as_deref(),
        Some("******************5432")
    );
    assert_eq!(scan(&d, "DE89370400440532013001"), None, "check digits");
    assert_eq!(scan(&d, "DE8937040044053201300"), None, "length");
    assert_eq!(scan(&d, "XDE89370400440532013000"), None, "boundary");
    assert_eq!(scan(&d, "ZZ89370400440532013000"), None, "unknown country");
}

#[test]
fn phone_detector() {
    let d = detectors(&[BuiltinDetector::Phone], &[], MaskMode::KeepLast4);
    assert_eq!(scan(&d, "+14155550100").as_deref(), Some("********0100"));
    assert_eq!(
        scan(&d, "call +1 (415) 555-0100 now").as_deref(),
        Some("call *************0100 now")
    );
    assert_eq!(
        scan(&d, "+44 20 7946 0958").as_deref(),
        Some("************0958")
    );
    assert_eq!(scan(&d, "+1234567"), None, "7 digits");
    assert_eq!(scan(&d, "+1234567890123456"), None, "16 digits");
    assert_eq!(scan(&d, "4155550100"), None, "no plus");
    assert_eq!(scan(&d, "a+14155550100"), None, "boundary");
    assert_eq!(scan(&d, "1 + 2"), None);
}

#[test]
fn custom_detectors_and_modes() {
    let d = detectors(
        &[],
        &[
            ("api_key", "sk_live_[A-Za-z0-9]{8,}"),
            ("ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
        ],
        MaskMode::Fixed("[x]".into()),
    );
    assert_eq!(
        scan(&d, "key=sk_live_abcdefgh1 ssn 123-45-6789.").as_deref(),
        Some("key=[x] ssn [x].")
    );
    assert_eq!(scan(&d, "sk_live_short"), None);
    let h = detectors(&[BuiltinDetector::Email], &[], MaskMode::Hash);
    let a = scan(&h, "a@example.com x").expect("match");
    assert_eq!(a.len(), 16 + 2);
    assert!(a[..16].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(scan(&h, "a@example.com x"), Some(a.clone()), "stable");
    assert_ne!(scan(&h, "b@example.com x"), Some(a));
    let other_key = Detectors::new(
        &Masking {
            detectors: vec![BuiltinDetector::Email],
            mask: MaskMode::Hash,
            ..Masking::default()
        },
        b"other",
    )
    .expect("ok");
    assert_ne!(
        scan(&other_key, "a@example.com x"),
        scan(&h, "a@example.com x"),
        "keyed"
    );
    // Overlapping matches merge; multi-byte text keeps its length in characters.
    let all = all();
    // 16 digits: not a phone number, but a card (the `+` is not part of it).
    assert_eq!(
        scan(&all, "é: +4111111111111111").as_deref(),
        Some("é: +************1111")
    );
    // Phone and card over the same digits merge into one masked span.
    assert_eq!(
        scan(&all, "+4111111111111").as_deref(),
        Some("**********1111")
    );
    assert_eq!(scan(&all, "nothing here"), None);
    let mut out = b"keep".to_vec();
    assert!(!all.scan(b"plain", &mut out));
    assert_eq!(out, b"keep");
    assert!(Detectors::none(MaskMode::KeepLast4, KEY).is_empty());
}

#[test]
fn keep_last_4_rules() {
    let d = Detectors::none(MaskMode::KeepLast4, KEY);
    let m = |v: &[u8]| {
        let mut o = Vec::new();
        d.mask_into(v, &mut o);
        o
    };
    assert_eq!(m(b"123-45-6789"), b"*******6789");
    assert_eq!(m(b"1234567"), b"*******");
    assert_eq!(m(b""), b"");
    assert_eq!(m("ÅÄÖåäöab".as_bytes()), "****äöab".as_bytes());
    assert_eq!(
        m(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"),
        b"****\xfb\xfa\xf9\xf8"
    );
}
