//! Masking in a live session: turns RowDescriptions and COPY announcements
//! into plans ([`super::mask`]), looking columns up in the catalog on a side
//! connection of the gateway's own (same login and database as the session,
//! opened at the first lookup) and caching each relation for the session.
//! Any lookup that fails fails closed: the caller ends the session.
//!
//! Other sessions' DDL is not seen by this session's relay, so the cache
//! cannot trust itself for long: a relation is looked up again when a result
//! names a column its cached entry lacks (a column added elsewhere), and every
//! entry expires after [`CATALOG_TTL`] (a column renamed or a view replaced
//! elsewhere is picked up within that time). This session's own DDL clears
//! the cache at once ([`Masker::forget`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::codec::backend::RowDescription;
use super::codec::ProtocolVersion;
use super::mask::catalog::{
    parse_view_targets, Relation, COLUMNS_SQL, RELATION_OID_SQL, VIEW_DEPENDENCIES_SQL,
    VIEW_RULE_SQL,
};
use super::mask::copy::{CopyFormat, CopyMask, CopyOutSpec};
use super::mask::{ColumnName, Detectors, MaskPlan, MaskRules};
use super::sideconn::{ident, literal, SideConn};
use super::upstream::Login;
use crate::policy::PostgresSettings;
use crate::secrets::Secret;

/// Views over views are followed this deep; deeper ones are judged by what
/// they read (conservative).
const MAX_VIEW_DEPTH: u8 = 16;

/// How long a cached relation is trusted before it is looked up again.
pub const CATALOG_TTL: Duration = Duration::from_secs(10);

/// Columns a COPY row may have when nothing says how many (PostgreSQL's
/// limit per table).
const MAX_COLUMNS: usize = 1600;

/// The key of the `hash` mask: random, made once per appliance and kept in
/// its data directory, so pseudonyms stay stable across sessions and
/// restarts and cannot be brute-forced from outside.
#[derive(Clone)]
pub struct MaskHashKey([u8; 32]);

impl std::fmt::Debug for MaskHashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskHashKey(***)")
    }
}

impl MaskHashKey {
    /// Reads `keys/mask-hash.key` under `data_dir`, creating it (0600) if absent.
    pub fn load_or_generate(data_dir: &Path) -> Result<MaskHashKey, String> {
        use ring::rand::SecureRandom;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = data_dir.join("keys");
        let path = dir.join("mask-hash.key");
        let shown = path.display();
        let read = |p: &Path| -> Result<MaskHashKey, String> {
            let bytes = std::fs::read(p).map_err(|e| format!("{shown}: {e}"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("{shown}: not a 32-byte key"))?;
            Ok(MaskHashKey(key))
        };
        if path.exists() {
            return read(&path);
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "the OS random generator failed".to_string())?;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut f) => {
                f.write_all(&key)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| format!("{shown}: {e}"))?;
                Ok(MaskHashKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
            Err(e) => Err(format!("{shown}: {e}")),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where the side connection logs in: the session's own login.
pub struct CatalogLogin<'a> {
    pub connection: &'a str,
    pub upstream: &'a str,
    pub settings: &'a PostgresSettings,
    pub user: &'a str,
    pub password: Option<&'a Secret>,
    pub database: &'a str,
    pub timeout: Duration,
}

/// The masking state of one session (lives in the upstream-to-client direction).
pub struct Masker<'a> {
    pub rules: &'a MaskRules,
    pub detectors: Detectors,
    login: CatalogLogin<'a>,
    side: Option<SideConn>,
    /// Table OID -> what one catalog lookup said about it.
    relations: HashMap<u32, Cached>,
}

/// One relation as looked up.
struct Cached {
    /// (attnum, the name that decides masking).
    entries: Vec<(i16, ColumnName)>,
    /// (attnum, the relation's own column name): COPY lists columns by them.
    own: Vec<(i16, String)>,
    /// When it was looked up ([`CATALOG_TTL`]).
    fetched: Instant,
}

type Lookup<'f> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'f>>;

impl<'a> Masker<'a> {
    pub fn new(rules: &'a MaskRules, detectors: Detectors, login: CatalogLogin<'a>) -> Self {
        Masker {
            rules,
            detectors,
            login,
            side: None,
            relations: HashMap::new(),
        }
    }

    /// The plan for one RowDescription body.
    pub async fn plan(&mut self, row_description: &[u8]) -> Result<MaskPlan, String> {
        if !self.rules.is_empty() {
            let desc = RowDescription::parse(row_description).map_err(|e| e.to_string())?;
            let mut oids: Vec<u32> = desc
                .fields()
                .map(|f| f.table_oid)
                .filter(|o| *o != 0)
                .collect();
            oids.sort_unstable();
            oids.dedup();
            let started = Instant::now();
            self.relations
                .retain(|_, c| started.duration_since(c.fetched) <= CATALOG_TTL);
            for oid in &oids {
                self.resolve(*oid, 0).await?;
            }
            // A column an entry from before this plan lacks was added since
            // (by another session): look the relation up again.
            let mut stale: Vec<u32> = desc
                .fields()
                .filter(|f| f.table_oid != 0 && f.column_id > 0)
                .filter(|f| column(&self.relations, f.table_oid, f.column_id).is_none())
                .map(|f| f.table_oid)
                .filter(|oid| self.relations.get(oid).is_some_and(|c| c.fetched < started))
                .collect();
            stale.sort_unstable();
            stale.dedup();
            for oid in stale {
                self.relations.remove(&oid);
                self.resolve(oid, 0).await?;
            }
        }
        let relations = &self.relations;
        MaskPlan::new(row_description, self.rules, &|oid, att| {
            column(relations, oid, att)
        })
        .map_err(|e| e.to_string())
    }

    /// The mask for a COPY TO STDOUT: `spec` from the statement (when it was
    /// recognized), `copy_response` the CopyOutResponse body.
    pub async fn copy_mask(
        &mut self,
        spec: Option<&CopyOutSpec>,
        copy_response: &[u8],
    ) -> Result<CopyMask, String> {
        if copy_response.first() == Some(&1) {
            return Err("binary COPY output cannot be masked".into());
        }
        let detectors_only = |format: CopyFormat| CopyMask {
            format,
            masked: vec![false; MAX_COLUMNS],
        };
        let text = CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        };
        let unreadable = "a COPY TO STDOUT whose columns the gateway cannot tell (COPY (query), \
                          or COPY among several statements in one query) cannot be masked on this \
                          connection; copy a table, or run the statement alone";
        let Some(spec) = spec else {
            return if self.rules.is_empty() {
                Ok(detectors_only(text))
            } else {
                Err(unreadable.into())
            };
        };
        if spec.format == CopyFormat::Binary {
            return Err("binary COPY output cannot be masked".into());
        }
        let Some(relation) = &spec.relation else {
            return if self.rules.is_empty() {
                Ok(detectors_only(spec.format.clone()))
            } else {
                Err(unreadable.into())
            };
        };
        if self.rules.is_empty() {
            return Ok(detectors_only(spec.format.clone()));
        }
        let name: Vec<String> = relation.iter().map(|p| ident(p)).collect();
        let sql = RELATION_OID_SQL.replace("$1", &literal(&name.join(".")));
        let rows = self.query(&sql).await?;
        let oid: u32 = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("relation {} not found", name.join(".")))?;
        // COPY lists every column without a description to check against:
        // always plan it from a fresh lookup (one query per COPY).
        self.relations.remove(&oid);
        self.resolve(oid, 0).await?;
        let Some(cached) = self.relations.get(&oid) else {
            return Err(format!("relation {} not found", name.join(".")));
        };
        let masked = if spec.columns.is_empty() {
            cached
                .entries
                .iter()
                .map(|(_, c)| self.rules.matches(c))
                .collect()
        } else {
            let own = &cached.own;
            spec.columns
                .iter()
                .map(|listed| {
                    let attnum = own.iter().find(|(_, n)| n == listed).map(|(a, _)| *a);
                    match attnum.and_then(|a| column(&self.relations, oid, a)) {
                        Some(c) => self.rules.matches(&c),
                        // Unknown column: fail closed.
                        None => true,
                    }
                })
                .collect()
        };
        Ok(CopyMask {
            format: spec.format.clone(),
            masked,
        })
    }

    /// Forgets every cached relation (after DDL in this session).
    pub fn forget(&mut self) {
        self.relations.clear();
    }

    /// Looks relation `oid` up (views: also what they reference) into the cache.
    fn resolve(&mut self, oid: u32, depth: u8) -> Lookup<'_> {
        Box::pin(async move {
            if self.relations.contains_key(&oid) {
                return Ok(());
            }
            let oid_text = oid.to_string();
            let rows = self.query(&COLUMNS_SQL.replace("$1", &oid_text)).await?;
            let fetched = Instant::now();
            let rel = relation_from(&rows)?;
            let own: Vec<(i16, String)> = rel
                .columns
                .iter()
                .map(|(a, c)| (*a, c.column.clone()))
                .collect();
            let entries = if rel.is_view() {
                self.view_entries(oid, &rel, depth).await?
            } else {
                rel.table_entries()
            };
            self.relations.insert(
                oid,
                Cached {
                    entries,
                    own,
                    fetched,
                },
            );
            Ok(())
        })
    }

    /// A view's resolver entries: what each of its columns reads, resolving
    /// the relations it references first.
    async fn view_entries(
        &mut self,
        oid: u32,
        rel: &Relation,
        depth: u8,
    ) -> Result<Vec<(i16, ColumnName)>, String> {
        let oid_text = oid.to_string();
        let ev_action = if depth < MAX_VIEW_DEPTH {
            let rows = self.query(&VIEW_RULE_SQL.replace("$1", &oid_text)).await?;
            rows.into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
        } else {
            None
        };
        for t in ev_action
            .as_deref()
            .and_then(parse_view_targets)
            .unwrap_or_default()
        {
            if t.origin_table != 0 && t.origin_table != oid {
                self.resolve(t.origin_table, depth + 1).await?;
            }
        }
        let deps: Vec<ColumnName> = self
            .query(&VIEW_DEPENDENCIES_SQL.replace("$1", &oid_text))
            .await?
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [Some(s), Some(t), Some(c)] => Some(ColumnName::new(s, t, c)),
                _ => None,
            })
            .collect();
        let relations = &self.relations;
        Ok(
            rel.view_entries(ev_action.as_deref(), &deps, self.rules, &|o, a| {
                column(relations, o, a)
            }),
        )
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<super::sideconn::Row>, String> {
        let l = &self.login;
        if self.side.is_none() {
            let params = vec![
                ("database".to_string(), l.database.to_string()),
                ("application_name".to_string(), "hoop-masking".to_string()),
            ];
            let login = Login {
                connection: l.connection,
                upstream: l.upstream,
                settings: l.settings,
                user: l.user,
                password: l.password,
                version: ProtocolVersion::V3_0,
                params: &params,
            };
            let conn = SideConn::open(&login, l.timeout)
                .await
                .map_err(|e| format!("catalog connection for masking: {e}"))?;
            self.side = Some(conn);
        }
        let Some(side) = self.side.as_mut() else {
            return Err("catalog connection for masking is not open".into());
        };
        match side.query(sql).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // A broken connection is reopened at the next lookup.
                self.side = None;
                Err(format!("catalog lookup for masking failed: {e}"))
            }
        }
    }

    /// Closes the side connection.
    pub async fn close(self) {
        if let Some(side) = self.side {
            side.close().await;
        }
    }
}

fn column(relations: &HashMap<u32, Cached>, oid: u32, att: i16) -> Option<ColumnName> {
    relations
        .get(&oid)?
        .entries
        .iter()
        .find(|(a, _)| *a == att)
        .map(|(_, c)| c.clone())
}

fn relation_from(rows: &[super::sideconn::Row]) -> Result<Relation, String> {
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        match r.as_slice() {
            [Some(a), Some(b), Some(c), Some(d), Some(e)] => {
                items.push([a.as_str(), b.as_str(), c.as_str(), d.as_str(), e.as_str()])
            }
            _ => return Err("unexpected catalog row shape".into()),
        }
    }
    Relation::from_rows(items)
}
