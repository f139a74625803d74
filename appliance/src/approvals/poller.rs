//! The serving process's background task: expires the orphans of a previous
//! run, times out overdue requests nobody waits for any more, and wakes the
//! waiters of requests decided by another process (the local CLI), noticed
//! through `PRAGMA data_version` like the revocation poller.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{lock, ApprovalState, Approvals, Via};
use crate::audit::now_ms;

impl Approvals {
    /// Runs until `shutdown`: every `every` (about 200 ms), times out overdue
    /// requests and, when another connection committed to the database, wakes
    /// this process's waiters whose request is no longer pending. Starts by
    /// expiring the requests a previous run left pending (their sessions are gone).
    pub async fn run_poller(self, every: Duration, shutdown: CancellationToken) {
        let n = self.expire_orphans().await;
        if n > 0 {
            tracing::info!(
                requests = n,
                "expired approval requests left pending by a previous run"
            );
        }
        let mut last_version = self.read(|s| s.data_version()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.time_out_overdue().await;
            let version = match self.read(|s| s.data_version()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "reading the approvals store failed");
                    continue;
                }
            };
            if Some(version) != last_version {
                last_version = Some(version);
                self.wake_decided();
            }
        }
    }

    /// Marks `expired` (audited as withdrawn) every pending request filed by
    /// another run of the appliance. Returns how many.
    pub async fn expire_orphans(&self) -> usize {
        let instance = self.inner.instance.clone();
        let orphans = match self.read(|s| s.orphans(&instance)) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "reading the approvals store failed");
                return 0;
            }
        };
        let reason = Some("the requesting session ended when the appliance restarted");
        let mut n = 0;
        for v in orphans {
            match self
                .finish(
                    &v.id,
                    ApprovalState::Expired,
                    None,
                    reason,
                    false,
                    Via::Restart,
                )
                .await
            {
                Ok(Some(_)) => n += 1,
                Ok(None) => {}
                Err(e) => tracing::error!(id = %v.id, error = %e, "expiring an approval failed"),
            }
        }
        n
    }

    /// Times out pending requests whose deadline passed (their `Pending` may
    /// have been dropped, or live in a process that is gone).
    async fn time_out_overdue(&self) {
        let overdue = match self.read(|s| s.overdue(now_ms())) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "reading the approvals store failed");
                return;
            }
        };
        let reason = Some("no decision before the timeout");
        for v in overdue {
            if let Err(e) = self
                .finish(
                    &v.id,
                    ApprovalState::TimedOut,
                    None,
                    reason,
                    false,
                    Via::Deadline,
                )
                .await
            {
                tracing::error!(id = %v.id, error = %e, "timing out an approval failed");
            }
        }
    }

    /// Wakes the waiters of this process whose request another process settled.
    fn wake_decided(&self) {
        let ids: Vec<String> = {
            let mut waiters = lock(&self.inner.waiters);
            // A dropped `Pending` leaves a closed sender behind.
            waiters.retain(|_, tx| !tx.is_closed());
            waiters.keys().cloned().collect()
        };
        for id in ids {
            match self.read(|s| s.get(&id)) {
                Ok(Some(v)) if v.state != ApprovalState::Pending => self.wake(&v),
                Ok(_) => {}
                Err(e) => tracing::error!(%id, error = %e, "reading an approval failed"),
            }
        }
    }
}
