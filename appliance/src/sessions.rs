//! Live sessions by identity, so a revocation can close every connection a
//! person has at once. The lock is a std mutex held only for map updates,
//! never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Inner {
    by_user: HashMap<String, HashMap<u64, Closer>>,
}

#[derive(Clone)]
struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

/// Registry of live sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct SessionRegistry {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
}

/// Held by a live session; deregisters on drop. `token` fires on revocation.
pub struct SessionGuard {
    registry: SessionRegistry,
    user: String,
    id: u64,
    pub token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl SessionRegistry {
    pub fn register(&self, user: &str) -> SessionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .by_user
            .entry(user.to_ascii_lowercase())
            .or_default()
            .insert(
                id,
                Closer {
                    token: token.clone(),
                    reason: reason.clone(),
                },
            );
        SessionGuard {
            registry: self.clone(),
            user: user.to_ascii_lowercase(),
            id,
            token,
            reason,
        }
    }

    /// Cancels every live session of `user` with `reason`; returns how many.
    pub fn close_user(&self, user: &str, reason: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Matching ignores ASCII case, like the revocation set does.
        match inner.by_user.get(&user.to_ascii_lowercase()) {
            Some(sessions) => {
                for closer in sessions.values() {
                    let _ = closer.reason.set(reason.to_string());
                    closer.token.cancel();
                }
                sessions.len()
            }
            None => 0,
        }
    }

    /// Cancels every live session (shutdown); returns how many.
    pub fn close_all(&self, reason: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for closer in inner.by_user.values().flat_map(HashMap::values) {
            let _ = closer.reason.set(reason.to_string());
            closer.token.cancel();
            n += 1;
        }
        n
    }

    /// Number of live sessions (all users).
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_user.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionGuard {
    /// A handle on the close reason, for code that outlives a borrow of the guard.
    pub fn reason_handle(&self) -> Arc<OnceLock<String>> {
        self.reason.clone()
    }

    /// Why the appliance closed this session, if it did.
    pub fn close_reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sessions) = inner.by_user.get_mut(&self.user) {
            sessions.remove(&self.id);
            if sessions.is_empty() {
                inner.by_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_user_cancels_only_that_user() {
        let reg = SessionRegistry::default();
        let a1 = reg.register("alice");
        let a2 = reg.register("Alice");
        let b = reg.register("bob");
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.close_user("alice", "identity revoked"), 2);
        assert_eq!(a1.close_reason(), Some("identity revoked"));
        assert_eq!(b.close_reason(), None);
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b.token.is_cancelled());
        drop(a1);
        drop(a2);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.close_user("alice", "x"), 0);
    }
}
