use std::fs;
use std::path::Path;

use super::super::*;
use super::{policy_text, TempDir};

struct Setup {
    keys: TempDir,
    drop: TempDir,
    key_file: std::path::PathBuf,
    loader: PolicyLoader,
}

fn setup() -> Setup {
    let keys = TempDir::new();
    let drop = TempDir::new();
    let (key_file, pub_file) = keygen(keys.path()).unwrap();
    let trusted = TrustedKey::from_str_or_file(pub_file.to_str().unwrap()).unwrap();
    let loader = PolicyLoader::new(drop.path().to_path_buf(), vec![trusted]);
    Setup {
        keys,
        drop,
        key_file,
        loader,
    }
}

impl Setup {
    /// Write a signed bundle with `version` into the drop directory.
    fn publish(&self, version: u64) {
        publish_text(&self.key_file, self.drop.path(), &policy_text(version));
    }
}

fn publish_text(key_file: &Path, dir: &Path, text: &str) {
    let toml = dir.join(POLICY_FILE);
    fs::write(&toml, text).unwrap();
    sign_file(key_file, &toml).unwrap();
}

fn refused(o: Option<LoadOutcome>) -> (String, Option<u64>) {
    match o {
        Some(LoadOutcome::Refused { reason, version }) => (reason, version),
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn loaded(o: Option<LoadOutcome>) -> VerifiedPolicy {
    match o {
        Some(LoadOutcome::Loaded(vp)) => vp,
        other => panic!("expected Loaded, got {other:?}"),
    }
}

#[test]
fn nothing_yet_is_not_an_error() {
    let mut s = setup();
    assert!(s.loader.load_initial(None).is_none());
    assert!(s.loader.poll(None).is_none());
    assert!(s.loader.poll(None).is_none());
    let _ = &s.keys;
}

#[test]
fn loads_then_stays_quiet_until_files_change() {
    let mut s = setup();
    s.publish(1);
    let vp = loaded(s.loader.load_initial(None));
    assert_eq!(vp.version, 1);
    assert!(s.loader.poll(Some(1)).is_none());
    assert!(s.loader.poll(Some(1)).is_none());

    s.publish(2);
    assert_eq!(loaded(s.loader.poll(Some(1))).version, 2);
    assert!(s.loader.poll(Some(2)).is_none());
}

#[test]
fn refuses_versions_not_newer_once() {
    let mut s = setup();
    s.publish(3);
    let (reason, version) = refused(s.loader.poll(Some(4)));
    assert_eq!(reason, "version 3 is not newer than version 4 in force");
    assert_eq!(version, Some(3));
    // Reported once, not every second.
    assert!(s.loader.poll(Some(4)).is_none());

    s.publish(4);
    let (reason, _) = refused(s.loader.poll(Some(4)));
    assert!(reason.contains("not newer"), "{reason}");
    s.publish(5);
    assert_eq!(loaded(s.loader.poll(Some(4))).version, 5);
}

#[test]
fn initial_load_refuses_only_rollback_below_floor() {
    let mut s = setup();
    s.publish(4);
    assert_eq!(loaded(s.loader.load_initial(Some(4))).version, 4);

    let mut s = setup();
    s.publish(3);
    let (reason, version) = refused(s.loader.load_initial(Some(4)));
    assert!(
        reason.contains("version 3") && reason.contains("4"),
        "{reason}"
    );
    assert_eq!(version, Some(3));
    assert!(
        s.loader.poll(Some(4)).is_none(),
        "same files: reported once"
    );
}

#[test]
fn one_file_missing_is_refused() {
    let mut s = setup();
    fs::write(s.drop.path().join(POLICY_FILE), policy_text(9)).unwrap();
    let (reason, version) = refused(s.loader.poll(None));
    assert!(
        reason.contains(POLICY_SIGNATURE_FILE) && reason.contains("missing"),
        "{reason}"
    );
    assert_eq!(version, Some(9));
    assert!(s.loader.poll(None).is_none());

    let mut s = setup();
    s.publish(1);
    fs::remove_file(s.drop.path().join(POLICY_FILE)).unwrap();
    let (reason, version) = refused(s.loader.poll(None));
    assert!(reason.contains("policy.toml is missing"), "{reason}");
    assert_eq!(version, None);
}

#[test]
fn tampered_and_untrusted_bundles_are_refused_with_reason() {
    let mut s = setup();
    s.publish(2);
    let toml = s.drop.path().join(POLICY_FILE);
    let text = fs::read_to_string(&toml)
        .unwrap()
        .replace("dba", "everyone");
    fs::write(&toml, text).unwrap();
    let (reason, version) = refused(s.loader.poll(Some(1)));
    assert!(reason.contains("does not match"), "{reason}");
    assert_eq!(version, Some(2), "version still reported for the audit");

    // Signed by another key.
    let other = TempDir::new();
    let (other_key, _) = keygen(other.path()).unwrap();
    publish_text(&other_key, s.drop.path(), &policy_text(3));
    let (reason, _) = refused(s.loader.poll(Some(1)));
    assert!(reason.contains("not among the trusted keys"), "{reason}");

    // Then a good one is loaded.
    s.publish(3);
    assert_eq!(loaded(s.loader.poll(Some(1))).version, 3);
}

#[test]
fn invalid_policy_is_refused_with_its_error() {
    let mut s = setup();
    let text = policy_text(2).replace("db.internal:5432", "db.internal");
    publish_text(&s.key_file, s.drop.path(), &text);
    let (reason, version) = refused(s.loader.poll(None));
    assert!(
        reason.contains("upstream") && reason.contains("line 11"),
        "{reason}"
    );
    assert_eq!(version, Some(2));
}

#[test]
fn loaded_policy_carries_audit_data() {
    let mut s = setup();
    s.publish(1);
    let vp = loaded(s.loader.poll(None));
    let bytes = fs::read(s.drop.path().join(POLICY_FILE)).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(vp.bundle_sha256(), hex);
    assert!((1..=16).contains(&vp.signer_key_id().len()));
    assert!(vp.trusted_comment().contains("file:policy.toml"));
}
