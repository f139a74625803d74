//! A strict Prometheus text-format (0.0.4) parser for the `/metrics` checks.

use std::collections::BTreeMap;

pub type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// A strict parser of the Prometheus text format (0.0.4): every sample
/// belongs to a family declared by one `# TYPE` before it, names and label
/// names are valid, label values are properly quoted and escaped, values
/// parse as floats.
pub fn parse_prometheus(text: &str) -> Result<Samples, String> {
    let valid_name = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Samples::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    if !valid_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t)
                    {
                        return bad("bad TYPE");
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return bad("TYPE declared twice");
                    }
                    // A family may have no samples yet.
                    out.entry(name.to_string()).or_default();
                }
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                _ => return bad("bad comment"),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return bad("no value"),
        };
        if !valid_name(name) {
            return bad("bad metric name");
        }
        if !types.contains_key(name) {
            return bad("sample before its TYPE");
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let start = match chars.peek() {
                    Some((_, '}')) => {
                        end = chars.next().map(|(i, _)| i);
                        break;
                    }
                    Some((i, _)) => *i,
                    None => return bad("unterminated labels"),
                };
                let eq = r[start..]
                    .find('=')
                    .map(|i| i + start)
                    .ok_or("label without =")?;
                let lname = &r[start..eq];
                if !valid_name(lname) || lname.contains(':') {
                    return bad("bad label name");
                }
                if r.as_bytes().get(eq + 1) != Some(&b'"') {
                    return bad("label value not quoted");
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => return bad("bad escape"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return bad("unterminated label value"),
                    }
                }
                labels.insert(lname.to_string(), value);
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return bad("expected , or }"),
                }
            }
            rest = &r[end.ok_or("no }")? + 1..];
        }
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value: f64 = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v
                .parse()
                .map_err(|_| format!("line {}: bad value {v:?}", n + 1))?,
            None => return bad("no value"),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("line {}: bad timestamp", n + 1))?;
        }
        if types[name] == "counter" && !name.ends_with("_total") {
            return bad("counter not named *_total");
        }
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    Ok(out)
}
