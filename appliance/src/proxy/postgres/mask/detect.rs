//! Value detectors: find sensitive data inside any text value and mask it in
//! place. Built-ins are byte scanners (no regex, no allocation): a value
//! without a match costs one pass per detector and nothing else; only a
//! value with a match is rebuilt.
//!
//! - `email`: `local@domain.tld`, local part `[A-Za-z0-9._%+-]`, domain
//!   `[A-Za-z0-9.-]` with a dot and an alphabetic TLD of 2+ letters (ASCII
//!   addresses only).
//! - `credit_card`: 13 to 19 digits, contiguous or in groups separated by
//!   single spaces or dashes, passing the Luhn check. About one random
//!   13-19 digit number in ten passes Luhn, so some long ids are masked too.
//! - `iban`: country code, 2 check digits and the BBAN, at that country's
//!   IBAN length (printed groups of 4 allowed), passing ISO 13616 mod-97.
//! - `phone`: `+` then 8 to 15 digits with single spaces, dashes, dots or
//!   parentheses between them (E.164-ish). Numbers without `+` are not seen.
//! - custom regexes (`regex` crate, bytes, ASCII semantics: `\d`, `\w` and
//!   `(?i)` are ASCII-only, `.` matches any byte).

use ring::hmac;

use super::MaskMode;
use crate::policy::kinds::postgres_controls::Masking;

/// Compiled size limit of one custom regex.
pub const MAX_REGEX_SIZE: usize = 1 << 20;
/// Longest custom regex source, in bytes.
pub const MAX_REGEX_SOURCE: usize = 1024;

/// The built-in detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuiltinDetector {
    Email,
    CreditCard,
    Iban,
    Phone,
}

impl BuiltinDetector {
    pub const ALL: [BuiltinDetector; 4] = [
        BuiltinDetector::Email,
        BuiltinDetector::CreditCard,
        BuiltinDetector::Iban,
        BuiltinDetector::Phone,
    ];

    /// The policy name.
    pub const fn as_str(self) -> &'static str {
        match self {
            BuiltinDetector::Email => "email",
            BuiltinDetector::CreditCard => "credit_card",
            BuiltinDetector::Iban => "iban",
            BuiltinDetector::Phone => "phone",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    fn find(self, v: &[u8], from: usize) -> Option<(usize, usize)> {
        match self {
            BuiltinDetector::Email => find_email(v, from),
            BuiltinDetector::CreditCard => find_card(v, from),
            BuiltinDetector::Iban => find_iban(v, from),
            BuiltinDetector::Phone => find_phone(v, from),
        }
    }
}

/// A `custom` detector as written in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomDetector {
    pub name: String,
    pub regex: String,
}

impl CustomDetector {
    /// Compiles the regex (bytes, ASCII semantics, bounded size); refuses
    /// one that matches the empty string.
    pub fn compile(&self) -> Result<regex::bytes::Regex, String> {
        if self.regex.len() > MAX_REGEX_SOURCE {
            return Err(format!("regex is longer than {MAX_REGEX_SOURCE} bytes"));
        }
        let re = regex::bytes::RegexBuilder::new(&self.regex)
            .unicode(false)
            .size_limit(MAX_REGEX_SIZE)
            .dfa_size_limit(MAX_REGEX_SIZE)
            .build()
            .map_err(|e| format!("regex {:?} does not compile: {e}", self.regex))?;
        if re.is_match(b"") {
            return Err(format!("regex {:?} matches the empty string", self.regex));
        }
        Ok(re)
    }
}

/// The detectors and mask of one connection, compiled once per policy.
#[derive(Debug, Clone)]
pub struct Detectors {
    builtin: Vec<BuiltinDetector>,
    custom: Vec<(String, regex::bytes::Regex)>,
    mode: MaskMode,
    key: hmac::Key,
}

impl Detectors {
    /// Compiles `masking`; `hash_key` keys the `hash` mask (HMAC-SHA-256), so
    /// pseudonyms cannot be brute-forced without it. Keep it stable to get
    /// stable pseudonyms across sessions.
    pub fn new(masking: &Masking, hash_key: &[u8]) -> Result<Self, String> {
        let custom = masking
            .custom
            .iter()
            .map(|c| Ok((c.name.clone(), c.compile()?)))
            .collect::<Result<Vec<_>, String>>()?;
        let mut builtin = masking.detectors.clone();
        builtin.sort();
        builtin.dedup();
        Ok(Detectors {
            builtin,
            custom,
            mode: masking.mask.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, hash_key),
        })
    }

    /// No detectors; masks with `mode`.
    pub fn none(mode: MaskMode, hash_key: &[u8]) -> Self {
        Detectors {
            builtin: Vec::new(),
            custom: Vec::new(),
            mode,
            key: hmac::Key::new(hmac::HMAC_SHA256, hash_key),
        }
    }

    /// True when there is nothing to scan for.
    pub fn is_empty(&self) -> bool {
        self.builtin.is_empty() && self.custom.is_empty()
    }

    pub fn mode(&self) -> &MaskMode {
        &self.mode
    }

    /// True if any detector matches somewhere in `value`. Allocates nothing
    /// (custom regexes use the regex crate's per-thread search cache).
    pub fn has_match(&self, value: &[u8]) -> bool {
        self.builtin.iter().any(|d| d.find(value, 0).is_some())
            || self.custom.iter().any(|(_, re)| re.is_match(value))
    }

    /// Scans `value`; if anything matches, appends the value with every
    /// match masked to `out` and returns true. Otherwise appends nothing.
    pub fn scan(&self, value: &[u8], out: &mut Vec<u8>) -> bool {
        if !self.has_match(value) {
            return false;
        }
        self.mask_matches(value, out);
        true
    }

    /// Appends `value` with every detector match masked (the caller knows
    /// there is one: only then are the spans collected).
    pub fn mask_matches(&self, value: &[u8], out: &mut Vec<u8>) {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for d in &self.builtin {
            let mut from = 0;
            while let Some((s, e)) = d.find(value, from) {
                spans.push((s, e));
                from = e.max(s + 1);
            }
        }
        for (_, re) in &self.custom {
            spans.extend(re.find_iter(value).map(|m| (m.start(), m.end())));
        }
        spans.sort_unstable();
        let mut at = 0;
        let mut i = 0;
        while i < spans.len() {
            let (s, mut e) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < e {
                e = e.max(spans[i].1);
                i += 1;
            }
            if s < at {
                continue;
            }
            out.extend_from_slice(&value[at..s]);
            self.mask_into(&value[s..e], out);
            at = e;
        }
        out.extend_from_slice(&value[at..]);
    }

    /// Appends the masked form of a whole value (a masked column, or one
    /// detector match) per the connection's mode.
    pub fn mask_into(&self, value: &[u8], out: &mut Vec<u8>) {
        match &self.mode {
            MaskMode::KeepLast4 => keep_last_4(value, out),
            MaskMode::Fixed(r) => out.extend_from_slice(r.as_bytes()),
            MaskMode::Hash => {
                let tag = hmac::sign(&self.key, value);
                for b in tag.as_ref().iter().take(8) {
                    out.extend_from_slice(&hex2(*b));
                }
            }
        }
    }
}

fn hex2(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// `*` for every character but the last four, which stay when the value has
/// at least 8 characters (so at most half of it shows); shorter values are
/// all stars. Length in characters is preserved (UTF-8 aware; other
/// encodings are counted in bytes).
fn keep_last_4(value: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(value) {
        Ok(s) => {
            let n = s.chars().count();
            if n >= 8 {
                let cut = s.char_indices().nth(n - 4).map_or(0, |(i, _)| i);
                out.resize(out.len() + (n - 4), b'*');
                out.extend_from_slice(&value[cut..]);
            } else {
                out.resize(out.len() + n, b'*');
            }
        }
        Err(_) => {
            let n = value.len();
            if n >= 8 {
                out.resize(out.len() + (n - 4), b'*');
                out.extend_from_slice(&value[n - 4..]);
            } else {
                out.resize(out.len() + n, b'*');
            }
        }
    }
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn find_email(v: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(at) = v.get(i..)?.iter().position(|&b| b == b'@').map(|p| p + i) {
        i = at + 1;
        let mut s = at;
        while s > from && is_local(v[s - 1]) {
            s -= 1;
        }
        while s < at && v[s] == b'.' {
            s += 1;
        }
        let mut e = at + 1;
        while e < v.len() && is_domain(v[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(v[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s == at || e <= at + 1 {
            continue;
        }
        let domain = &v[at + 1..e];
        let Some(dot) = domain.iter().rposition(|&b| b == b'.') else {
            continue;
        };
        let tld = &domain[dot + 1..];
        if dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic) {
            return Some((s, e));
        }
    }
    None
}

/// Most digit groups looked at in one run (`4111 1111 1111 1111 111` is 5).
const MAX_GROUPS: usize = 8;

fn find_card(v: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < v.len() {
        if !v[i].is_ascii_digit() || (i > 0 && v[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // Digit groups joined by single separators.
        let mut groups = [(0usize, 0usize); MAX_GROUPS];
        let mut n = 0;
        let mut j = i;
        while n < MAX_GROUPS {
            let start = j;
            while j < v.len() && v[j].is_ascii_digit() {
                j += 1;
            }
            groups[n] = (start, j);
            n += 1;
            let joined =
                j + 1 < v.len() && matches!(v[j], b' ' | b'-') && v[j + 1].is_ascii_digit();
            if !joined {
                break;
            }
            j += 1;
        }
        for a in 0..n {
            let mut digits = 0;
            let mut best = None;
            for b in a..n {
                digits += groups[b].1 - groups[b].0;
                if digits > 19 {
                    break;
                }
                if digits >= 13 && luhn(&v[groups[a].0..groups[b].1]) {
                    best = Some((groups[a].0, groups[b].1));
                }
            }
            if best.is_some() {
                return best;
            }
        }
        i = groups[n - 1].1.max(i + 1);
    }
    None
}

fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &b in s.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

/// IBAN length by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

const MAX_IBAN: usize = 34;

fn find_iban(v: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 4 <= v.len() {
        let head = &v[i..i + 4];
        // Cheap shape test first; the country table only for candidates.
        let starts = head[0].is_ascii_uppercase()
            && head[1].is_ascii_uppercase()
            && head[2].is_ascii_digit()
            && head[3].is_ascii_digit()
            && (i == 0 || !v[i - 1].is_ascii_alphanumeric());
        if starts {
            let len = IBAN_LENGTHS
                .iter()
                .find(|(c, _)| c[..] == head[..2])
                .map(|(_, l)| usize::from(*l));
            if let Some(end) = len.and_then(|len| iban_end(v, i, len)) {
                return Some((i, end));
            }
        }
        i += 1;
    }
    None
}

/// The end of a valid IBAN of `len` characters starting at `start`.
fn iban_end(v: &[u8], start: usize, len: usize) -> Option<usize> {
    let mut pos = [0usize; MAX_IBAN];
    let mut n = 0;
    let mut j = start;
    while n < len {
        let b = *v.get(j)?;
        if b.is_ascii_alphanumeric() {
            pos[n] = j;
            n += 1;
            j += 1;
        } else if b == b' ' && n % 4 == 0 && v.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) {
            j += 1;
        } else {
            return None;
        }
    }
    if v.get(j).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut rem = 0u32;
    for &p in pos[4..len].iter().chain(pos[..4].iter()) {
        let b = v[p].to_ascii_uppercase();
        rem = if b.is_ascii_digit() {
            (rem * 10 + u32::from(b - b'0')) % 97
        } else {
            (rem * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    (rem == 1).then_some(j)
}

fn find_phone(v: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(plus) = v.get(i..)?.iter().position(|&b| b == b'+').map(|p| p + i) {
        i = plus + 1;
        if plus > 0 && v[plus - 1].is_ascii_alphanumeric() {
            continue;
        }
        let mut digits = 0;
        let mut j = plus + 1;
        let mut end = plus + 1;
        // The previous byte: separators come one at a time, except around
        // parentheses (`+1 (415) 555-0100`).
        let mut prev = b'+';
        while j < v.len() {
            let b = v[j];
            let sep_ok = prev.is_ascii_digit() || b == b'(' || prev == b')';
            if b.is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if matches!(b, b' ' | b'-' | b'.' | b'(' | b')') && sep_ok {
                j += 1;
            } else {
                break;
            }
            prev = b;
        }
        let next_digit = v.get(end).is_some_and(u8::is_ascii_digit);
        if (8..=15).contains(&digits)
            && !next_digit
            && v.get(plus + 1)
                .is_some_and(|b| b.is_ascii_digit() || *b == b'(')
        {
            return Some((plus, end));
        }
    }
    None
}
