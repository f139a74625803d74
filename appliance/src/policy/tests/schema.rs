use std::time::Duration;

use super::super::*;
use super::policy_text;

const EXAMPLE: &str = include_str!("../../../../policy.example.toml");

fn err(text: &str) -> String {
    match parse_policy(text) {
        Ok(p) => panic!("expected an error, parsed {p:?}"),
        Err(e) => e.to_string(),
    }
}

/// `policy_text(1)` with `from` replaced by `to` (which must be present).
fn with(from: &str, to: &str) -> String {
    let base = policy_text(1);
    assert!(base.contains(from), "{from:?} not in the base policy");
    base.replacen(from, to, 1)
}

#[test]
fn example_parses() {
    let p = parse_policy(EXAMPLE).unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(p.dns_suffix, "hoop");
    assert_eq!(
        p.identity.jwks,
        JwksSource::Url("https://login.example.com/.well-known/jwks.json".into())
    );
    assert_eq!(p.identity.session_ttl, Duration::from_secs(8 * 3600));
    let df = p.identity.device_flow.as_ref().unwrap();
    assert_eq!(df.client_id, "tunnel-lite");
    let names: Vec<_> = p.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pg-prod", "web-1", "grafana", "redis-cache"]);
    let kinds: Vec<_> = p.connections.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ConnectionKind::Postgres,
            ConnectionKind::Ssh,
            ConnectionKind::Http,
            ConnectionKind::Tcp
        ]
    );
    assert_eq!(p.connections[0].ports, [5432]);
    assert_eq!(p.connections[0].secrets["password"], "pg_prod_password");
    assert_eq!(p.connections[1].secrets["private_key"], "web_1_ssh_key");
    assert_eq!(p.connections[2].ports, [80]);
    assert_eq!(p.connections[2].secrets["token"], "grafana_api_token");
    assert_eq!(p.connections[3].ports, [6379]);
    assert_eq!(p.connections[3].upstream, "[fd00:10::7]:6379");
}

#[test]
fn example_inline_jwks_alternative_parses() {
    // Swap jwks_url for the commented inline JWK Set, as the comment says to.
    let mut out = Vec::new();
    let mut in_jwks = false;
    for line in EXAMPLE.lines() {
        if line.starts_with("jwks_url") {
            continue;
        }
        if line.starts_with("# jwks = '''") {
            in_jwks = true;
        }
        if in_jwks {
            let uncommented = line.strip_prefix("# ").unwrap_or(line);
            in_jwks = uncommented != "'''";
            out.push(uncommented);
        } else {
            out.push(line);
        }
    }
    let p = parse_policy(&out.join("\n")).unwrap();
    match &p.identity.jwks {
        JwksSource::Inline(json) => assert!(json.contains("\"kty\": \"RSA\"")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults() {
    let p = parse_policy(&policy_text(7)).unwrap();
    assert_eq!(p.version, 7);
    assert_eq!(p.dns_suffix, "hoop");
    assert_eq!(p.identity.user_claim, "email");
    assert_eq!(p.identity.groups_claim, "groups");
    assert_eq!(p.identity.session_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(p.identity.device_flow, None);
    let c = &p.connections[0];
    assert_eq!(c.ports, [5432]);
    assert!(c.allow_users.is_empty());
    assert_eq!(c.description, None);

    let ssh = with("kind = \"postgres\"", "kind = \"ssh\"");
    assert_eq!(parse_policy(&ssh).unwrap().connections[0].ports, [22]);
    let http = with("kind = \"postgres\"", "kind = \"http\"");
    assert_eq!(parse_policy(&http).unwrap().connections[0].ports, [80]);

    let df = with(
        "[[connection]]",
        "[identity.device_flow]\nclient_id = \"c\"\n\
         device_authorization_endpoint = \"https://idp/device\"\n\
         token_endpoint = \"https://idp/token\"\n\n[[connection]]",
    );
    let p = parse_policy(&df).unwrap();
    assert_eq!(
        p.identity.device_flow.unwrap().scopes,
        ["openid", "email", "profile"]
    );
}

#[test]
fn no_connections_is_valid() {
    let text = policy_text(1);
    let cut = text.find("[[connection]]").unwrap();
    assert!(parse_policy(&text[..cut]).unwrap().connections.is_empty());
}

#[test]
fn toml_errors_name_key_and_line() {
    let e = err(&with("allow_groups", "allow_grups"));
    assert!(e.contains("allow_grups") && e.contains("line 12"), "{e}");
    let e = err(&with("kind = \"postgres\"", "kind = \"mysql\""));
    assert!(e.contains("mysql") && e.contains("line 10"), "{e}");
    let e = err(&with("audience = \"appliance\"\n", ""));
    assert!(e.contains("audience"), "{e}");
    let e = err(&with("version = 1", "version = -1"));
    assert!(e.contains("line 1"), "{e}");
    let e = err(&with(
        "allow_groups = [\"dba\"]",
        "allow_groups = [\"dba\"]\nports = [70000]",
    ));
    assert!(e.contains("line 13"), "{e}");
    let e = err(&with(
        "[connection.secrets]",
        "[connection.secrets]\nnested = { a = \"b\" }",
    ));
    assert!(e.contains("line 15") || e.contains("line 16"), "{e}");
    let e = err(&format!("{}\nbogus = 1\n", policy_text(1)));
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn validation_errors_name_key_and_line() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"x\"",
            &[
                "connection \"pg-prod\" (line 11)",
                "upstream \"x\" is not HOST:PORT",
            ],
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"::1:5432\"",
            &["line 11", "brackets"],
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"db:0\"",
            &["line 11"],
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"db:99999\"",
            &["line 11"],
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"a b:1\"",
            &["line 11"],
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"[zz]:1\"",
            &["line 11"],
        ),
        (
            "name = \"pg-prod\"",
            "name = \"PG-prod\"",
            &["line 9", "DNS label"],
        ),
        (
            "name = \"pg-prod\"",
            "name = \"-pg\"",
            &["line 9", "DNS label"],
        ),
        ("name = \"pg-prod\"", "name = \"\"", &["line 9"]),
        (
            "kind = \"postgres\"",
            "kind = \"tcp\"",
            &["connection \"pg-prod\"", "no default port"],
        ),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = []",
            &["connection \"pg-prod\" (line 8) allows nobody"],
        ),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = [\"dba\", \"\"]",
            &["empty name"],
        ),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = [\"dba\"]\nports = []",
            &["line 13", "ports must not be empty"],
        ),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = [\"dba\"]\nports = [0]",
            &["line 13", "0"],
        ),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = [\"dba\"]\nports = [1, 2, 1]",
            &["line 13", "twice"],
        ),
        (
            "password = \"pg_prod_password\"",
            "password = \"hunter2!\"",
            &["secrets.password", "NAME of a secret"],
        ),
        (
            "password = \"pg_prod_password\"",
            "pass-word = \"x\"",
            &["role"],
        ),
        (
            "issuer = \"https://idp.example.com/\"",
            "issuer = \" \"",
            &["identity.issuer (line 4)"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "jwks_url = \"ftp://x\"",
            &["identity.jwks_url (line 6)", "http(s)"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "",
            &["[identity] (line 3)", "jwks_url"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "jwks_url = \"https://x/j\"\njwks = '{\"keys\":[{\"kty\":\"OKP\"}]}'",
            &["only one"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "jwks = 'not json'",
            &["identity.jwks (line 6)", "JSON"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "jwks = '{\"keys\": []}'",
            &["identity.jwks (line 6)", "no keys"],
        ),
        (
            "jwks_url = \"https://idp.example.com/jwks.json\"",
            "jwks = '{\"key\": [{}]}'",
            &["JWK Set"],
        ),
        (
            "audience = \"appliance\"",
            "audience = \"appliance\"\nsession_ttl = \"8 fortnights?\"",
            &["identity.session_ttl (line 6)"],
        ),
        (
            "audience = \"appliance\"",
            "audience = \"appliance\"\nsession_ttl = \"8d\"",
            &["identity.session_ttl (line 6)", "7 days"],
        ),
        (
            "audience = \"appliance\"",
            "audience = \"appliance\"\nsession_ttl = \"0s\"",
            &["identity.session_ttl (line 6)"],
        ),
        (
            "version = 1",
            "version = 1\ndns_suffix = \"Hoop\"",
            &["dns_suffix (line 2)"],
        ),
        (
            "version = 1",
            "version = 1\ndns_suffix = \".hoop\"",
            &["dns_suffix (line 2)"],
        ),
    ];
    for (from, to, needles) in cases {
        let e = err(&with(from, to));
        for n in *needles {
            assert!(e.contains(n), "{to:?}: {e:?} does not contain {n:?}");
        }
    }
}

#[test]
fn good_values_accepted() {
    for (from, to) in [
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"10.0.0.1:5432\"",
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"[::1]:5432\"",
        ),
        (
            "upstream = \"db.internal:5432\"",
            "upstream = \"my_host.corp:1\"",
        ),
        ("version = 1", "version = 1\ndns_suffix = \"corp.example\""),
        (
            "audience = \"appliance\"",
            "audience = \"appliance\"\nsession_ttl = \"7days\"",
        ),
        (
            "audience = \"appliance\"",
            "audience = \"appliance\"\nsession_ttl = \"30m\"",
        ),
        ("allow_groups = [\"dba\"]", "allow_users = [\"a@b\"]"),
        (
            "allow_groups = [\"dba\"]",
            "allow_groups = [\"dba\"]\nports = [5432, 6432]",
        ),
    ] {
        parse_policy(&with(from, to)).unwrap_or_else(|e| panic!("{to}: {e}"));
    }
}

#[test]
fn duplicate_names_rejected() {
    let text = format!(
        "{}\n[[connection]]\nname = \"pg-prod\"\nkind = \"tcp\"\nupstream = \"h:1\"\nports = [1]\nallow_users = [\"u\"]\n",
        policy_text(1)
    );
    let e = err(&text);
    assert!(e.contains("duplicate") && e.contains("line 8"), "{e}");
}

#[test]
fn kind_serializes_lowercase() {
    assert_eq!(
        serde_json::to_string(&ConnectionKind::Postgres).unwrap(),
        "\"postgres\""
    );
    assert_eq!(ConnectionKind::Tcp.to_string(), "tcp");
}
