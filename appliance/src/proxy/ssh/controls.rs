//! Command controls and other per-request decisions of the SSH gateway, as
//! pure functions of (settings, request): which environment variables pass,
//! which forwarding destinations are allowed, which command lines are denied.
//! No I/O here.
//!
//! Patterns are globs: `*` matches any run of characters (including none and
//! `/`), `?` exactly one, `\` makes the next character literal; everything
//! else matches itself, case-sensitively, and a pattern must match the whole
//! text. A command line is checked as a whole and segment by segment (split
//! at `;`, `&`, `|`, newlines, parentheses and backquotes), after runs of
//! white space are collapsed to one space and trimmed, so `rm -rf *` denies
//! `cd / &&  rm  -rf  tmp`. This is a guard rail against mistakes, not a
//! sandbox: a determined user can obfuscate a command (`r\m`, `$(echo rm)`,
//! a script file) past any pattern.

/// Largest interactive line tracked; longer lines are not checked.
pub const MAX_LINE: usize = 4096;

/// Whether `text` matches glob `pattern` entirely.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ti += 1;
                continue;
            }
            Some('\\') if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                pi += 2;
                ti += 1;
                continue;
            }
            // An escaped character that does not match.
            Some('\\') if pi + 1 < p.len() => {}
            Some(c) if *c == t[ti] => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The first pattern matching `text`, if any.
pub fn first_match<'a>(patterns: &'a [String], text: &str) -> Option<&'a str> {
    patterns
        .iter()
        .find(|p| glob_match(p, text))
        .map(String::as_str)
}

/// Collapses white space runs to one space and trims.
pub fn normalize(command: &str) -> String {
    command.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The deny pattern a command line hits, checked on the whole line and on
/// each segment between shell separators.
pub fn denied_command<'a>(deny: &'a [String], command: &str) -> Option<&'a str> {
    if deny.is_empty() {
        return None;
    }
    let whole = normalize(command);
    if let Some(p) = first_match(deny, &whole) {
        return Some(p);
    }
    command
        .split([';', '&', '|', '\n', '(', ')', '`'])
        .map(normalize)
        .filter(|s| !s.is_empty())
        .find_map(|seg| first_match(deny, &seg))
}

/// Whether the client may set environment variable `name` upstream.
pub fn env_allowed(allow: &[String], name: &str) -> bool {
    !name.is_empty() && first_match(allow, name).is_some()
}

/// Whether forwarding to `host:port` is allowed by the destination globs.
pub fn forward_allowed(destinations: &[String], host: &str, port: u32) -> bool {
    first_match(destinations, &format!("{host}:{port}")).is_some()
}

/// What [`LineTracker::feed`] found in a chunk of typed input.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// No complete line ends in the rest of the chunk.
    Pending,
    /// A line ends at this offset of the chunk (the offset of the CR or LF);
    /// `None` when the line could not be known (history recall, completion,
    /// too long) and so was not checked.
    Line { end: usize, line: Option<String> },
}

/// Best-effort reconstruction of the line being typed in an interactive
/// shell from the raw keystrokes: printable characters append, backspace and
/// DEL erase, Ctrl-U and Ctrl-C clear, Enter completes. Cursor movement,
/// history recall (escape sequences) and tab completion change the line on
/// the remote side in ways the keystrokes do not show; such a line is
/// reported as unknown instead of guessed.
#[derive(Debug, Default)]
pub struct LineTracker {
    line: Vec<u8>,
    unknown: bool,
}

impl LineTracker {
    /// Scans `chunk` from `from`; returns at the first completed line.
    /// Call again with `from = end + 1` to continue.
    pub fn feed(&mut self, chunk: &[u8], from: usize) -> Typed {
        for (i, &b) in chunk.iter().enumerate().skip(from) {
            match b {
                b'\r' | b'\n' => {
                    let line = if self.unknown {
                        None
                    } else {
                        Some(String::from_utf8_lossy(&self.line).into_owned())
                    };
                    self.line.clear();
                    self.unknown = false;
                    return Typed::Line { end: i, line };
                }
                0x7f | 0x08 => {
                    self.line.pop();
                }
                0x15 | 0x03 => {
                    self.line.clear();
                    self.unknown = false;
                }
                0x1b | b'\t' | 0x10 | 0x0e | 0x12 | 0x01 | 0x05 | 0x02 | 0x06 => {
                    self.unknown = true;
                }
                b if b < 0x20 => {}
                b => {
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                    } else {
                        self.unknown = true;
                    }
                }
            }
        }
        Typed::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("rm -rf *", "rm -rf /"));
        assert!(glob_match("*", ""));
        assert!(glob_match("LC_*", "LC_ALL"));
        assert!(!glob_match("LC_*", "LANG"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*shutdown*", "sudo shutdown -h now"));
        assert!(glob_match(r"what\?", "what?"));
        assert!(!glob_match(r"what\?", "whatx"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("127.0.0.1:*", "127.0.0.1:5432"));
        assert!(glob_match("é*", "été"));
    }

    #[test]
    fn commands_are_checked_whole_and_by_segment() {
        let deny = v(&["rm -rf *", "reboot*", "dd *"]);
        assert_eq!(denied_command(&deny, "rm   -rf  /tmp/x"), Some("rm -rf *"));
        assert_eq!(
            denied_command(&deny, "cd / && rm -rf tmp"),
            Some("rm -rf *")
        );
        assert_eq!(denied_command(&deny, "echo a; reboot"), Some("reboot*"));
        assert_eq!(denied_command(&deny, "x=$(dd if=/dev/zero)"), Some("dd *"));
        assert_eq!(denied_command(&deny, "ls -l"), None);
        assert_eq!(denied_command(&deny, "echo rm -rf /"), None);
        assert_eq!(denied_command(&[], "rm -rf /"), None);
    }

    #[test]
    fn env_and_forwarding() {
        let allow = v(&["LANG", "LC_*"]);
        assert!(env_allowed(&allow, "LC_CTYPE"));
        assert!(!env_allowed(&allow, "LD_PRELOAD"));
        assert!(!env_allowed(&allow, ""));
        assert!(forward_allowed(&v(&["*"]), "10.0.0.1", 80));
        assert!(forward_allowed(
            &v(&["localhost:*", "127.0.0.1:8*"]),
            "127.0.0.1",
            8080
        ));
        assert!(!forward_allowed(&v(&["127.0.0.1:8*"]), "127.0.0.1", 22));
    }

    #[test]
    fn line_tracker_follows_editing_keys() {
        let mut t = LineTracker::default();
        let input = b"ls\rrmX\x7f -rf /\r";
        assert_eq!(
            t.feed(input, 0),
            Typed::Line {
                end: 2,
                line: Some("ls".into())
            }
        );
        assert_eq!(
            t.feed(input, 3),
            Typed::Line {
                end: 13,
                line: Some("rm -rf /".into())
            }
        );
        assert_eq!(t.feed(input, 14), Typed::Pending);
        // Split across chunks, with Ctrl-U clearing the first attempt.
        assert_eq!(t.feed(b"oops\x15ech", 0), Typed::Pending);
        assert_eq!(
            t.feed(b"o hi\n", 0),
            Typed::Line {
                end: 4,
                line: Some("echo hi".into())
            }
        );
        // History recall makes the line unknown.
        assert_eq!(t.feed(b"\x1b[A\r", 0), Typed::Line { end: 3, line: None });
        assert_eq!(
            t.feed(b"pwd\n", 0),
            Typed::Line {
                end: 3,
                line: Some("pwd".into())
            }
        );
    }
}
