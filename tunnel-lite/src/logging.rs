//! Log filtering for both binaries: `target=level` directives from an
//! environment variable (`info`, `warn,appliance::proxy=debug`).
//!
//! A plain per-target filter instead of tracing-subscriber's `EnvFilter`:
//! `EnvFilter` brings a regex engine and Unicode tables for span-field
//! matching nobody here uses (about 0.3 MB of each static binary).

use tracing_subscriber::filter::Targets;

/// Installs the process's logger: plain text on stderr, filtered by `var`
/// ([`filter_from_env`]); `with_target` adds each event's module path.
pub fn init(var: &str, default: &str, with_target: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(with_target)
        .finish()
        .with(filter_from_env(var, default))
        .init();
}

/// The filter named by `var`, or `default` (a level such as `"info"`) when the
/// variable is unset. A malformed value is reported on stderr and the
/// default applies: a typo must not silence the logs.
pub fn filter_from_env(var: &str, default: &str) -> Targets {
    match std::env::var(var) {
        // Set but empty: as if unset (an empty filter would log nothing).
        Ok(spec) if spec.trim().is_empty() => parse(default).unwrap_or_default(),
        Ok(spec) => match parse(&spec) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ignoring {var}={spec:?}: {e}; logging at {default}");
                parse(default).unwrap_or_default()
            }
        },
        Err(_) => parse(default).unwrap_or_default(),
    }
}

/// Parses comma-separated `level` or `target=level` directives.
pub fn parse(spec: &str) -> Result<Targets, String> {
    spec.trim()
        .parse::<Targets>()
        .map_err(|e| format!("not a log filter ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn levels_and_per_target_directives() {
        let t = parse("warn,appliance::proxy=debug").unwrap();
        assert!(t.would_enable("appliance::proxy::postgres", &Level::DEBUG));
        assert!(!t.would_enable("appliance::gate", &Level::INFO));
        assert!(t.would_enable("appliance::gate", &Level::WARN));
        let t = parse("info").unwrap();
        assert!(t.would_enable("anything", &Level::INFO));
        assert!(!t.would_enable("anything", &Level::DEBUG));
    }

    #[test]
    fn malformed_spec_is_an_error() {
        assert!(parse("appliance=loud").is_err());
    }
}
