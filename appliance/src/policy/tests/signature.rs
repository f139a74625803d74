use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;

use super::super::*;
use super::{policy_text, TempDir};

/// Run the real `minisign` tool; fails (never skips) when it is missing.
fn minisign(args: &[&str], cwd: &Path) -> Output {
    Command::new("minisign")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("the `minisign` tool must be installed (apt-get install minisign)")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn our_signature_verifies_with_minisign_tool() {
    let dir = TempDir::new();
    let (key, pubf) = keygen(dir.path()).unwrap();
    assert_eq!(key, dir.path().join("policy.key"));
    assert_eq!(pubf, dir.path().join("policy.pub"));
    let file = write(dir.path(), "policy.toml", &policy_text(1));
    let sig = sign_file(&key, &file).unwrap();
    assert_eq!(sig, dir.path().join("policy.toml.minisig"));

    let out = minisign(&["-Vm", "policy.toml", "-p", "policy.pub"], dir.path());
    assert_ok(&out, "minisign -V on our signature");
    assert!(String::from_utf8_lossy(&out.stdout).contains("file:policy.toml"));

    // And a modified file fails there too.
    fs::write(&file, policy_text(2)).unwrap();
    let out = minisign(&["-Vm", "policy.toml", "-p", "policy.pub"], dir.path());
    assert!(!out.status.success(), "minisign accepted a modified file");
}

#[test]
fn minisign_tool_signs_with_our_unencrypted_key() {
    let dir = TempDir::new();
    let (key, pubf) = keygen(dir.path()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let file = write(dir.path(), "policy.toml", &policy_text(1));
    // No -W and no password on stdin: the key must read as unencrypted.
    let out = minisign(&["-S", "-s", "policy.key", "-m", "policy.toml"], dir.path());
    assert_ok(&out, "minisign -S with our key");
    let trusted = TrustedKey::from_str_or_file(pubf.to_str().unwrap()).unwrap();
    verify_file(&trusted, &file).unwrap();
}

#[test]
fn minisign_tool_signature_verifies_with_us() {
    let dir = TempDir::new();
    let out = minisign(&["-G", "-W", "-p", "mk.pub", "-s", "mk.key"], dir.path());
    assert_ok(&out, "minisign -G -W");
    let file = write(dir.path(), "policy.toml", &policy_text(5));
    let out = minisign(&["-S", "-s", "mk.key", "-m", "policy.toml"], dir.path());
    assert_ok(&out, "minisign -S");

    let pub_text = fs::read_to_string(dir.path().join("mk.pub")).unwrap();
    let from_file =
        TrustedKey::from_str_or_file(dir.path().join("mk.pub").to_str().unwrap()).unwrap();
    let from_line = TrustedKey::from_str_or_file(pub_text.lines().nth(1).unwrap()).unwrap();
    let from_text = TrustedKey::parse(&pub_text).unwrap();
    assert_eq!(from_file, from_line);
    assert_eq!(from_file, from_text);
    // Same id as minisign prints in the .pub comment.
    assert!(
        pub_text
            .lines()
            .next()
            .unwrap()
            .ends_with(&from_file.key_id_hex()),
        "{pub_text}"
    );

    verify_file(&from_file, &file).unwrap();
    let bytes = fs::read(&file).unwrap();
    let sig = fs::read_to_string(dir.path().join("policy.toml.minisig")).unwrap();
    let vp = verify_bundle(&bytes, &sig, &[from_line]).unwrap();
    assert_eq!(vp.version, 5);
    assert_eq!(vp.signer_key_id(), from_file.key_id_hex());
    assert!(vp.trusted_comment().contains("file:policy.toml"));

    // Our signer also reads keys made by `minisign -G -W`.
    let file2 = write(dir.path(), "other.toml", &policy_text(6));
    sign_file(&dir.path().join("mk.key"), &file2).unwrap();
    let out = minisign(&["-Vm", "other.toml", "-p", "mk.pub"], dir.path());
    assert_ok(
        &out,
        "minisign -V on our signature made with a minisign key",
    );
}

/// A bundle signed in-process: (toml, minisig, trusted key).
fn signed(text: &str) -> (TempDir, Vec<u8>, String, TrustedKey) {
    let dir = TempDir::new();
    let (key, pubf) = keygen(dir.path()).unwrap();
    let sig = sign_bytes(&key, text.as_bytes(), "policy.toml").unwrap();
    let trusted = TrustedKey::from_str_or_file(pubf.to_str().unwrap()).unwrap();
    (dir, text.as_bytes().to_vec(), sig, trusted)
}

#[test]
fn verified_policy_exposes_policy_and_audit_data() {
    let (_d, bytes, sig, key) = signed(&policy_text(3));
    let vp = verify_bundle(&bytes, &sig, std::slice::from_ref(&key)).unwrap();
    assert_eq!(vp.policy().version, 3);
    assert_eq!(vp.connections[0].name, "pg-prod");
    assert_eq!(vp.signer_key_id(), key.key_id_hex());
    assert_eq!(vp.bundle_sha256().len(), 64);
}

#[test]
fn tampered_bundle_is_a_mismatch() {
    let (_d, mut bytes, sig, key) = signed(&policy_text(3));
    bytes.extend_from_slice(b"# appended\n");
    let e = verify_bundle(&bytes, &sig, std::slice::from_ref(&key)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::SignatureMismatch { key_id } if *key_id == key.key_id_hex()),
        "{e}"
    );
    assert!(e.to_string().contains("does not match the bundle"), "{e}");

    // Editing the signed trusted comment breaks the global signature.
    let (_d, bytes, sig, key) = signed(&policy_text(3));
    let forged = sig.replace("timestamp:", "timestamp:1");
    let e = verify_bundle(&bytes, &forged, &[key]).unwrap_err();
    assert!(matches!(e, PolicyError::SignatureMismatch { .. }), "{e}");
}

#[test]
fn untrusted_signer_names_both_key_ids() {
    let (_d, bytes, sig, signer) = signed(&policy_text(3));
    let (_d2, _, _, k1) = signed("x");
    let (_d3, _, _, k2) = signed("y");
    let e = verify_bundle(&bytes, &sig, &[k1.clone(), k2.clone()]).unwrap_err();
    match &e {
        PolicyError::UntrustedSigner { key_id, trusted } => {
            assert_eq!(*key_id, signer.key_id_hex());
            assert_eq!(*trusted, vec![k1.key_id_hex(), k2.key_id_hex()]);
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&signer.key_id_hex()) && msg.contains(&k2.key_id_hex()),
        "{msg}"
    );
    let e = verify_bundle(&bytes, &sig, &[]).unwrap_err();
    assert!(e.to_string().contains("none configured"), "{e}");
}

#[test]
fn malformed_signatures() {
    let (_d, bytes, sig, key) = signed(&policy_text(3));
    let keys = [key];
    let mut lines: Vec<&str> = sig.lines().collect();
    for bad in ["", "garbage", "untrusted comment: x\nnot base64!!\n"] {
        let e = verify_bundle(&bytes, bad, &keys).unwrap_err();
        assert!(
            matches!(e, PolicyError::SignatureMalformed(_)),
            "{bad:?}: {e}"
        );
    }
    lines.truncate(2);
    let e = verify_bundle(&bytes, &lines.join("\n"), &keys).unwrap_err();
    assert!(matches!(e, PolicyError::SignatureMalformed(_)), "{e}");
}

#[test]
fn signature_is_checked_before_parsing() {
    // Garbage signed by an untrusted key: the signature error wins.
    let (_d, bytes, sig, _) = signed("this is [[not toml");
    let (_d2, _, _, other) = signed("x");
    let e = verify_bundle(&bytes, &sig, &[other]).unwrap_err();
    assert!(matches!(e, PolicyError::UntrustedSigner { .. }), "{e}");
    // Correctly signed but invalid: the parse error comes after.
    let (_d, bytes, sig, key) = signed("this is [[not toml");
    let e = verify_bundle(&bytes, &sig, &[key]).unwrap_err();
    assert!(matches!(e, PolicyError::Toml(_)), "{e}");
    let (_d, _, _, key) = signed("x");
    let (_d, bytes, sig, key2) = signed(&policy_text(1).replace("dba", ""));
    let e = verify_bundle(&bytes, &sig, &[key, key2]).unwrap_err();
    assert!(matches!(e, PolicyError::Invalid(_)), "{e}");
}

#[test]
fn trusted_key_parsing() {
    let (d, _, _, key) = signed("x");
    let pub_path = d.path().join(PUBLIC_KEY_FILE);
    let text = fs::read_to_string(&pub_path).unwrap();
    assert!(text.starts_with("untrusted comment: minisign public key "));
    assert_eq!(TrustedKey::parse(&text).unwrap(), key);
    assert_eq!(TrustedKey::parse(key.to_base64()).unwrap(), key);
    assert_eq!(
        format!("{key:?}"),
        format!("TrustedKey({})", key.key_id_hex())
    );
    for bad in ["", "RWQnotakey", "untrusted comment: only a comment\n"] {
        let e = TrustedKey::from_str_or_file(bad).unwrap_err();
        assert!(matches!(e, PolicyError::KeyMalformed(_)), "{bad:?}: {e}");
    }
    let e = TrustedKey::from_str_or_file("/nonexistent/policy.pub").unwrap_err();
    assert!(e.to_string().contains("existing .pub file"), "{e}");
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = TempDir::new();
    keygen(dir.path()).unwrap();
    let e = keygen(dir.path()).unwrap_err();
    assert!(matches!(e, PolicyError::AlreadyExists { .. }), "{e}");
    // A nested directory is created.
    keygen(&dir.path().join("a/b")).unwrap();
}

#[test]
fn password_protected_key_is_refused_clearly() {
    let dir = TempDir::new();
    let (key, _) = keygen(dir.path()).unwrap();
    let text = fs::read_to_string(&key).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(text.lines().nth(1).unwrap()).unwrap();
    bytes[2..4].copy_from_slice(b"Sc");
    let enc = dir.path().join("enc.key");
    fs::write(
        &enc,
        format!("untrusted comment: x\n{}\n", b64.encode(&bytes)),
    )
    .unwrap();
    let file = write(dir.path(), "f", "data");
    let e = sign_file(&enc, &file).unwrap_err();
    assert!(e.to_string().contains("password-protected"), "{e}");
    let e = sign_file(&dir.path().join("policy.pub"), &file).unwrap_err();
    assert!(matches!(e, PolicyError::SecretKey { .. }), "{e}");
}
