//! Live sessions by session id, so a `close_session` action closes exactly the
//! session its event came from (the revocation registry indexes by person).
//! The gate registers each tunnel session; the guard deregisters on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

type Entry = (CancellationToken, Arc<OnceLock<String>>);

/// Session id -> how to close it. Cheap to clone.
#[derive(Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Deregisters its session on drop.
pub struct LiveGuard {
    sessions: LiveSessions,
    id: String,
}

impl LiveSessions {
    /// Registers session `id`, closed by cancelling `token` with `reason` set.
    pub fn register(
        &self,
        id: &str,
        token: CancellationToken,
        reason: Arc<OnceLock<String>>,
    ) -> LiveGuard {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), (token, reason));
        LiveGuard {
            sessions: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Closes session `id` with `reason`; false if it is not live.
    pub fn close(&self, id: &str, reason: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some((token, why)) => {
                let _ = why.set(reason.to_owned());
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Live sessions registered.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.sessions
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
