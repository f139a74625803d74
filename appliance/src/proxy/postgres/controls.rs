//! The guardrails of one session: classify each Query and Parse, decide
//! allow / deny / hold, and build what replaces a refused statement.
//!
//! A refused statement is not dropped: it is replaced upstream by a `DO`
//! block that raises SQLSTATE 42501 with the policy's message. The server
//! then answers with the error and puts the transaction in exactly the
//! state an error would (failed inside a block, untouched outside), and in
//! the extended protocol it skips to the next Sync as for any error, so the
//! client's view and the server's never disagree.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::classify::{self, ClassifyOptions, PreparedStatements, StatementClass};
use super::guard::{self, GuardDecision};
use crate::policy::kinds::postgres_controls::{Guardrails, PgControls};

/// What to do with one Query or Parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Deny {
        class: StatementClass,
        rule: String,
        message: String,
    },
    Hold {
        class: StatementClass,
        rule: String,
    },
}

/// Per-session guardrail state (lives in the client-to-upstream direction).
pub struct Controls {
    settings: Arc<PgControls>,
    groups: Vec<String>,
    prepared: PreparedStatements,
    opts: ClassifyOptions,
    policy_version: Option<u64>,
    active: bool,
}

fn guardrails_configured(g: &Guardrails) -> bool {
    *g != Guardrails::default()
}

impl Controls {
    pub fn new(
        settings: Arc<PgControls>,
        groups: Vec<String>,
        policy_version: Option<u64>,
    ) -> Controls {
        let active = guardrails_configured(&settings.guardrails);
        Controls {
            settings,
            groups,
            prepared: PreparedStatements::default(),
            opts: ClassifyOptions::default(),
            policy_version,
            active,
        }
    }

    /// Whether statements are classified at all on this connection.
    pub fn active(&self) -> bool {
        self.active
    }

    pub fn settings(&self) -> &PgControls {
        &self.settings
    }

    /// Decides on a Query text, or on a Parse (`parse_name` = the statement name).
    pub fn check(
        &mut self,
        sql: &[u8],
        parse_name: Option<&str>,
    ) -> (Verdict, BTreeSet<StatementClass>) {
        let c = classify::classify_bytes(sql, &self.opts);
        let classes = self.prepared.effective(&c);
        let decision =
            guard::decide_statement(&self.settings, &self.groups, &classes, &c.exposures);
        let verdict = match decision {
            GuardDecision::Allow => Verdict::Forward,
            GuardDecision::Deny { class, rule } => Verdict::Deny {
                message: guard::denial_message(class, &rule, self.policy_version),
                class,
                rule,
            },
            GuardDecision::Hold { class, rule } => Verdict::Hold { class, rule },
        };
        if verdict == Verdict::Forward || matches!(verdict, Verdict::Hold { .. }) {
            // What runs is remembered, so a later EXECUTE carries its classes.
            self.prepared.record(&c);
            if let Some(name) = parse_name {
                self.prepared.record_parse(name, classes.clone());
            }
        }
        (verdict, classes)
    }

    /// Forgets a prepared statement after a protocol Close.
    pub fn close_statement(&mut self, name: &str) {
        self.prepared.close(name);
    }
}

/// The Query that makes the server raise `message` with `sqlstate`
/// (five characters of [0-9A-Z]; anything else becomes 42501).
pub fn raise_query(sqlstate: &str, message: &str) -> Vec<u8> {
    let sqlstate = if sqlstate.len() == 5
        && sqlstate
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        sqlstate
    } else {
        "42501"
    };
    // Dollar quoting with a tag the message cannot close; quotes doubled.
    let clean: String = message
        .replace("$hoop$", "$ hoop $")
        .replace('\'', "''")
        .chars()
        .filter(|c| *c != '\0')
        .collect();
    let sql = format!(
        "DO $hoop$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = '{clean}'; END$hoop$"
    );
    let mut out = Vec::with_capacity(sql.len() + 6);
    // No NUL remains, so encoding cannot fail.
    let _ = super::codec::query(&mut out, &sql);
    out
}

/// SHA-256 hex of a statement text: what an approval's reuse window matches.
pub fn fingerprint(sql: &[u8]) -> String {
    tunnel_lite::tls::hex(ring::digest::digest(&ring::digest::SHA256, sql).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls(tables: &str) -> Controls {
        let policy = crate::policy::parse_policy(&format!(
            "version = 3\n[identity]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://i/jwks\"\n\
             [[connection]]\nname = \"pg\"\nkind = \"postgres\"\nupstream = \"h:5432\"\nallow_groups = [\"dev\"]\n\
             [connection.postgres]\n{}",
            tables
        ))
        .unwrap();
        let crate::policy::KindSettings::Postgres(s) = &policy.connections[0].settings else {
            panic!("postgres settings")
        };
        Controls::new(Arc::new(s.controls.clone()), vec!["dev".into()], Some(3))
    }

    #[test]
    fn deny_hold_and_prepared_statements() {
        let mut c = controls(
            "[connection.postgres.guardrails]\ndeny = [\"drop\"]\nhold = [\"write\"]\n\
             [connection.postgres.approval]\napprovers_group = \"leads\"\n",
        );
        assert!(c.active());
        assert_eq!(c.check(b"select 1", None).0, Verdict::Forward);
        let (v, _) = c.check(b"drop table t", None);
        assert!(
            matches!(v, Verdict::Deny { class: StatementClass::Drop, ref message, .. } if message.contains("policy version 3"))
        );
        assert!(matches!(
            c.check(b"delete from t where id = 1", None).0,
            Verdict::Hold { .. }
        ));
        // Preparing does nothing yet; the prepared DELETE's class goes with EXECUTE.
        assert_eq!(
            c.check(b"PREPARE p AS DELETE FROM t WHERE id = $1", None).0,
            Verdict::Forward
        );
        assert!(matches!(
            c.check(b"EXECUTE p(1)", None).0,
            Verdict::Hold { .. }
        ));
        // Unparseable text is denied (fail closed) once guardrails exist.
        assert!(matches!(
            c.check(b"SELEKT nonsense ((", None).0,
            Verdict::Deny {
                class: StatementClass::Unparsed,
                ..
            }
        ));
    }

    #[test]
    fn no_guardrails_means_no_classification() {
        let c = controls("");
        assert!(!c.active());
    }

    #[test]
    fn raise_query_is_safe() {
        let q = raise_query("42501", "it's $hoop$ denied");
        let text = String::from_utf8_lossy(&q);
        assert!(text.contains("MESSAGE = 'it''s $ hoop $ denied'"), "{text}");
        assert_eq!(q[0], b'Q');
    }
}
