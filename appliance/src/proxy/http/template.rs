//! Header value templates: literal text with `${secret:NAME}` references,
//! e.g. `Bearer ${secret:grafana_token}`. Parsed when the policy is
//! validated; rendered when a session starts, with values from the secret
//! store. Errors name secrets, never their values.

use crate::secrets::SecretStore;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// The name of a secret in the appliance's store.
    Secret(String),
}

/// A parsed header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be rendered. Names only, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the appliance's secret store has no secret named {0:?}")]
    Missing(String),
    #[error("secret {0:?} cannot be sent in an HTTP header (control characters)")]
    NotHeaderSafe(String),
}

const OPEN: &str = "${";

impl Template {
    /// Parses `text`; every `${` must open a `${secret:NAME}` reference.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(OPEN) {
            if at > 0 {
                parts.push(Part::Literal(rest[..at].to_string()));
            }
            let after = &rest[at + OPEN.len()..];
            let end = after
                .find('}')
                .ok_or_else(|| "an unclosed \"${\" (write ${secret:NAME})".to_string())?;
            let inner = &after[..end];
            let name = inner.strip_prefix("secret:").ok_or_else(|| {
                format!("\"${{{inner}}}\" is not a secret reference (write ${{secret:NAME}})")
            })?;
            crate::policy::kinds::http::secret_name(name, "reference")?;
            parts.push(Part::Secret(name.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if http::HeaderValue::from_str(l).is_err() {
                    return Err(format!("{l:?} is not valid in a header value"));
                }
            }
        }
        if parts.is_empty() {
            return Err("the value is empty".into());
        }
        Ok(Template { parts })
    }

    /// The secret names referenced.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(s) => Some(s.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with secrets from `store` into a sensitive header value.
    pub fn render(&self, store: &SecretStore) -> Result<http::HeaderValue, RenderError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Secret(name) => {
                    let v = store
                        .get(name)
                        .ok_or_else(|| RenderError::Missing(name.clone()))?;
                    if v.expose().chars().any(|c| c.is_control() && c != '\t') {
                        return Err(RenderError::NotHeaderSafe(name.clone()));
                    }
                    out.push_str(v.expose());
                }
            }
        }
        let mut value = http::HeaderValue::from_bytes(out.as_bytes()).map_err(|_| {
            RenderError::NotHeaderSafe(self.secrets().collect::<Vec<_>>().join(","))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(pairs: &[(&str, &str)]) -> SecretStore {
        let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = pairs
            .iter()
            .map(|(k, v)| {
                (
                    format!("APPLIANCE_SECRET_{}", k.to_ascii_uppercase()).into(),
                    (*v).into(),
                )
            })
            .collect();
        SecretStore::load_from(None, env).unwrap()
    }

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("Bearer ${secret:grafana_token}").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), vec!["grafana_token"]);
        let v = t.render(&store(&[("grafana_token", "s3cr3t")])).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer s3cr3t");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cr3t"));
        let t = Template::parse("${secret:a}:${secret:b}").unwrap();
        assert_eq!(t.render(&store(&[("a", "x"), ("b", "y")])).unwrap(), "x:y");
        assert_eq!(Template::parse("plain").unwrap().secrets().count(), 0);
    }

    #[test]
    fn refuses_bad_templates() {
        for bad in [
            "${secret:}",
            "${env:HOME}",
            "Bearer ${secret:x",
            "${secret:a-b}",
            "",
            "a\nb",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn render_errors_name_the_secret_not_the_value() {
        let t = Template::parse("${secret:tok}").unwrap();
        let e = t.render(&store(&[])).unwrap_err();
        assert_eq!(e, RenderError::Missing("tok".into()));
        let e = t.render(&store(&[("tok", "bad\nvalue")])).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("bad"), "{e}");
    }
}
