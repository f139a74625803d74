//! Header rewriting, pure functions over a `HeaderMap`: hop-by-hop headers
//! dropped both ways (RFC 9110 7.6.1), client headers the policy names
//! stripped, then `Host`, `X-Forwarded-For/Proto/Host`, the injected
//! credential and the identity assertion set by the gateway, so no client
//! header can override them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never cross the gateway as they are.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // The gateway answers `Expect: 100-continue` itself (hyper does, when
    // the body is first read to forward it).
    header::EXPECT,
];

/// Headers only the gateway sets.
const FORWARDING: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("forwarded"),
];

/// What the gateway sets on every upstream request.
pub struct Forwarding<'a> {
    /// The laptop's address as the appliance sees it.
    pub client_ip: IpAddr,
    /// `Host` for the upstream (ignored with `preserve_host`).
    pub upstream_authority: &'a str,
    pub preserve_host: bool,
    /// Client headers to remove (besides the injected ones).
    pub strip: &'a [HeaderName],
    /// Credential headers, set after stripping.
    pub inject: &'a [(HeaderName, HeaderValue)],
    /// The identity assertion header, if enabled.
    pub assertion: Option<(&'a HeaderName, HeaderValue)>,
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header); returns the protocol.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let upgrade = headers.get(header::UPGRADE)?.to_str().ok()?;
    connection_tokens(headers)
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
        .then(|| upgrade.trim().to_ascii_lowercase())
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Drops hop-by-hop headers, including those the `Connection` header names.
/// With `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
pub fn drop_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for h in named {
        if !(upgrade && h == header::UPGRADE) {
            headers.remove(&h);
        }
    }
    for h in &HOP_BY_HOP {
        if !(upgrade && *h == header::UPGRADE) {
            headers.remove(h);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Rewrites a client request's headers for the upstream.
pub fn rewrite_request(headers: &mut HeaderMap, f: Forwarding<'_>, upgrade: bool) {
    let client_host = headers.get(header::HOST).cloned();
    drop_hop_by_hop(headers, upgrade);
    for h in f.strip.iter().chain(FORWARDING.iter()) {
        headers.remove(h);
    }
    for (h, _) in f.inject {
        headers.remove(h);
    }
    if let Some((h, _)) = &f.assertion {
        headers.remove(*h);
    }
    let host = match (&client_host, f.preserve_host) {
        (Some(h), true) => h.clone(),
        _ => HeaderValue::from_str(f.upstream_authority)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
    };
    headers.insert(header::HOST, host);
    if let Ok(v) = HeaderValue::from_str(&f.client_ip.to_string()) {
        headers.insert(FORWARDING[0].clone(), v);
    }
    headers.insert(FORWARDING[1].clone(), HeaderValue::from_static("http"));
    if let Some(h) = client_host {
        headers.insert(FORWARDING[2].clone(), h);
    }
    for (h, v) in f.inject {
        headers.insert(h.clone(), v.clone());
    }
    if let Some((h, v)) = f.assertion {
        headers.insert(h.clone(), v);
    }
}

/// Total size of a request head as sent: request line plus header lines.
pub fn head_size(method: &str, target: &str, headers: &HeaderMap) -> usize {
    let line = method.len() + 1 + target.len() + 11;
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum::<usize>()
        + line
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_then_injects() {
        let mut h = map(&[
            ("host", "grafana.hoop"),
            ("authorization", "Bearer client-token"),
            ("cookie", "session=abc"),
            ("x-api-key", "client-key"),
            ("x-appliance-identity", "forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("accept", "*/*"),
        ]);
        let strip = [header::AUTHORIZATION, header::COOKIE];
        let inject = [(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("real-key"),
        )];
        let assertion_header = HeaderName::from_static("x-appliance-identity");
        rewrite_request(
            &mut h,
            Forwarding {
                client_ip: "10.1.2.3".parse().unwrap(),
                upstream_authority: "127.0.0.1:3000",
                preserve_host: false,
                strip: &strip,
                inject: &inject,
                assertion: Some((&assertion_header, HeaderValue::from_static("jwt"))),
            },
            false,
        );
        assert_eq!(h["host"], "127.0.0.1:3000");
        assert_eq!(h["x-forwarded-host"], "grafana.hoop");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-api-key"], "real-key");
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert_eq!(h["x-appliance-identity"], "jwt");
        assert_eq!(h["accept"], "*/*");
        for gone in [
            "authorization",
            "cookie",
            "connection",
            "x-custom",
            "keep-alive",
            "transfer-encoding",
            "expect",
        ] {
            assert!(h.get(gone).is_none(), "{gone} kept");
        }
    }

    #[test]
    fn preserve_host_and_upgrade() {
        let mut h = map(&[
            ("host", "grafana.hoop"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&h).as_deref(), Some("websocket"));
        rewrite_request(
            &mut h,
            Forwarding {
                client_ip: "127.0.0.1".parse().unwrap(),
                upstream_authority: "up:1",
                preserve_host: true,
                strip: &[],
                inject: &[],
                assertion: None,
            },
            true,
        );
        assert_eq!(h["host"], "grafana.hoop");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn head_size_counts_lines() {
        let h = map(&[("host", "a")]);
        // "GET / HTTP/1.1\r\n" + "host: a\r\n" + "\r\n"
        assert_eq!(head_size("GET", "/", &h), 16 + 9 + 2);
    }
}
