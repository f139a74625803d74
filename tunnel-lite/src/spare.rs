//! One spare tunnel connection, connected and handshaken ahead of need.
//!
//! Opening a tunnel costs a TCP connect and a TLS handshake (resumed, but
//! still a round trip and an X25519 exchange on both ends) before the header
//! can go out. After a tunnel opens, tunnel-lite connects and handshakes one
//! spare in the background, so the next connection, if it comes within
//! [`SPARE_MAX_AGE`], only sends its header and waits for the answer. A
//! burst of N connections costs N + 1 handshakes instead of N, all but the
//! first off the path the person waits on.
//!
//! An unused spare is closed at [`SPARE_MAX_AGE`], well before the
//! appliance's header deadline (`header_timeout`, which the appliance keeps
//! at 2 s or more), so a laptop that stops opening connections holds nothing
//! open and the appliance sees a quiet close before any header, never a late
//! header. This module only keeps the slot; `client` connects and uses it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a spare may wait for a connection to carry.
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(1);

/// The slot for one spare stream `S`, shared by clones of the client.
#[derive(Debug)]
pub struct SpareSlot<S> {
    state: Mutex<SlotState<S>>,
    /// Woken when a fill ends (stored or failed).
    fill_ended: Notify,
}

#[derive(Debug)]
struct SlotState<S> {
    spare: Option<Spare<S>>,
    /// A fill is connecting now: don't start another.
    filling: bool,
    /// A tunnel open is waiting for that fill (only one waits; others go fresh).
    waiter: bool,
    /// Tells one stored spare from the next, so an expiry timer only closes
    /// the spare it was started for.
    generation: u64,
}

/// The waiting open's claim on the fill under way.
struct WaiterClaim<'a, S>(&'a SpareSlot<S>);

impl<S> Drop for WaiterClaim<'_, S> {
    fn drop(&mut self) {
        self.0.lock().waiter = false;
    }
}

impl<S> SlotState<S> {
    fn take(&mut self, now: Instant) -> Option<S> {
        let spare = self.spare.take()?;
        (now.duration_since(spare.started) < SPARE_MAX_AGE).then_some(spare.stream)
    }
}

#[derive(Debug)]
struct Spare<S> {
    stream: S,
    /// When its TCP connect started (the appliance's deadline starts at accept).
    started: Instant,
    generation: u64,
}

impl<S> Default for SpareSlot<S> {
    fn default() -> Self {
        SpareSlot {
            state: Mutex::new(SlotState {
                spare: None,
                filling: false,
                waiter: false,
                generation: 0,
            }),
            fill_ended: Notify::new(),
        }
    }
}

impl<S> SpareSlot<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState<S>> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spare, if there is one young enough to use at `now` and no open
    /// is already waiting for it.
    pub fn take(&self, now: Instant) -> Option<S> {
        let mut st = self.lock();
        if st.waiter {
            return None;
        }
        st.take(now)
    }

    /// Whether a spare is stored now (it may still be too old to use).
    pub fn is_stored(&self) -> bool {
        self.lock().spare.is_some()
    }

    /// The spare; or, when one is being connected and nobody else waits for
    /// it, that one once its handshake ends (it started earlier, so waiting
    /// is never slower than a handshake of our own). `None`: connect anew.
    pub async fn take_or_wait(&self) -> Option<S> {
        let ended = self.fill_ended.notified();
        tokio::pin!(ended);
        // Registered before the state is read, so a fill ending in between
        // still wakes this waiter.
        ended.as_mut().enable();
        {
            let mut st = self.lock();
            if st.waiter {
                // Another open waits for this fill (and its spare is theirs).
                return None;
            }
            if let Some(s) = st.take(Instant::now()) {
                return Some(s);
            }
            if !st.filling {
                return None;
            }
            st.waiter = true;
        }
        // Clears the claim however this future ends, dropped mid-wait included.
        let _claim = WaiterClaim(self);
        // The fill gives up at SPARE_MAX_AGE itself; this bound is a backstop.
        let _ = tokio::time::timeout(SPARE_MAX_AGE, ended).await;
        let spare = self.lock().take(Instant::now());
        spare
    }

    /// Claims the right to connect a new spare: false if one is stored or
    /// already being connected.
    pub fn begin_fill(&self) -> bool {
        let mut st = self.lock();
        if st.filling || st.spare.is_some() {
            return false;
        }
        st.filling = true;
        true
    }

    /// Stores the spare a fill connected; returns its generation for [`Self::expire`].
    pub fn put(&self, stream: S, started: Instant) -> u64 {
        let mut st = self.lock();
        st.generation += 1;
        let generation = st.generation;
        st.filling = false;
        st.spare = Some(Spare {
            stream,
            started,
            generation,
        });
        drop(st);
        self.fill_ended.notify_waiters();
        generation
    }

    /// A fill could not connect: the next tunnel opens the normal way.
    pub fn fill_failed(&self) {
        self.lock().filling = false;
        self.fill_ended.notify_waiters();
    }

    /// Removes the spare of `generation` if nobody took it; the caller drops
    /// (closes) it outside the lock.
    pub fn expire(&self, generation: u64) -> Option<S> {
        let mut st = self.lock();
        match &st.spare {
            Some(s) if s.generation == generation => st.spare.take().map(|s| s.stream),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_taken_once_while_young() {
        let slot = SpareSlot::default();
        assert!(slot.begin_fill());
        assert!(!slot.begin_fill(), "one fill at a time");
        let started = Instant::now();
        slot.put("a", started);
        assert!(!slot.begin_fill(), "no fill while a spare waits");
        assert_eq!(slot.take(started + Duration::from_millis(100)), Some("a"));
        assert_eq!(slot.take(started + Duration::from_millis(100)), None);
        assert!(slot.begin_fill(), "taking the spare allows the next fill");
    }

    #[test]
    fn an_old_spare_is_never_used() {
        let slot = SpareSlot::default();
        assert!(slot.begin_fill());
        let started = Instant::now();
        slot.put("old", started);
        assert_eq!(slot.take(started + SPARE_MAX_AGE), None);
        assert!(slot.begin_fill(), "the old spare was removed");
    }

    #[test]
    fn expiry_closes_only_its_own_spare() {
        let slot = SpareSlot::default();
        let t = Instant::now();
        assert!(slot.begin_fill());
        let first = slot.put("first", t);
        assert_eq!(slot.take(t), Some("first"));
        assert!(slot.begin_fill());
        let second = slot.put("second", t);
        assert_eq!(
            slot.expire(first),
            None,
            "a later spare is not the first's to close"
        );
        assert_eq!(slot.expire(second), Some("second"));
        assert_eq!(slot.take(t), None);
    }

    /// A spawned `take_or_wait`, returned once it has claimed the fill.
    async fn waiting_open(
        slot: &std::sync::Arc<SpareSlot<&'static str>>,
    ) -> tokio::task::JoinHandle<Option<&'static str>> {
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.take_or_wait().await }
        });
        while !slot.lock().waiter {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn one_open_waits_for_the_fill_under_way_and_others_connect_anew() {
        let slot = std::sync::Arc::new(SpareSlot::default());
        assert_eq!(slot.take_or_wait().await, None, "no fill: connect anew");
        assert!(slot.begin_fill());
        let waiter = waiting_open(&slot).await;
        assert_eq!(slot.take_or_wait().await, None, "only one waits");
        slot.put("handshaken", Instant::now());
        assert_eq!(waiter.await.unwrap(), Some("handshaken"));

        assert!(slot.begin_fill());
        let waiter = waiting_open(&slot).await;
        slot.fill_failed();
        assert_eq!(waiter.await.unwrap(), None, "a failed fill: connect anew");
    }

    #[tokio::test]
    async fn a_waiter_dropped_mid_wait_releases_its_claim() {
        let slot: std::sync::Arc<SpareSlot<&str>> = std::sync::Arc::default();
        assert!(slot.begin_fill());
        let waiter = waiting_open(&slot).await;
        assert_eq!(slot.take(Instant::now()), None, "reserved for the waiter");
        waiter.abort();
        let _ = waiter.await;
        assert!(!slot.lock().waiter, "the claim went with the waiter");
        slot.put("next", Instant::now());
        assert_eq!(slot.take(Instant::now()), Some("next"));
    }

    #[test]
    fn a_failed_fill_allows_another() {
        let slot: SpareSlot<&str> = SpareSlot::default();
        assert!(slot.begin_fill());
        slot.fill_failed();
        assert!(slot.begin_fill());
    }
}
