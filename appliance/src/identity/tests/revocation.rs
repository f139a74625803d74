//! The revocation store: two connections to one SQLite file, as the CLI and
//! the server have.

use std::path::Path;

use super::TempDir;
use crate::identity::jws::now_unix;
use crate::identity::RevocationStore;

fn open_store(path: &Path) -> RevocationStore {
    RevocationStore::open(path).unwrap()
}

#[test]
fn revoke_undo_list_and_snapshot() {
    let dir = TempDir::new("revoke");
    let db = dir.path("appliance.db");
    // Another subsystem's table in the same file is left alone.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT); INSERT INTO audit (what) VALUES ('x');").unwrap();
    let store = open_store(&db);
    let fresh = rusqlite::Connection::open(&db).unwrap();
    let mode: String = fresh
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    assert!(store.snapshot().unwrap().is_empty());
    assert!(store
        .revoke("alice@example.com", "admin", Some("laptop lost"))
        .unwrap());
    assert!(
        !store.revoke("alice@example.com", "someone", None).unwrap(),
        "already revoked"
    );
    assert!(store.revoke("bob@example.com", "admin", None).unwrap());

    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    let a = list.iter().find(|r| r.user == "alice@example.com").unwrap();
    assert_eq!(a.revoked_by.as_deref(), Some("admin"));
    assert_eq!(a.reason.as_deref(), Some("laptop lost"));
    assert!(a.revoked_at.abs_diff(now_unix()) < 5);
    assert_eq!(store.get("bob@example.com").unwrap().unwrap().reason, None);

    let set = store.snapshot().unwrap();
    assert!(set.contains("alice@example.com"));
    assert!(
        set.contains("Alice@Example.com"),
        "case does not dodge a revocation"
    );
    assert!(!set.contains("carol@example.com"));
    assert_eq!(
        set.users().collect::<Vec<_>>(),
        ["alice@example.com", "bob@example.com"]
    );

    assert!(store.undo("alice@example.com").unwrap());
    assert!(!store.undo("alice@example.com").unwrap());
    assert!(
        set.contains("alice@example.com"),
        "a snapshot does not change"
    );
    assert!(!store.snapshot().unwrap().contains("alice@example.com"));
    let n: i64 = other
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn data_version_moves_on_another_connections_commit() {
    let dir = TempDir::new("version");
    let db = dir.path("appliance.db");
    let server = open_store(&db);
    let cli = open_store(&db);
    let v0 = server.data_version().unwrap();
    assert_eq!(
        server.data_version().unwrap(),
        v0,
        "stable while nothing happens"
    );
    server.revoke("self@example.com", "server", None).unwrap();
    assert_eq!(
        server.data_version().unwrap(),
        v0,
        "own commits do not count"
    );

    cli.revoke("alice@example.com", "cli", None).unwrap();
    let v1 = server.data_version().unwrap();
    assert_ne!(v1, v0);
    assert!(server.snapshot().unwrap().contains("alice@example.com"));
    cli.undo("alice@example.com").unwrap();
    assert_ne!(server.data_version().unwrap(), v1);
    assert!(!server.snapshot().unwrap().contains("alice@example.com"));
}
