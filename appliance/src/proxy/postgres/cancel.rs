//! Cancel keys. The appliance hands each client its own BackendKeyData; a
//! CancelRequest arriving on a new tunnel is matched here to the session it
//! names and forwarded with the upstream's key, but only for the same person
//! on the same connection.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::rand::SecureRandom;

/// Where a cancel for one client key goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub user: String,
    pub connection: String,
    pub upstream_process_id: i32,
    pub upstream_key: Vec<u8>,
    /// Woken by a cancel, so a statement held for approval is withdrawn.
    pub hold_cancel: std::sync::Arc<tokio::sync::Notify>,
}

/// Live sessions' cancel keys. A std mutex held only for map updates.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>,
}

/// Removes its key from the registry on drop.
pub struct CancelKeyGuard<'r> {
    registry: &'r CancelRegistry,
    pub process_id: i32,
    pub secret_key: Vec<u8>,
}

impl CancelRegistry {
    /// Allocates a fresh client-facing key (`key_len` bytes) for `target`.
    pub fn register(&self, target: CancelTarget, key_len: usize) -> CancelKeyGuard<'_> {
        let rng = ring::rand::SystemRandom::new();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut pid = [0u8; 4];
            let mut key = vec![0u8; key_len];
            if rng.fill(&mut pid).is_err() || rng.fill(&mut key).is_err() {
                // No randomness: use a counter-like fallback that is still unique.
                pid = (map.len() as u32 + 1).to_be_bytes();
            }
            // Positive process ids, like a real server's.
            let process_id = (u32::from_be_bytes(pid) & 0x7fff_ffff) as i32;
            let k = (process_id, key.clone());
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(k) {
                e.insert(target);
                return CancelKeyGuard {
                    registry: self,
                    process_id,
                    secret_key: key,
                };
            }
        }
    }

    /// The target for a client key, if it is live.
    pub fn lookup(&self, process_id: i32, secret_key: &[u8]) -> Option<CancelTarget> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(process_id, secret_key.to_vec())).cloned()
    }
}

impl Drop for CancelKeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(self.process_id, std::mem::take(&mut self.secret_key)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_removed_on_drop() {
        let reg = CancelRegistry::default();
        let t = CancelTarget {
            user: "a".into(),
            connection: "pg".into(),
            upstream_process_id: 7,
            upstream_key: vec![1, 2, 3, 4],
            hold_cancel: Default::default(),
        };
        let g1 = reg.register(t.clone(), 4);
        let g2 = reg.register(t.clone(), 32);
        assert_ne!(
            (g1.process_id, &g1.secret_key),
            (g2.process_id, &g2.secret_key)
        );
        assert!(g1.process_id > 0);
        let found = reg.lookup(g1.process_id, &g1.secret_key).unwrap();
        assert_eq!(
            (found.user, found.upstream_process_id),
            (t.user, t.upstream_process_id)
        );
        let (pid, key) = (g1.process_id, g1.secret_key.clone());
        drop(g1);
        assert!(reg.lookup(pid, &key).is_none());
        assert!(reg.lookup(g2.process_id, &g2.secret_key).is_some());
    }
}
