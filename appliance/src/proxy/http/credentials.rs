//! The credential headers a session injects upstream, resolved once at
//! session start from the secret store: `[connection.http.headers]`
//! templates, `basic_auth`, `api_key`, and the connection's `token` secret
//! role (`Authorization: Bearer`, unless the settings already set
//! `Authorization`). Values are marked sensitive; errors name secrets only.

use std::collections::BTreeMap;

use base64::Engine;
use http::header::{self, HeaderName, HeaderValue};

use super::template::RenderError;
use crate::policy::kinds::http::HttpSettings;
use crate::secrets::{Secret, SecretStore};

/// The connection's secret role injected as a bearer token.
pub const TOKEN_ROLE: &str = "token";

/// Every injected header, in a stable order.
pub fn resolve(
    settings: &HttpSettings,
    roles: &BTreeMap<String, String>,
    store: &SecretStore,
) -> Result<Vec<(HeaderName, HeaderValue)>, RenderError> {
    let mut out = Vec::new();
    for (name, template) in &settings.headers {
        out.push((name.clone(), template.render(store)?));
    }
    if let Some(b) = &settings.basic_auth {
        let pw = get(store, &b.password_secret)?;
        let raw = format!("{}:{}", b.user, pw.expose());
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        out.push((
            header::AUTHORIZATION,
            sensitive(&value, &b.password_secret)?,
        ));
    }
    if let Some(k) = &settings.api_key {
        let v = get(store, &k.secret)?;
        let value = format!("{}{}", k.prefix, v.expose());
        out.push((k.header.clone(), sensitive(&value, &k.secret)?));
    }
    let has_authorization = out.iter().any(|(h, _)| h == header::AUTHORIZATION);
    if let (false, Some(name)) = (has_authorization, roles.get(TOKEN_ROLE)) {
        let v = get(store, name)?;
        let value = format!("Bearer {}", v.expose());
        out.push((header::AUTHORIZATION, sensitive(&value, name)?));
    }
    Ok(out)
}

fn get(store: &SecretStore, name: &str) -> Result<Secret, RenderError> {
    store
        .get(name)
        .ok_or_else(|| RenderError::Missing(name.to_string()))
}

fn sensitive(value: &str, secret: &str) -> Result<HeaderValue, RenderError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(RenderError::NotHeaderSafe(secret.to_string()));
    }
    let mut v =
        HeaderValue::from_str(value).map_err(|_| RenderError::NotHeaderSafe(secret.to_string()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::kinds::http::{ApiKey, BasicAuth};
    use crate::proxy::http::template::Template;

    fn store() -> SecretStore {
        SecretStore::load_from(
            None,
            vec![
                ("APPLIANCE_SECRET_TOK".into(), "t0k".into()),
                ("APPLIANCE_SECRET_PW".into(), "pa55".into()),
                ("APPLIANCE_SECRET_KEY".into(), "k3y".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn token_role_is_a_bearer_unless_authorization_is_set() {
        let roles = BTreeMap::from([("token".to_string(), "tok".to_string())]);
        let got = resolve(&HttpSettings::default(), &roles, &store()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, header::AUTHORIZATION);
        assert_eq!(got[0].1, "Bearer t0k");
        assert!(got[0].1.is_sensitive());

        let s = HttpSettings {
            basic_auth: Some(BasicAuth {
                user: "admin".into(),
                password_secret: "pw".into(),
            }),
            api_key: Some(ApiKey {
                header: HeaderName::from_static("x-api-key"),
                secret: "key".into(),
                prefix: "Key ".into(),
            }),
            headers: vec![(
                HeaderName::from_static("x-grafana-org"),
                Template::parse("org-${secret:tok}").unwrap(),
            )],
            ..HttpSettings::default()
        };
        let got = resolve(&s, &roles, &store()).unwrap();
        let find = |n: &str| got.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        assert_eq!(find("authorization").unwrap(), "Basic YWRtaW46cGE1NQ==");
        assert_eq!(find("x-api-key").unwrap(), "Key k3y");
        assert_eq!(find("x-grafana-org").unwrap(), "org-t0k");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn missing_secret_is_named() {
        let roles = BTreeMap::from([("token".to_string(), "absent".to_string())]);
        let e = resolve(&HttpSettings::default(), &roles, &store()).unwrap_err();
        assert_eq!(e, RenderError::Missing("absent".into()));
    }
}
