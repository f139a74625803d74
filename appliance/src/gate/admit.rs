//! The admission decision for one tunnel request: a pure function of the
//! policy in force, the verified (or not) token, the revocation set and the
//! requested target. No I/O; the caller audits and answers.

use tunnel_lite::wire::Status;

use crate::identity::{Identity, IdentityError, RevokedSet, SessionClaims, SessionSigner};
use crate::policy::{authorize, Connection, Denial, Policy};

/// A request that may proceed.
#[derive(Debug)]
pub struct Admission<'p> {
    pub identity: Identity,
    pub connection: &'p Connection,
    pub token_exp: u64,
}

/// A refused request: the status sent to tunnel-lite, the reason shown to
/// the person, and who they were when the token was good enough to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub reason: String,
    pub identity: Option<Identity>,
}

impl Refusal {
    fn new(status: Status, reason: String, identity: Option<Identity>) -> Self {
        Refusal {
            status,
            reason,
            identity,
        }
    }
}

/// Decides whether a tunnel request may proceed.
pub fn admit<'p>(
    policy: Option<&'p Policy>,
    token: Result<SessionClaims, IdentityError>,
    revoked: &RevokedSet,
    target: &str,
    port: u16,
) -> Result<Admission<'p>, Refusal> {
    let claims = match token {
        Ok(c) => c,
        Err(IdentityError::Expired { exp }) => {
            return Err(Refusal::new(
                Status::TokenExpired,
                format!(
                    "session token expired at {}; run `tunnel-lite login` again",
                    rfc3339(exp)
                ),
                None,
            ))
        }
        Err(e) => {
            return Err(Refusal::new(
                Status::TokenInvalid,
                format!("session token refused ({e}); run `tunnel-lite login` again"),
                None,
            ))
        }
    };
    let identity = SessionSigner::identity_of(&claims);
    if revoked.contains(&identity.user) {
        return Err(Refusal::new(
            Status::IdentityRevoked,
            format!("access for {} has been revoked", identity.user),
            Some(identity),
        ));
    }
    let Some(policy) = policy else {
        return Err(Refusal::new(
            Status::PolicyNotLoaded,
            "the appliance has no policy loaded yet; ask an operator to install a signed bundle"
                .into(),
            Some(identity),
        ));
    };
    match authorize(policy, &identity, target, port) {
        Ok(connection) => Ok(Admission {
            identity,
            connection,
            token_exp: claims.exp,
        }),
        Err(Denial::UnknownTarget) => Err(Refusal::new(
            Status::UnknownTarget,
            format!(
                "no connection named {target:?} in policy version {}",
                policy.version
            ),
            Some(identity),
        )),
        Err(Denial::NotAllowed) => Err(Refusal::new(
            Status::NotAllowed,
            format!(
                "{} may not use {target:?} (policy version {})",
                identity.user, policy.version
            ),
            Some(identity),
        )),
        Err(Denial::PortNotAllowed { allowed }) => {
            let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
            Err(Refusal::new(
                Status::PortNotAllowed,
                format!(
                    "port {port} is not allowed for {target:?}; allowed: {}",
                    list.join(", ")
                ),
                Some(identity),
            ))
        }
    }
}

/// `2026-11-29T10:00:00Z` for a unix time in seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;

    fn policy() -> Policy {
        parse_policy(
            r#"
version = 3
[identity]
issuer = "https://idp.example"
audience = "appliance"
jwks_url = "https://idp.example/jwks"

[[connection]]
name = "pg-prod"
kind = "tcp"
upstream = "127.0.0.1:5432"
ports = [5432]
allow_groups = ["dba"]
"#,
        )
        .unwrap()
    }

    fn claims(user: &str, groups: &[&str]) -> SessionClaims {
        SessionClaims {
            sub: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            iat: 0,
            exp: 4_000_000_000,
            jti: "j".into(),
            iss: "appliance".into(),
        }
    }

    #[test]
    fn each_refusal_has_its_status() {
        let p = policy();
        let none = RevokedSet::default();
        let ok = admit(
            Some(&p),
            Ok(claims("alice", &["dba"])),
            &none,
            "pg-prod",
            5432,
        )
        .unwrap();
        assert_eq!(ok.identity.user, "alice");
        assert_eq!(ok.connection.name, "pg-prod");

        let status = |r: Result<Admission<'_>, Refusal>| r.unwrap_err().status;
        assert_eq!(
            status(admit(
                Some(&p),
                Ok(claims("bob", &["dev"])),
                &none,
                "pg-prod",
                5432
            )),
            Status::NotAllowed
        );
        assert_eq!(
            status(admit(
                Some(&p),
                Ok(claims("alice", &["dba"])),
                &none,
                "nope",
                5432
            )),
            Status::UnknownTarget
        );
        let r = admit(
            Some(&p),
            Ok(claims("alice", &["dba"])),
            &none,
            "pg-prod",
            80,
        )
        .unwrap_err();
        assert_eq!(r.status, Status::PortNotAllowed);
        assert!(r.reason.contains("allowed: 5432"), "{}", r.reason);
        assert_eq!(
            status(admit(
                None,
                Ok(claims("alice", &["dba"])),
                &none,
                "pg-prod",
                5432
            )),
            Status::PolicyNotLoaded
        );
        let r = admit(
            Some(&p),
            Err(IdentityError::Expired { exp: 0 }),
            &none,
            "pg-prod",
            5432,
        )
        .unwrap_err();
        assert_eq!(r.status, Status::TokenExpired);
        assert!(r.reason.contains("1970-01-01T00:00:00Z"), "{}", r.reason);
        assert_eq!(
            status(admit(
                Some(&p),
                Err(IdentityError::InvalidToken(
                    "signed by an unknown key".into()
                )),
                &none,
                "pg-prod",
                5432
            )),
            Status::TokenInvalid
        );
        let revoked = RevokedSet::from_users(["alice".to_string()]);
        let r = admit(
            Some(&p),
            Ok(claims("alice", &["dba"])),
            &revoked,
            "pg-prod",
            5432,
        )
        .unwrap_err();
        assert_eq!(r.status, Status::IdentityRevoked);
        assert_eq!(r.identity.unwrap().user, "alice");
    }

    #[test]
    fn revocation_wins_over_a_missing_policy() {
        let revoked = RevokedSet::from_users(["alice".to_string()]);
        let r = admit(None, Ok(claims("alice", &[])), &revoked, "x", 1).unwrap_err();
        assert_eq!(r.status, Status::IdentityRevoked);
    }
}
