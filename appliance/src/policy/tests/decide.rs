use std::collections::BTreeMap;
use std::time::Duration;

use super::super::*;
use crate::identity::Identity;

fn conn(name: &str, users: &[&str], groups: &[&str], ports: &[u16]) -> Connection {
    Connection {
        name: name.to_string(),
        kind: ConnectionKind::Tcp,
        upstream: "h:1".to_string(),
        ports: ports.to_vec(),
        allow_users: users.iter().map(|s| s.to_string()).collect(),
        allow_groups: groups.iter().map(|s| s.to_string()).collect(),
        secrets: BTreeMap::new(),
        description: None,
        settings: KindSettings::Tcp,
    }
}

fn policy() -> Policy {
    Policy {
        version: 1,
        dns_suffix: "hoop".to_string(),
        identity: IdentityConfig {
            issuer: "i".to_string(),
            audience: "a".to_string(),
            user_claim: "email".to_string(),
            groups_claim: "groups".to_string(),
            jwks: JwksSource::Url("https://i/j".to_string()),
            session_ttl: Duration::from_secs(60),
            device_flow: None,
        },
        connections: vec![
            conn("pg-prod", &["alice"], &["dba"], &[5432]),
            conn("web-1", &[], &["sre", "ops"], &[22, 2222]),
            conn("grafana", &[], &["*"], &[80]),
            conn("vault", &["bob"], &[], &[8200]),
        ],
        audit: Default::default(),
        routes: Vec::new(),
    }
}

fn who(user: &str, groups: &[&str]) -> Identity {
    Identity {
        user: user.to_string(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn allowed_by_user_or_group() {
    let p = policy();
    assert_eq!(
        authorize(&p, &who("alice", &[]), "pg-prod", 5432)
            .unwrap()
            .name,
        "pg-prod"
    );
    assert_eq!(
        authorize(&p, &who("carol", &["dba"]), "pg-prod", 5432)
            .unwrap()
            .name,
        "pg-prod"
    );
    assert_eq!(
        authorize(&p, &who("dave", &["x", "ops"]), "web-1", 2222)
            .unwrap()
            .name,
        "web-1"
    );
    assert_eq!(
        authorize(&p, &who("bob", &["dba"]), "vault", 8200)
            .unwrap()
            .name,
        "vault"
    );
}

#[test]
fn star_group_means_anyone_authenticated() {
    let p = policy();
    assert!(authorize(&p, &who("nobody", &[]), "grafana", 80).is_ok());
}

#[test]
fn not_allowed() {
    let p = policy();
    assert_eq!(
        authorize(&p, &who("carol", &["dev"]), "pg-prod", 5432),
        Err(Denial::NotAllowed)
    );
    assert_eq!(
        authorize(&p, &who("alice", &["dba"]), "vault", 8200),
        Err(Denial::NotAllowed)
    );
}

#[test]
fn matching_is_exact_and_case_sensitive() {
    let p = policy();
    assert_eq!(
        authorize(&p, &who("Alice", &[]), "pg-prod", 5432),
        Err(Denial::NotAllowed)
    );
    assert_eq!(
        authorize(&p, &who("c", &["DBA"]), "pg-prod", 5432),
        Err(Denial::NotAllowed)
    );
    assert_eq!(
        authorize(&p, &who("c", &["db"]), "pg-prod", 5432),
        Err(Denial::NotAllowed)
    );
    assert_eq!(
        authorize(&p, &who("", &[]), "pg-prod", 5432),
        Err(Denial::NotAllowed)
    );
    // "*" is only special in allow_groups, and only there as a pattern.
    assert_eq!(
        authorize(&p, &who("*", &["*"]), "vault", 8200),
        Err(Denial::NotAllowed)
    );
}

#[test]
fn unknown_target_and_case_insensitive_names() {
    let p = policy();
    let alice = who("alice", &[]);
    assert_eq!(
        authorize(&p, &alice, "pg-staging", 5432),
        Err(Denial::UnknownTarget)
    );
    assert_eq!(authorize(&p, &alice, "", 5432), Err(Denial::UnknownTarget));
    assert_eq!(
        authorize(&p, &alice, "PG-Prod", 5432).unwrap().name,
        "pg-prod"
    );
}

#[test]
fn port_not_allowed_lists_the_allowed_ports() {
    let p = policy();
    assert_eq!(
        authorize(&p, &who("d", &["sre"]), "web-1", 23),
        Err(Denial::PortNotAllowed {
            allowed: vec![22, 2222]
        })
    );
    // Existence is checked before the port, permission before the port.
    assert_eq!(
        authorize(&p, &who("d", &[]), "web-1", 23),
        Err(Denial::NotAllowed)
    );
    assert_eq!(
        Denial::PortNotAllowed {
            allowed: vec![22, 2222]
        }
        .to_string(),
        "port not allowed (allowed: 22, 2222)"
    );
}

#[test]
fn visible_connections_in_bundle_order() {
    let p = policy();
    let names = |w: &Identity| -> Vec<String> {
        visible_connections(&p, w)
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(
        names(&who("alice", &["sre"])),
        ["pg-prod", "web-1", "grafana"]
    );
    assert_eq!(names(&who("bob", &[])), ["grafana", "vault"]);
    assert_eq!(names(&who("x", &[])), ["grafana"]);
}

#[test]
fn empty_policy_denies_everything() {
    let mut p = policy();
    p.connections.clear();
    assert_eq!(
        authorize(&p, &who("alice", &["dba"]), "pg-prod", 5432),
        Err(Denial::UnknownTarget)
    );
    assert!(visible_connections(&p, &who("alice", &["dba"])).is_empty());
}
