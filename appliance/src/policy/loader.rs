//! Picks up bundles dropped into the policy directory (no restart). Reads the
//! two bundle files and nothing else; logging, auditing and persisting the
//! version floor are the caller's job.

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::signature::{read_capped, verify_bundle, TrustedKey, VerifiedPolicy};
use super::PolicyError;

/// The bundle's TOML file in the policy directory.
pub const POLICY_FILE: &str = "policy.toml";
/// Its detached signature.
pub const POLICY_SIGNATURE_FILE: &str = "policy.toml.minisig";

/// What a poll found: a new verified policy, or a bundle refused with a reason.
// Produced at most once per bundle change, so the size of `Loaded` is no
// concern; the unboxed variant keeps matching simple.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LoadOutcome {
    Loaded(VerifiedPolicy),
    /// The bundle is not used; the policy in force stays. `version` is the
    /// bundle's version when its TOML was readable (unverified: for the report only).
    Refused {
        reason: String,
        version: Option<u64>,
    },
}

/// Which versions are acceptable.
#[derive(Clone, Copy)]
enum Rule {
    /// Strictly newer than the version in force (file drop while running).
    NewerThan(u64),
    /// At least the highest version ever accepted (startup; no rollback).
    AtLeast(u64),
}

/// Watches `dir/policy.toml` + `dir/policy.toml.minisig`.
#[derive(Debug)]
pub struct PolicyLoader {
    dir: PathBuf,
    trusted: Vec<TrustedKey>,
    /// Fingerprint of the files as last seen, whatever the outcome was.
    last_seen: Option<[u8; 32]>,
}

impl PolicyLoader {
    pub fn new(dir: PathBuf, trusted: Vec<TrustedKey>) -> PolicyLoader {
        PolicyLoader {
            dir,
            trusted,
            last_seen: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Called every second. `None` when the files are unchanged since the
    /// last poll (so a refusal is reported once) or when there is no bundle.
    /// Refuses a version not newer than `in_force`.
    pub fn poll(&mut self, in_force: Option<u64>) -> Option<LoadOutcome> {
        self.check(in_force.map(Rule::NewerThan))
    }

    /// At startup: refuses only a version below `floor`, the highest version
    /// ever accepted (persisted by the server), so a restart cannot roll back.
    pub fn load_initial(&mut self, floor: Option<u64>) -> Option<LoadOutcome> {
        self.check(floor.map(Rule::AtLeast))
    }

    fn check(&mut self, rule: Option<Rule>) -> Option<LoadOutcome> {
        let toml_path = self.dir.join(POLICY_FILE);
        let sig_path = self.dir.join(POLICY_SIGNATURE_FILE);
        let toml = read_optional(&toml_path);
        let sig = read_optional(&sig_path);

        let fp = fingerprint(&toml, &sig);
        if self.last_seen == Some(fp) {
            return None;
        }
        self.last_seen = Some(fp);

        let refused = |reason: String, toml: Option<&[u8]>| {
            Some(LoadOutcome::Refused {
                reason,
                version: toml.and_then(peek_version),
            })
        };
        match (toml, sig) {
            (Ok(None), Ok(None)) => None,
            (Err(e), _) | (_, Err(e)) => refused(e.to_string(), None),
            (Ok(Some(t)), Ok(None)) => refused(
                format!(
                    "{} is missing ({} is present)",
                    sig_path.display(),
                    POLICY_FILE
                ),
                Some(&t),
            ),
            (Ok(None), Ok(Some(_))) => refused(
                format!(
                    "{} is missing ({} is present)",
                    toml_path.display(),
                    POLICY_SIGNATURE_FILE
                ),
                None,
            ),
            (Ok(Some(t)), Ok(Some(s))) => {
                let Ok(s) = String::from_utf8(s) else {
                    return refused(
                        PolicyError::SignatureMalformed("not UTF-8 text".to_string()).to_string(),
                        Some(&t),
                    );
                };
                match verify_bundle(&t, &s, &self.trusted) {
                    Err(e) => refused(e.to_string(), Some(&t)),
                    Ok(vp) => {
                        let version = vp.version;
                        let too_old = match rule {
                            Some(Rule::NewerThan(in_force)) if version <= in_force => {
                                Some(PolicyError::NotNewer { version, in_force })
                            }
                            Some(Rule::AtLeast(floor)) if version < floor => {
                                Some(PolicyError::Rollback { version, floor })
                            }
                            _ => None,
                        };
                        match too_old {
                            Some(e) => Some(LoadOutcome::Refused {
                                reason: e.to_string(),
                                version: Some(version),
                            }),
                            None => Some(LoadOutcome::Loaded(vp)),
                        }
                    }
                }
            }
        }
    }
}

/// `Ok(None)` when the file does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PolicyError> {
    match read_capped(path) {
        Ok(b) => Ok(Some(b)),
        Err(PolicyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn fingerprint(
    toml: &Result<Option<Vec<u8>>, PolicyError>,
    sig: &Result<Option<Vec<u8>>, PolicyError>,
) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [toml, sig] {
        match part {
            Ok(None) => ctx.update(b"missing"),
            Ok(Some(bytes)) => {
                ctx.update(b"present");
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(bytes);
            }
            // The same failure seen again is not news either.
            Err(e) => {
                let msg = e.to_string();
                ctx.update(b"error");
                ctx.update(&(msg.len() as u64).to_le_bytes());
                ctx.update(msg.as_bytes());
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The `version` of an unverified bundle, for the refusal report only.
fn peek_version(toml: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Peek {
        version: Option<u64>,
    }
    let text = std::str::from_utf8(toml).ok()?;
    toml::from_str::<Peek>(text).ok()?.version
}
