//! Event routing: the policy's `[[route]]` rules turn committed audit records
//! into actions (webhook, runbook command, close_session, revoke_identity).
//!
//! The router tails the audit trail from its own cursor (`events` in
//! `audit_cursor`), woken by the writer's tip watch, so it is entirely off
//! the data path: a session never waits for a route, a slow webhook or a
//! runbook. Webhooks and commands run with bounded concurrency
//! (`event_concurrency`); each action and its outcome is audited as an
//! `event_action` record (which never triggers routes itself). On a first
//! start the router begins at the current tip (history is not replayed);
//! after a restart it resumes from its cursor, so an event whose actions had
//! not been started yet still fires (at least once for routing; an action
//! interrupted by a crash is not retried).

pub mod actions;
pub mod cli;
pub mod live;
pub mod matcher;
pub mod router;

pub use actions::{ActionEnv, Outcome};
pub use live::{LiveGuard, LiveSessions};
pub use matcher::{event_kinds, matching, payload, route_matches};
pub use router::{dry_run, run, DryRun};

#[cfg(test)]
mod tests;
