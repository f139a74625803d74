//! `[connection.ssh]` settings: the upstream account, the pinned upstream
//! host key, what the bridge lets through (environment variables, port
//! forwarding), recording, and command deny patterns.
//!
//! Patterns are globs (`*` any run of characters, `?` one character, `\`
//! escapes the next one), matched against the whole value; see
//! `crate::proxy::ssh::controls`. The credential is not here: it is the
//! secret named by `[connection.secrets]` role `private_key` or `password`.

use serde::Deserialize;

use crate::policy::PolicyError;

/// Default environment variables a client may set upstream.
pub const DEFAULT_ALLOW_ENV: &[&str] = &["LANG", "LC_*"];

/// Settings of a `kind = "ssh"` connection.
#[derive(Debug, Clone, PartialEq)]
pub struct SshSettings {
    /// The account the appliance logs in as upstream. `None` only when the
    /// connection has no `[connection.ssh]` table (sessions are then refused).
    pub user: Option<String>,
    /// Accepted upstream host key fingerprints (`SHA256:...`, as
    /// `ssh-keygen -lf` prints them). Empty only without a table.
    pub host_keys: Vec<String>,
    /// Globs of environment variable names forwarded upstream.
    pub allow_env: Vec<String>,
    /// Whether `direct-tcpip` channels (`ssh -L`) are allowed.
    pub allow_port_forwarding: bool,
    /// Globs of `host:port` destinations forwarding may reach (as the
    /// upstream resolves them); default any.
    pub forward_destinations: Vec<String>,
    /// Record interactive shells as asciicast v2 files.
    pub record: bool,
    /// Also record what the person typed (passwords typed at prompts included).
    pub record_input: bool,
    /// Globs of command lines refused (exec requests, and best effort for
    /// lines typed in interactive shells).
    pub deny_commands: Vec<String>,
    /// Globs of exec command lines held for a human approval.
    pub hold_commands: Vec<String>,
    /// Who may approve held commands (required with `hold_commands`).
    pub approvers_group: Option<String>,
    /// How long a held command waits for a decision.
    pub approval_timeout: std::time::Duration,
    /// An approval also covers the same command line from the same person for this long.
    pub approval_reuse_window: std::time::Duration,
    /// Interval of SSH keepalives to both peers, seconds (0 = off).
    pub keepalive_secs: u64,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            user: None,
            host_keys: Vec::new(),
            allow_env: DEFAULT_ALLOW_ENV.iter().map(|s| s.to_string()).collect(),
            allow_port_forwarding: false,
            forward_destinations: vec!["*".into()],
            record: true,
            record_input: false,
            deny_commands: Vec::new(),
            hold_commands: Vec::new(),
            approvers_group: None,
            approval_timeout: std::time::Duration::from_secs(600),
            approval_reuse_window: std::time::Duration::ZERO,
            keepalive_secs: 30,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshSettings {
    user: Option<String>,
    host_key: Option<OneOrMany>,
    allow_env: Option<Vec<String>>,
    allow_port_forwarding: Option<bool>,
    forward_destinations: Option<Vec<String>>,
    record: Option<bool>,
    record_input: Option<bool>,
    deny_commands: Option<Vec<String>>,
    hold_commands: Option<Vec<String>>,
    approvers_group: Option<String>,
    approval_timeout: Option<String>,
    approval_reuse_window: Option<String>,
    keepalive: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Validates the raw table; `whence` names it in errors.
pub(super) fn parse(table: toml::Table, whence: &str) -> Result<SshSettings, PolicyError> {
    let raw: RawSshSettings = super::typed(table, whence)?;
    let invalid = |msg: String| PolicyError::Invalid(format!("{whence}: {msg}"));
    let user = raw
        .user
        .ok_or_else(|| invalid("`user` (the upstream account) is required".into()))?;
    if user.is_empty() || user.len() > 64 || user.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(format!(
            "user {user:?} is not a valid account name"
        )));
    }
    let host_keys = match raw.host_key {
        Some(OneOrMany::One(k)) => vec![k],
        Some(OneOrMany::Many(v)) => v,
        None => Vec::new(),
    };
    if host_keys.is_empty() {
        return Err(invalid(
            "`host_key` is required: the upstream's host key fingerprint, e.g. \
             \"SHA256:...\" from `ssh-keyscan HOST | ssh-keygen -lf -`"
                .into(),
        ));
    }
    for k in &host_keys {
        if !is_sha256_fingerprint(k) {
            return Err(invalid(format!(
                "host_key {k:?} is not a SHA256 fingerprint (\"SHA256:\" and 43 base64 characters)"
            )));
        }
    }
    let keepalive_secs = match raw.keepalive {
        None => 30,
        Some(s) => humantime::parse_duration(&s)
            .map_err(|e| invalid(format!("keepalive = {s:?}: {e}")))?
            .as_secs(),
    };
    let d = SshSettings::default();
    let globs = |v: Option<Vec<String>>, default: Vec<String>, key: &str| {
        let v = v.unwrap_or(default);
        match v.iter().find(|g| g.is_empty() || g.len() > 1024) {
            Some(g) => Err(invalid(format!(
                "{key}: pattern {g:?} is empty or too long"
            ))),
            None => Ok(v),
        }
    };
    let hold_commands = globs(raw.hold_commands, Vec::new(), "hold_commands")?;
    if !hold_commands.is_empty() && raw.approvers_group.as_deref().unwrap_or("").is_empty() {
        return Err(invalid(
            "hold_commands needs approvers_group (who may approve)".into(),
        ));
    }
    let duration = |key: &str, v: Option<String>, default: std::time::Duration| match v {
        None => Ok(default),
        Some(s) => {
            humantime::parse_duration(&s).map_err(|e| invalid(format!("{key} = {s:?}: {e}")))
        }
    };
    let approval_timeout = duration("approval_timeout", raw.approval_timeout, d.approval_timeout)?;
    let approval_reuse_window = duration(
        "approval_reuse_window",
        raw.approval_reuse_window,
        std::time::Duration::ZERO,
    )?;
    if approval_timeout.is_zero() || approval_timeout > std::time::Duration::from_secs(86_400) {
        return Err(invalid(
            "approval_timeout must be between 1s and 24h".into(),
        ));
    }
    Ok(SshSettings {
        hold_commands,
        approvers_group: raw.approvers_group,
        approval_timeout,
        approval_reuse_window,
        user: Some(user),
        host_keys,
        allow_env: globs(raw.allow_env, d.allow_env, "allow_env")?,
        allow_port_forwarding: raw.allow_port_forwarding.unwrap_or(false),
        forward_destinations: globs(
            raw.forward_destinations,
            d.forward_destinations,
            "forward_destinations",
        )?,
        record: raw.record.unwrap_or(true),
        record_input: raw.record_input.unwrap_or(false),
        deny_commands: globs(raw.deny_commands, Vec::new(), "deny_commands")?,
        keepalive_secs,
    })
}

/// `SHA256:` followed by the 43-character unpadded base64 of a SHA-256 digest.
pub fn is_sha256_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn minimal_table_gets_defaults() {
        let s = parse(
            table(&format!("user = \"deploy\"\nhost_key = \"{FP}\"")),
            "w",
        )
        .unwrap();
        assert_eq!(s.user.as_deref(), Some("deploy"));
        assert_eq!(s.host_keys, [FP]);
        assert_eq!(s.allow_env, ["LANG", "LC_*"]);
        assert!(!s.allow_port_forwarding && s.record && !s.record_input);
        assert_eq!(s.keepalive_secs, 30);
    }

    #[test]
    fn full_table() {
        let s = parse(
            table(&format!(
                "user = \"u\"\nhost_key = [\"{FP}\"]\nallow_env = [\"TZ\"]\nallow_port_forwarding = true\n\
                 forward_destinations = [\"127.0.0.1:*\"]\nrecord = false\nrecord_input = true\n\
                 deny_commands = [\"rm -rf *\"]\nkeepalive = \"10s\""
            )),
            "w",
        )
        .unwrap();
        assert!(s.allow_port_forwarding && !s.record && s.record_input);
        assert_eq!(s.deny_commands, ["rm -rf *"]);
        assert_eq!(s.forward_destinations, ["127.0.0.1:*"]);
        assert_eq!(s.keepalive_secs, 10);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse(table(&format!("host_key = \"{FP}\"")), "w").unwrap_err();
        assert!(e.to_string().contains("`user`"), "{e}");
        let e = parse(table("user = \"u\""), "w").unwrap_err();
        assert!(e.to_string().contains("host_key"), "{e}");
        let e = parse(table("user = \"u\"\nhost_key = \"MD5:aa\""), "w").unwrap_err();
        assert!(e.to_string().contains("not a SHA256"), "{e}");
        let e = parse(
            table(&format!("user = \"u\"\nhost_key = \"{FP}\"\nbogus = 1")),
            "w",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
