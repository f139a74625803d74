//! Path globs for HTTP rules: `*` matches within one path segment, `**`
//! across segments, `?` one character other than `/`; everything else is
//! literal. A pattern ending in `/**` also matches the directory itself
//! (`/admin/**` matches `/admin`). Matching is a linear-space DP over bytes,
//! so no pattern can make it exponential. No I/O, no allocation per match
//! beyond one row of booleans.

/// Longest pattern accepted, in bytes.
pub const MAX_GLOB: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `?`
    One,
    /// `*`
    Segment,
    /// `**`
    Any,
}

/// A compiled path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
    /// Length of the prefix that, alone, also matches (for a trailing `/**`).
    dir_prefix: Option<usize>,
}

impl Glob {
    /// Compiles `pattern`; it must start with `/`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if !pattern.starts_with('/') {
            return Err(format!("glob {pattern:?} must start with '/'"));
        }
        if pattern.len() > MAX_GLOB {
            return Err(format!("glob is longer than {MAX_GLOB} bytes"));
        }
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' if bytes.get(i + 1) == Some(&b'*') => {
                    // Runs of stars collapse into one `**`.
                    while bytes.get(i) == Some(&b'*') {
                        i += 1;
                    }
                    tokens.push(Token::Any);
                    continue;
                }
                b'*' => tokens.push(Token::Segment),
                b'?' => tokens.push(Token::One),
                b => tokens.push(Token::Byte(b)),
            }
            i += 1;
        }
        let dir_prefix = match tokens.as_slice() {
            [.., Token::Byte(b'/'), Token::Any] if tokens.len() > 2 => Some(tokens.len() - 2),
            _ => None,
        };
        Ok(Glob {
            text: pattern.to_string(),
            tokens,
            dir_prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` (bytes, no query string) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        if matches_tokens(&self.tokens, path) {
            return true;
        }
        match self.dir_prefix {
            Some(n) => matches_tokens(&self.tokens[..n], path),
            None => false,
        }
    }
}

/// `row[j]`: tokens[..i] match path[..j]; one row per token.
fn matches_tokens(tokens: &[Token], path: &[u8]) -> bool {
    let n = path.len();
    let mut row = vec![false; n + 1];
    row[0] = true;
    for t in tokens {
        match t {
            Token::Byte(b) => {
                for j in (1..=n).rev() {
                    row[j] = row[j - 1] && path[j - 1] == *b;
                }
                row[0] = false;
            }
            Token::One => {
                for j in (1..=n).rev() {
                    row[j] = row[j - 1] && path[j - 1] != b'/';
                }
                row[0] = false;
            }
            Token::Segment => {
                // Extend a match over any run of non-'/' bytes.
                for j in 1..=n {
                    if !row[j] && row[j - 1] && path[j - 1] != b'/' {
                        row[j] = true;
                    }
                }
            }
            Token::Any => {
                for j in 1..=n {
                    if row[j - 1] {
                        row[j] = true;
                    }
                }
            }
        }
        if !row.iter().any(|&m| m) {
            return false;
        }
    }
    row[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        Glob::new(p).unwrap().matches(path.as_bytes())
    }

    #[test]
    fn literals_and_stars() {
        assert!(m("/api/health", "/api/health"));
        assert!(!m("/api/health", "/api/healthz"));
        assert!(m("/api/*", "/api/users"));
        assert!(!m("/api/*", "/api/users/1"));
        assert!(m("/api/*/1", "/api/users/1"));
        assert!(m("/api/**", "/api/users/1"));
        assert!(m("/api/**", "/api"));
        assert!(m("/api/**", "/api/"));
        assert!(!m("/api/**", "/apix"));
        assert!(m("/**/delete", "/a/b/c/delete"));
        assert!(m("/**", "/"));
        assert!(m("/*.json", "/x.json"));
        assert!(!m("/*.json", "/a/x.json"));
        assert!(m("/v?/x", "/v1/x"));
        assert!(!m("/v?/x", "/v//x"));
        assert!(m("/a/***", "/a/b/c"));
        assert!(m("/a*b*c", "/axxbyyc"));
        assert!(!m("/a*b*c", "/axxbyy"));
    }

    #[test]
    fn refuses_relative_and_huge_patterns() {
        assert!(Glob::new("api/*").is_err());
        assert!(Glob::new(&format!("/{}", "a".repeat(MAX_GLOB))).is_err());
    }

    #[test]
    fn many_stars_stay_fast() {
        let g = Glob::new(&format!("{}b", "/**a".repeat(40))).unwrap();
        let path = format!("/{}", "a".repeat(60_000));
        let t = std::time::Instant::now();
        assert!(!g.matches(path.as_bytes()));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
