//! Access decisions: pure functions of (policy, identity, request). No I/O,
//! no clocks, no logging; callers audit the outcome.

use super::schema::{Connection, Policy};
use crate::identity::Identity;

/// Group entry meaning "any authenticated user".
pub const ANY_USER: &str = "*";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No connection has that name.
    UnknownTarget,
    /// The connection exists but this identity may not use it.
    NotAllowed,
    /// Allowed, but not on this port.
    PortNotAllowed { allowed: Vec<u16> },
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::UnknownTarget => f.write_str("unknown target"),
            Denial::NotAllowed => f.write_str("not allowed by policy"),
            Denial::PortNotAllowed { allowed } => {
                let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
                write!(f, "port not allowed (allowed: {})", list.join(", "))
            }
        }
    }
}

/// May `who` reach `target` (a connection name, case-insensitive) on `port`?
pub fn authorize<'p>(
    policy: &'p Policy,
    who: &Identity,
    target: &str,
    port: u16,
) -> Result<&'p Connection, Denial> {
    let conn = policy.connection(target).ok_or(Denial::UnknownTarget)?;
    if !allows(conn, who) {
        return Err(Denial::NotAllowed);
    }
    if !conn.ports.contains(&port) {
        return Err(Denial::PortNotAllowed {
            allowed: conn.ports.clone(),
        });
    }
    Ok(conn)
}

/// The connections `who` may use, in bundle order.
pub fn visible_connections<'p>(policy: &'p Policy, who: &Identity) -> Vec<&'p Connection> {
    policy
        .connections
        .iter()
        .filter(|c| allows(c, who))
        .collect()
}

/// Exact, case-sensitive match on user or any group; `*` in groups is anyone.
fn allows(conn: &Connection, who: &Identity) -> bool {
    conn.allow_users.contains(&who.user)
        || conn
            .allow_groups
            .iter()
            .any(|g| g == ANY_USER || who.groups.iter().any(|mine| mine == g))
}
