//! Tampering, deleting and truncating detected by `audit verify`; signed
//! exports checked by `minisign -Vm` and `audit verify-export`.

use std::path::Path;
use std::time::Duration;

use appliance::audit;

use super::process::Proc;
use super::{tip, write_records};

fn verify_out(app: &Proc, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = app.cli(&args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sqlite(db: &Path, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_deleting_and_truncating_are_detected_and_exports_verify() {
    let mut app = Proc::new("", &[]);
    app.start().await;
    write_records(&app.db(), "a", 30).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.stop().await;
    let (ok, out) = verify_out(&app, &[]);
    assert!(ok, "{out}");

    // Signed export, checked by minisign and by verify-export, in both formats.
    let pk = String::from_utf8_lossy(&app.cli(&["audit", "pubkey"]).stdout)
        .trim()
        .to_string();
    for fmt in ["ndjson", "csv"] {
        let file = app.dir.path().join(format!("export.{fmt}"));
        let f = file.display().to_string();
        let out = app.cli(&[
            "audit", "export", "--since", "1h", "--format", fmt, "--out", &f,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&pk),
            "export prints the public key"
        );
        let m = e2e::run(
            std::process::Command::new("minisign").args(["-Vm", &f, "-P", &pk]),
            false,
        );
        assert!(
            m.status.success(),
            "minisign: {}",
            String::from_utf8_lossy(&m.stderr)
        );
        let v = e2e::run(
            std::process::Command::new(e2e::bin("appliance")).args([
                "audit",
                "verify-export",
                &f,
                "--pubkey",
                &pk,
            ]),
            false,
        );
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let mut bytes = std::fs::read(&file).expect("read");
        let i = bytes.len() / 3;
        bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
        let bad = app.dir.path().join(format!("bad.{fmt}"));
        std::fs::write(&bad, &bytes).expect("write");
        std::fs::copy(audit::signature_path(&file), audit::signature_path(&bad)).expect("sig");
        let b = bad.display().to_string();
        let m = e2e::run(
            std::process::Command::new("minisign").args(["-Vm", &b, "-P", &pk]),
            false,
        );
        assert!(!m.status.success(), "minisign accepted a changed byte");
        let v = e2e::run(
            std::process::Command::new(e2e::bin("appliance")).args([
                "audit",
                "verify-export",
                &b,
                "--pubkey",
                &pk,
            ]),
            false,
        );
        assert!(!v.status.success(), "verify-export accepted a changed byte");
    }

    let db = app.db();
    let backup = app.dir.path().join("backup.db");
    std::fs::copy(&db, &backup).expect("backup");
    sqlite(
        &db,
        "UPDATE audit SET user = 'mallory@example.com' WHERE seq = 12",
    );
    let (ok, out) = verify_out(&app, &[]);
    assert!(
        !ok && out.contains("record seq 12") && out.contains("modified"),
        "{out}"
    );

    std::fs::copy(&backup, &db).expect("restore");
    sqlite(&db, "DELETE FROM audit WHERE seq = 17");
    let (ok, out) = verify_out(&app, &[]);
    assert!(!ok && out.contains("record seq 17 was deleted"), "{out}");

    std::fs::copy(&backup, &db).expect("restore");
    let last = tip(&db);
    sqlite(
        &db,
        &format!(
            "DELETE FROM audit WHERE seq > {}; DELETE FROM audit_cursor;",
            last - 5
        ),
    );
    let export = app.dir.path().join("export.ndjson").display().to_string();
    let (ok, out) = verify_out(&app, &["--checkpoint", &export]);
    assert!(!ok && out.contains("truncated tail"), "{out}");
    assert!(
        out.contains(&format!("records seq {}..", last - 4)),
        "{out}"
    );
}
