//! Method and path rules: a pure decision over (rules, method, path). The
//! path is normalized before matching (percent-decoding, `//`, `.` and `..`
//! segments) so `/api//admin/%2e%2e/admin` cannot slip past a rule on
//! `/api/admin/**`. The original path is what goes upstream.

use http::Method;

use crate::policy::kinds::http::{ApprovalSettings, HttpRule, RuleAction};

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// Refused by this rule.
    Deny(&'a str),
    /// Held for approval by this rule.
    Hold(&'a str, &'a ApprovalSettings),
}

/// The first rule matching `method` and `path` decides; none means allow.
pub fn decide<'a>(rules: &'a [HttpRule], method: &Method, path: &str) -> Decision<'a> {
    if rules.is_empty() {
        return Decision::Allow;
    }
    let normalized = normalize_path(path);
    for rule in rules {
        let method_ok = rule.methods.is_empty() || rule.methods.contains(method);
        if method_ok && rule.paths.iter().any(|g| g.matches(&normalized)) {
            return match &rule.action {
                RuleAction::Deny => Decision::Deny(&rule.name),
                RuleAction::RequireApproval(a) => Decision::Hold(&rule.name, a),
            };
        }
    }
    Decision::Allow
}

/// Percent-decodes, then resolves empty, `.` and `..` segments. Always
/// starts with `/`; keeps a trailing `/` (except for the root).
pub fn normalize_path(path: &str) -> Vec<u8> {
    let decoded = percent_decode(path.as_bytes());
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    let trailing =
        decoded.last() == Some(&b'/') || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    out
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::glob::Glob;

    fn n(p: &str) -> String {
        String::from_utf8(normalize_path(p)).unwrap()
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(n("/"), "/");
        assert_eq!(n(""), "/");
        assert_eq!(n("/a//b/./c"), "/a/b/c");
        assert_eq!(n("/a/b/../c/"), "/a/c/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/api/%61dmin"), "/api/admin");
        assert_eq!(n("/api/x/%2e%2e/admin"), "/api/admin");
        assert_eq!(n("/api%2Fadmin"), "/api/admin");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/100%"), "/100%");
        assert_eq!(n("/%zz"), "/%zz");
    }

    fn rule(name: &str, methods: &[Method], paths: &[&str]) -> HttpRule {
        HttpRule {
            name: name.into(),
            methods: methods.to_vec(),
            paths: paths.iter().map(|p| Glob::new(p).unwrap()).collect(),
            action: RuleAction::Deny,
        }
    }

    #[test]
    fn approval_rules_hold() {
        let hold = ApprovalSettings {
            approvers_group: "leads".into(),
            reuse_window: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(60),
        };
        let rules = vec![HttpRule {
            action: RuleAction::RequireApproval(hold.clone()),
            ..rule("hold-writes", &[Method::POST], &["/api/**"])
        }];
        assert_eq!(
            decide(&rules, &Method::POST, "/api/x"),
            Decision::Hold("hold-writes", &hold)
        );
        assert_eq!(decide(&rules, &Method::GET, "/api/x"), Decision::Allow);
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules = vec![
            rule("no-admin", &[], &["/api/admin/**"]),
            rule("no-deletes", &[Method::DELETE], &["/**"]),
        ];
        assert_eq!(
            decide(&rules, &Method::GET, "/api/admin/users"),
            Decision::Deny("no-admin")
        );
        assert_eq!(
            decide(&rules, &Method::GET, "/api//admin"),
            Decision::Deny("no-admin")
        );
        assert_eq!(
            decide(&rules, &Method::GET, "/api/public/../admin/x"),
            Decision::Deny("no-admin")
        );
        assert_eq!(
            decide(&rules, &Method::DELETE, "/api/dashboards/1"),
            Decision::Deny("no-deletes")
        );
        assert_eq!(
            decide(&rules, &Method::GET, "/api/dashboards/1"),
            Decision::Allow
        );
        assert_eq!(decide(&[], &Method::DELETE, "/x"), Decision::Allow);
    }
}
