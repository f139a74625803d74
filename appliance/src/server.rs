//! Wires the appliance together: state on disk, TLS identity, session key,
//! audit writer, policy loader and revocation poller, and the gate. Both the
//! binary (`appliance serve`) and the tests start it through [`start`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditConfig, AuditHandle, AuditKind, AuditRecord, AuditWriter};
use crate::config::RuntimeConfig;
use crate::identity::{IdpSettings, IdpVerifier, RevocationStore, RevokedSet, SessionSigner};
use crate::policy::{self, LoadOutcome, PolicyLoader, TrustedKey, VerifiedPolicy};
use crate::secrets::SecretStore;
use crate::sessions::SessionRegistry;
use crate::tls::TlsIdentity;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("trusted policy key {0:?}: {1}")]
    TrustedKey(String, crate::policy::PolicyError),
    #[error("policy state in {0}: {1}")]
    State(String, String),
}

/// The policy currently in force, if any.
pub type PolicyRx = watch::Receiver<Option<Arc<VerifiedPolicy>>>;

/// What every connection task shares.
pub struct Shared {
    pub cfg: RuntimeConfig,
    pub policy: PolicyRx,
    pub revoked: watch::Receiver<RevokedSet>,
    pub signer: Arc<SessionSigner>,
    pub sessions: SessionRegistry,
    pub audit: AuditHandle,
    pub secrets: SecretStore,
    pub fingerprint: String,
    /// Cancel keys handed to PostgreSQL clients.
    pub pg_cancel: crate::proxy::postgres::cancel::CancelRegistry,
    /// Requests held for a human approval (statements, HTTP requests, commands).
    pub approvals: crate::approvals::Approvals,
    /// Counters and gauges for `/metrics` (gateways bump sessions and bytes).
    pub metrics: Arc<crate::admin::Metrics>,
    /// Live tunnel sessions by session id (event routes' `close_session`).
    pub live: crate::events::LiveSessions,
    /// Keys the `hash` mask of PostgreSQL masking.
    pub mask_hash_key: crate::proxy::postgres::masker::MaskHashKey,
    /// Signs the identity assertions the HTTP gateway sends upstream.
    pub assertion_key: Arc<crate::proxy::http::assertion::AssertionKey>,
    /// IdP verifier built for the policy version it came from.
    idp: Mutex<Option<(u64, Arc<IdpVerifier>)>>,
}

impl Shared {
    /// The IdP verifier for the policy in force (rebuilt when the version changes).
    pub fn idp_verifier(&self) -> Option<Result<Arc<IdpVerifier>, crate::identity::IdentityError>> {
        let policy = self.policy.borrow().clone()?;
        let p = policy.policy();
        let mut cache = self.idp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, verifier)) = cache.as_ref() {
            if *v == p.version {
                return Some(Ok(verifier.clone()));
            }
        }
        let id = &p.identity;
        let jwks = match &id.jwks {
            policy::JwksSource::Inline(s) => crate::identity::JwksSource::Inline(s.clone()),
            policy::JwksSource::Url(u) => crate::identity::JwksSource::Url(u.clone()),
        };
        let mut settings = IdpSettings::new(id.issuer.clone(), id.audience.clone(), jwks);
        settings.user_claim = id.user_claim.clone();
        settings.groups_claim = id.groups_claim.clone();
        let built = IdpVerifier::new(settings).map(Arc::new);
        if let Ok(v) = &built {
            *cache = Some((p.version, v.clone()));
        }
        Some(built)
    }
}

/// A running appliance.
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    writer: AuditWriter,
}

impl Running {
    /// Stops accepting, closes live sessions, flushes the audit trail.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let closed = self.shared.sessions.close_all("appliance shutting down");
        // Give sessions a moment to write their end records.
        let wait = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.shared.sessions.is_empty() && tokio::time::Instant::now() < wait {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        let _ = self
            .shared
            .audit
            .record(
                AuditRecord::new(AuditKind::ApplianceStopped)
                    .reason(format!("{closed} live sessions closed")),
            )
            .await;
        let _ = self.shared.audit.flush().await;
        // Close explicitly: clones of the handle may still live in tasks that
        // have not noticed the shutdown yet; the writer still drains all it accepted.
        let handle = self.shared.audit.clone();
        drop(self.shared);
        if let Err(e) = self.writer.shutdown(handle).await {
            tracing::error!(error = %e, "audit writer did not shut down cleanly");
        }
    }

    /// Waits until the process is asked to stop (Ctrl-C or SIGTERM), then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("stopping");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn create_dir_private(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| ServerError::Io(path.display().to_string(), e))
}

/// Starts the appliance: everything that can fail on bad configuration fails
/// here, before the listener accepts anything.
pub async fn start(cfg: RuntimeConfig) -> Result<Running, ServerError> {
    create_dir_private(&cfg.data_dir)?;
    create_dir_private(&cfg.policy_dir)?;
    let secrets = SecretStore::load(cfg.effective_secrets_file().as_deref())?;
    let tls = TlsIdentity::load_or_generate(&cfg)?;
    if tls.generated {
        tracing::info!(fingerprint = %tls.fingerprint, "generated a self-signed TLS certificate");
    }
    let tls_config = tls.server_config()?;
    if let Some(dir) = cfg.session_key_path().parent() {
        create_dir_private(dir)?;
    }
    let signer = Arc::new(SessionSigner::load_or_generate(&cfg.session_key_path())?);
    let db = cfg.db_path();
    // Signs audit checkpoints and exports (DATA_DIR/keys/audit.key).
    let audit_key = Arc::new(audit::AuditKey::load_or_generate(&audit::key_dir(
        &cfg.data_dir,
    ))?);
    let (audit, writer) = audit::spawn_writer(AuditConfig {
        db_path: db.clone(),
        queue_capacity: cfg.audit_queue,
        max_batch: 512,
        checkpoint_key: Some(audit_key),
    })?;
    let revocations = RevocationStore::open(&db)?;
    let (revoked_tx, revoked_rx) = watch::channel(revocations.snapshot()?);
    let state = PolicyState::open(&db)?;
    let approvals = crate::approvals::Approvals::open(&db, audit.clone())
        .map_err(|e| ServerError::State(db.display().to_string(), e.to_string()))?;

    let mut trusted = Vec::new();
    for k in &cfg.trusted_policy_keys {
        trusted.push(
            TrustedKey::from_str_or_file(k).map_err(|e| ServerError::TrustedKey(k.clone(), e))?,
        );
    }
    if trusted.is_empty() {
        tracing::warn!("no trusted_policy_keys configured: no policy bundle can be accepted");
    }
    let mut loader = PolicyLoader::new(cfg.policy_dir.clone(), trusted);
    let (policy_tx, policy_rx) = watch::channel(None);
    let floor = state.floor()?;
    if let Some(outcome) = loader.load_initial(floor) {
        apply_policy_outcome(outcome, &policy_tx, &state, &audit).await;
    }
    if policy_tx.borrow().is_none() {
        tracing::warn!(dir = %cfg.policy_dir.display(), "no policy in force: every tunnel request is refused until a signed bundle is installed");
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Io(format!("cannot listen on {}", cfg.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io("listener address".into(), e))?;
    let admin_listener = crate::admin::tasks::bind_admin(&cfg).await.map_err(|e| {
        ServerError::Io(
            format!("cannot listen on admin_listen {:?}", cfg.audit.admin_listen),
            e,
        )
    })?;

    let mask_hash_key =
        crate::proxy::postgres::masker::MaskHashKey::load_or_generate(&cfg.data_dir)
            .map_err(|e| ServerError::State(cfg.data_dir.display().to_string(), e))?;
    let assertion_key = crate::proxy::http::assertion::AssertionKey::load_or_generate(
        &cfg.data_dir.join(crate::proxy::http::assertion::KEY_FILE),
    )
    .map_err(|e| ServerError::State(cfg.data_dir.display().to_string(), e))?;
    let shared = Arc::new(Shared {
        mask_hash_key,
        assertion_key: Arc::new(assertion_key),
        policy: policy_rx,
        revoked: revoked_rx,
        signer,
        sessions: SessionRegistry::default(),
        audit: audit.clone(),
        secrets,
        fingerprint: tls.fingerprint.clone(),
        idp: Mutex::new(None),
        pg_cancel: Default::default(),
        approvals,
        metrics: Default::default(),
        live: Default::default(),
        cfg,
    });
    let _ = audit
        .record(
            AuditRecord::new(AuditKind::ApplianceStarted).reason(format!("listening on {addr}")),
        )
        .await;
    tracing::info!(%addr, fingerprint = %tls.fingerprint, "appliance listening");

    let shutdown = CancellationToken::new();
    // Audit mode, checkpoints, shipping, retention, event routes, admin listener.
    let mut tasks = crate::admin::tasks::spawn_all(&shared, admin_listener, &shutdown);
    tasks.extend([
        tokio::spawn(crate::gate::serve(
            listener,
            tls_config,
            shared.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(poll_policy(
            loader,
            policy_tx,
            state,
            audit.clone(),
            shared.cfg.policy_poll_interval,
            shutdown.clone(),
        )),
        tokio::spawn(crate::proxy::postgres::ephemeral::sweeper(
            shared.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(poll_revocations(
            revocations,
            revoked_tx,
            shared.sessions.clone(),
            shared.cfg.revocation_poll_interval,
            shutdown.clone(),
        )),
        // Wakes sessions whose request the local CLI decided; times out the rest.
        tokio::spawn(
            shared
                .approvals
                .clone()
                .run_poller(shared.cfg.revocation_poll_interval, shutdown.clone()),
        ),
    ]);
    #[cfg(feature = "bench")]
    for binding in shared.cfg.bench_listeners.clone() {
        let listener = tokio::net::TcpListener::bind(binding.listen)
            .await
            .map_err(|e| ServerError::Io(format!("cannot listen on {}", binding.listen), e))?;
        tracing::warn!(listen = %binding.listen, target = %binding.target, user = %binding.user, "BENCHMARK BUILD: plain listener without tunnel or token");
        tasks.push(tokio::spawn(crate::gate::serve_bench(
            listener,
            binding,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    Ok(Running {
        addr,
        fingerprint: tls.fingerprint,
        shared,
        shutdown,
        tasks,
        writer,
    })
}

async fn apply_policy_outcome(
    outcome: LoadOutcome,
    tx: &watch::Sender<Option<Arc<VerifiedPolicy>>>,
    state: &PolicyState,
    audit: &AuditHandle,
) {
    match outcome {
        LoadOutcome::Loaded(verified) => {
            let p = verified.policy();
            tracing::info!(
                version = p.version,
                signer = verified.signer_key_id(),
                connections = p.connections.len(),
                "policy loaded"
            );
            if let Err(e) = state.record(p.version, verified.bundle_sha256()) {
                tracing::error!(error = %e, "could not persist the policy version floor");
            }
            let rec = AuditRecord::new(AuditKind::PolicyLoaded)
                .policy_version(p.version)
                .outcome("ok")
                .detail(serde_json::json!({
                    "signer_key_id": verified.signer_key_id(),
                    "bundle_sha256": verified.bundle_sha256(),
                    "connections": p.connections.len(),
                }));
            tx.send_replace(Some(Arc::new(verified)));
            let _ = audit.record(rec).await;
        }
        LoadOutcome::Refused { reason, version } => {
            let in_force = tx.borrow().as_ref().map(|p| p.policy().version);
            tracing::warn!(%reason, ?version, ?in_force, "policy bundle refused; the policy in force stays");
            let mut rec = AuditRecord::new(AuditKind::PolicyRefused)
                .outcome("refused")
                .reason(reason);
            if let Some(v) = version {
                rec = rec.policy_version(v);
            }
            if let Some(v) = in_force {
                rec = rec.detail(serde_json::json!({ "in_force": v }));
            }
            let _ = audit.record(rec).await;
        }
    }
}

async fn poll_policy(
    mut loader: PolicyLoader,
    tx: watch::Sender<Option<Arc<VerifiedPolicy>>>,
    state: PolicyState,
    audit: AuditHandle,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let in_force = tx.borrow().as_ref().map(|p| p.policy().version);
        if let Some(outcome) = loader.poll(in_force) {
            apply_policy_outcome(outcome, &tx, &state, &audit).await;
        }
    }
}

async fn poll_revocations(
    store: RevocationStore,
    tx: watch::Sender<RevokedSet>,
    sessions: SessionRegistry,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut last_version = store.data_version().ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let version = match store.data_version() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reading the revocation store failed");
                continue;
            }
        };
        if Some(version) == last_version {
            continue;
        }
        last_version = Some(version);
        let set = match store.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading the revocation store failed");
                continue;
            }
        };
        tx.send_replace(set.clone());
        for user in set.users() {
            let n = sessions.close_user(user, "identity revoked");
            if n > 0 {
                tracing::info!(
                    user,
                    sessions = n,
                    "closed the live sessions of a revoked identity"
                );
            }
        }
    }
}

/// The highest policy version ever accepted, persisted so that a restart
/// cannot roll the appliance back to an older bundle.
pub struct PolicyState {
    conn: Mutex<rusqlite::Connection>,
    shown: String,
}

impl PolicyState {
    pub fn open(db: &Path) -> Result<PolicyState, ServerError> {
        let shown = db.display().to_string();
        let err = |e: rusqlite::Error| ServerError::State(shown.clone(), e.to_string());
        let conn = rusqlite::Connection::open(db).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS policy_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL,
                bundle_sha256 TEXT NOT NULL,
                loaded_at_ms INTEGER NOT NULL
            );",
        )
        .map_err(err)?;
        Ok(PolicyState {
            conn: Mutex::new(conn),
            shown,
        })
    }

    pub fn floor(&self) -> Result<Option<u64>, ServerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let v: Option<i64> = conn
            .query_row("SELECT version FROM policy_state WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| ServerError::State(self.shown.clone(), e.to_string()))?;
        Ok(v.map(|v| v as u64))
    }

    fn record(&self, version: u64, sha256: &str) -> Result<(), ServerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO policy_state (id, version, bundle_sha256, loaded_at_ms) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET version = excluded.version,
               bundle_sha256 = excluded.bundle_sha256, loaded_at_ms = excluded.loaded_at_ms",
            rusqlite::params![version as i64, sha256, audit::now_ms()],
        )
        .map(|_| ())
        .map_err(|e| ServerError::State(self.shown.clone(), e.to_string()))
    }
}
