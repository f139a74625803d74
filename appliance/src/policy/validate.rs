//! TOML text -> raw structs -> validated [`Policy`]. Every error names the key
//! and the line it is on. No I/O, no signature checks (see `signature.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::schema::{
    Connection, DeviceFlowConfig, IdentityConfig, JwksSource, Policy, RawConnection, RawDeviceFlow,
    RawIdentity, RawPolicy,
};
use super::PolicyError;

const DEFAULT_DNS_SUFFIX: &str = "hoop";
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const MAX_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// Parse and validate a policy bundle's TOML text (no signature check: this is
/// what `appliance policy check FILE` runs; the server goes through
/// `verify_bundle`).
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
    Validator { text }.policy(raw)
}

struct Validator<'a> {
    text: &'a str,
}

fn invalid(msg: String) -> PolicyError {
    PolicyError::Invalid(msg)
}

impl Validator<'_> {
    /// 1-based line of a byte offset span.
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn policy(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let dns_suffix = match raw.dns_suffix {
            None => DEFAULT_DNS_SUFFIX.to_string(),
            Some(s) => {
                let line = self.line(s.span());
                let s = s.into_inner();
                if !is_dns_name(&s) {
                    return Err(invalid(format!(
                        "dns_suffix (line {line}): {s:?} is not a lowercase DNS name \
                         (labels of [a-z0-9-] separated by dots)"
                    )));
                }
                s
            }
        };
        let identity = self.identity(raw.identity)?;
        let mut connections = Vec::with_capacity(raw.connection.len());
        let mut seen = BTreeMap::new();
        for c in raw.connection {
            let line = self.line(c.span());
            let conn = self.connection(c.into_inner(), line)?;
            if let Some(first) = seen.insert(conn.name.clone(), line) {
                return Err(invalid(format!(
                    "connection {:?} (line {line}): duplicate name, already defined at line {first}",
                    conn.name
                )));
            }
            connections.push(conn);
        }
        let line = |span| self.line(span);
        Ok(Policy {
            version: raw.version,
            dns_suffix,
            identity,
            connections,
            audit: super::routes::validate_audit(raw.audit, &line)?,
            routes: super::routes::validate_routes(raw.route, &line)?,
        })
    }

    fn non_empty(&self, key: &str, v: Spanned<String>) -> Result<String, PolicyError> {
        let line = self.line(v.span());
        let v = v.into_inner();
        if v.trim().is_empty() {
            return Err(invalid(format!("{key} (line {line}): must not be empty")));
        }
        Ok(v)
    }

    fn url(&self, key: &str, v: Spanned<String>) -> Result<String, PolicyError> {
        let line = self.line(v.span());
        let v = v.into_inner();
        let rest = v
            .strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Ok(v)
            }
            _ => Err(invalid(format!(
                "{key} (line {line}): {v:?} is not an http(s):// URL"
            ))),
        }
    }

    fn identity(&self, raw: Spanned<RawIdentity>) -> Result<IdentityConfig, PolicyError> {
        let table_line = self.line(raw.span());
        let raw = raw.into_inner();
        let issuer = self.non_empty("identity.issuer", raw.issuer)?;
        let audience = self.non_empty("identity.audience", raw.audience)?;
        let user_claim = match raw.user_claim {
            Some(v) => self.non_empty("identity.user_claim", v)?,
            None => "email".to_string(),
        };
        let groups_claim = match raw.groups_claim {
            Some(v) => self.non_empty("identity.groups_claim", v)?,
            None => "groups".to_string(),
        };
        let jwks = match (raw.jwks, raw.jwks_url) {
            (Some(inline), None) => JwksSource::Inline(self.jwks_inline(inline)?),
            (None, Some(url)) => JwksSource::Url(self.url("identity.jwks_url", url)?),
            (Some(inline), Some(_)) => {
                let line = self.line(inline.span());
                return Err(invalid(format!(
                    "identity.jwks (line {line}): set only one of `jwks` (inline JWK Set) or `jwks_url`"
                )));
            }
            (None, None) => {
                return Err(invalid(format!(
                    "[identity] (line {table_line}): one of `jwks` (inline JWK Set) or `jwks_url` is required"
                )))
            }
        };
        let session_ttl = match raw.session_ttl {
            None => DEFAULT_SESSION_TTL,
            Some(v) => self.session_ttl(v)?,
        };
        let device_flow = raw.device_flow.map(|d| self.device_flow(d)).transpose()?;
        Ok(IdentityConfig {
            issuer,
            audience,
            user_claim,
            groups_claim,
            jwks,
            session_ttl,
            device_flow,
        })
    }

    fn jwks_inline(&self, v: Spanned<String>) -> Result<String, PolicyError> {
        let line = self.line(v.span());
        let text = v.into_inner();
        let bad = |why: &str| invalid(format!("identity.jwks (line {line}): {why}"));
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        let keys = value
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| bad("expected a JWK Set: {\"keys\": [...]}"))?;
        if keys.is_empty() {
            return Err(bad("the JWK Set has no keys"));
        }
        if let Some(i) = keys
            .iter()
            .position(|k| k.get("kty").and_then(|t| t.as_str()).is_none())
        {
            return Err(bad(&format!("keys[{i}] is not a JWK (no \"kty\")")));
        }
        Ok(text)
    }

    fn session_ttl(&self, v: Spanned<String>) -> Result<Duration, PolicyError> {
        let line = self.line(v.span());
        let text = v.into_inner();
        let ttl = humantime::parse_duration(text.trim()).map_err(|e| {
            invalid(format!(
                "identity.session_ttl (line {line}): {text:?} is not a duration like \"8h\" ({e})"
            ))
        })?;
        if ttl.is_zero() || ttl > MAX_SESSION_TTL {
            return Err(invalid(format!(
                "identity.session_ttl (line {line}): {text:?} must be more than 0 and at most 7 days"
            )));
        }
        Ok(ttl)
    }

    fn device_flow(&self, raw: Spanned<RawDeviceFlow>) -> Result<DeviceFlowConfig, PolicyError> {
        let raw = raw.into_inner();
        let scopes = match raw.scopes {
            None => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(s) => {
                let line = self.line(s.span());
                let s = s.into_inner();
                if s.is_empty() || s.iter().any(|x| x.is_empty() || x.contains(' ')) {
                    return Err(invalid(format!(
                        "identity.device_flow.scopes (line {line}): must be a non-empty list of \
                         non-empty scope names without spaces"
                    )));
                }
                s
            }
        };
        Ok(DeviceFlowConfig {
            client_id: self.non_empty("identity.device_flow.client_id", raw.client_id)?,
            device_authorization_endpoint: self.url(
                "identity.device_flow.device_authorization_endpoint",
                raw.device_authorization_endpoint,
            )?,
            token_endpoint: self.url("identity.device_flow.token_endpoint", raw.token_endpoint)?,
            scopes,
        })
    }

    fn connection(&self, raw: RawConnection, table_line: usize) -> Result<Connection, PolicyError> {
        let name_line = self.line(raw.name.span());
        let name = raw.name.into_inner();
        if !is_dns_label(&name) {
            return Err(invalid(format!(
                "connection {name:?} (line {name_line}): name must be a DNS label: 1 to 63 of \
                 [a-z0-9-], not starting or ending with '-'"
            )));
        }
        let ctx = |line: usize| format!("connection {name:?} (line {line})");

        let up_line = self.line(raw.upstream.span());
        let upstream = raw.upstream.into_inner();
        if let Err(why) = check_upstream(&upstream) {
            return Err(invalid(format!(
                "{}: upstream {upstream:?} is not HOST:PORT ({why})",
                ctx(up_line)
            )));
        }

        let ports = match raw.ports {
            Some(p) => {
                let line = self.line(p.span());
                let ports = p.into_inner();
                check_ports(&ports)
                    .map_err(|why| invalid(format!("{}: ports {why}", ctx(line))))?;
                ports
            }
            None => raw.kind.default_ports().ok_or_else(|| {
                invalid(format!(
                    "{}: kind \"{}\" has no default port; set `ports = [...]`",
                    ctx(table_line),
                    raw.kind
                ))
            })?,
        };

        if raw.allow_users.is_empty() && raw.allow_groups.is_empty() {
            return Err(invalid(format!(
                "connection {name:?} (line {table_line}) allows nobody; set allow_users or allow_groups"
            )));
        }
        for (key, list) in [
            ("allow_users", &raw.allow_users),
            ("allow_groups", &raw.allow_groups),
        ] {
            if list.iter().any(|s| s.trim().is_empty()) {
                return Err(invalid(format!(
                    "{}: {key} contains an empty name",
                    ctx(table_line)
                )));
            }
        }

        let secrets = match raw.secrets {
            None => BTreeMap::new(),
            Some(s) => {
                let line = self.line(s.span());
                let map = s.into_inner();
                for (role, secret) in &map {
                    if !is_secret_name(role) {
                        return Err(invalid(format!(
                            "{}: secrets role {role:?} must match [A-Za-z0-9_]+",
                            ctx(line)
                        )));
                    }
                    if !is_secret_name(secret) {
                        return Err(invalid(format!(
                            "{}: secrets.{role} must be the NAME of a secret in the appliance's \
                             store, matching [A-Za-z0-9_]+ (secret values never go in the bundle)",
                            ctx(line)
                        )));
                    }
                }
                map
            }
        };

        let settings = super::kinds::validate(
            raw.kind,
            super::kinds::RawKindTables {
                postgres: raw.postgres,
                ssh: raw.ssh,
                http: raw.http,
            },
            &format!("connection {name:?}"),
            &|span| self.line(span),
        )?;

        Ok(Connection {
            settings,
            name,
            kind: raw.kind,
            upstream,
            ports,
            allow_users: raw.allow_users,
            allow_groups: raw.allow_groups,
            secrets,
            description: raw.description,
        })
    }
}

fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("must not be empty".to_string());
    }
    if ports.contains(&0) {
        return Err("must not contain 0".to_string());
    }
    let mut seen = BTreeSet::new();
    for p in ports {
        if !seen.insert(p) {
            return Err(format!("list {p} twice"));
        }
    }
    Ok(())
}

/// `host:port`, host a DNS name, an IPv4 address or `[IPv6]`.
pub(super) fn check_upstream(s: &str) -> Result<(), &'static str> {
    let (host_ok, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or("expected [IPv6]:PORT")?;
        (v6.parse::<Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or("missing :PORT")?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets: [::1]:5432");
        }
        (host.parse::<Ipv4Addr>().is_ok() || is_hostname(host), port)
    };
    if !host_ok {
        return Err("bad host");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => Ok(()),
        _ => Err("port must be 1 to 65535"),
    }
}

/// A host name as found in upstream addresses (underscores tolerated, as
/// internal DNS often has them).
fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric dotted name is a mistyped IPv4 address, not a host.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
