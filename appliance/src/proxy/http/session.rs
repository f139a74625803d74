//! What every request of one HTTP session shares: the connection's
//! settings, the upstream, the resolved credential headers, the identity
//! asserter, the audit sink and the tasks of upgraded connections. Built
//! once per tunnel stream from the [`SessionContext`].

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::assertion::Asserter;
use super::audit::AuditSink;
use super::credentials;
use super::template::RenderError;
use super::upstream::{Target, Upstream};
use crate::approvals::Approvals;
use crate::identity::Identity;
use crate::policy::kinds::http::HttpSettings;
use crate::proxy::SessionContext;

pub struct Session {
    pub connection: String,
    pub identity: Identity,
    pub session_id: String,
    pub policy_version: Option<u64>,
    pub approvals: Approvals,
    pub settings: HttpSettings,
    pub peer: SocketAddr,
    pub cancel: CancellationToken,
    pub upstream: Upstream,
    /// Injected headers, or why they could not be built (names only).
    pub credentials: Result<Vec<(HeaderName, HeaderValue)>, RenderError>,
    pub asserter: Option<Asserter>,
    pub audit: AuditSink,
    /// Upgraded (WebSocket) connections still being bridged.
    pub tasks: TaskTracker,
    /// How the last upgraded connection ended (the session's end reason).
    pub upgrade_end: std::sync::Mutex<Option<String>>,
}

impl Session {
    pub fn new(
        ctx: &SessionContext,
        settings: HttpSettings,
        audit: AuditSink,
    ) -> Result<Session, String> {
        let name = ctx.connection.name.clone();
        let target = Target::new(
            &name,
            &ctx.connection.upstream,
            &settings,
            ctx.shared.cfg.upstream_connect_timeout,
        )?;
        let credentials =
            credentials::resolve(&settings, &ctx.connection.secrets, &ctx.shared.secrets);
        if let Err(e) = &credentials {
            tracing::error!(connection = %name, error = %e, "HTTP credential unavailable; requests will be refused");
        }
        let asserter = settings.identity_assertion.as_ref().map(|a| {
            Asserter::new(
                ctx.shared.assertion_key.clone(),
                a.header.clone(),
                a.ttl,
                a.audience.clone().unwrap_or_else(|| name.clone()),
                name.clone(),
                ctx.identity.clone(),
            )
        });
        Ok(Session {
            connection: name,
            identity: ctx.identity.clone(),
            session_id: ctx.session_id.clone(),
            policy_version: ctx.policy_version,
            approvals: ctx.shared.approvals.clone(),
            settings,
            peer: ctx.peer,
            cancel: ctx.cancel.clone(),
            upstream: Upstream::new(target),
            credentials,
            asserter,
            audit,
            tasks: TaskTracker::new(),
            upgrade_end: std::sync::Mutex::new(None),
        })
    }
}
