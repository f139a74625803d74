//! Laptop -> upstream flow control for one channel: a byte-bounded queue
//! between the laptop-side SSH session (which pushes what the client sends)
//! and the channel's bridge task (which forwards it upstream).
//!
//! russh re-opens a channel's SSH window as soon as data arrives, so the only
//! way to slow a writer down is to stop reading its connection: `push` waits
//! while the channel has [`LANE_BYTES`] queued, which stops the laptop-side
//! session loop, which stops reading the tunnel, which (TCP) stops the
//! laptop's `ssh`. No unbounded buffering.
//!
//! That wait must not deadlock the connection: while the session loop waits
//! here it also cannot send the laptop anything, and when the upstream only
//! reads once its output has been taken (`cat`, rsync) the two directions
//! wait on each other. So when some upstream -> laptop write of the same
//! connection has been stuck for [`STALL`], `push` lets up to
//! [`OVERFLOW_BYTES`] more through (per connection) so the loop can move the
//! other direction; past that it waits regardless.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::{Pty, Sig};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Bytes queued per channel before the laptop is slowed down.
pub const LANE_BYTES: usize = 1024 * 1024;
/// Extra bytes per connection let through while the other direction is stuck.
pub const OVERFLOW_BYTES: usize = 4 * 1024 * 1024;
/// How long a write towards the laptop must be stuck to count as stalled.
pub const STALL: Duration = Duration::from_millis(20);
/// What a non-data event costs in the byte budget.
const EVENT_COST: usize = 64;

/// How a session channel starts.
#[derive(Debug, Clone)]
pub enum Start {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

/// What the laptop sent on a channel, in order.
#[derive(Debug)]
pub enum FrontEvent {
    Data(Bytes),
    ExtData(u32, Bytes),
    Eof,
    Close,
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pix_w: u32,
        pix_h: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env {
        name: String,
        value: String,
    },
    WindowChange {
        cols: u32,
        rows: u32,
        pix_w: u32,
        pix_h: u32,
    },
    Signal(Sig),
    Start(Start),
    /// An exec request refused by a deny pattern.
    Denied {
        command: String,
        pattern: String,
    },
    /// An exec request that waits for a human approval.
    Held {
        command: Vec<u8>,
        pattern: String,
    },
}

impl FrontEvent {
    fn cost(&self) -> usize {
        let n = match self {
            FrontEvent::Data(b) | FrontEvent::ExtData(_, b) => b.len(),
            FrontEvent::Start(Start::Exec(c)) => c.len(),
            _ => 0,
        };
        n.clamp(EVENT_COST, LANE_BYTES)
    }
}

/// Per-connection state shared by all lanes: stalled writes towards the
/// laptop and the overflow in use.
#[derive(Debug, Default)]
pub struct Pressure {
    stalled_writes: AtomicUsize,
    overflow: AtomicUsize,
}

impl Pressure {
    /// Runs a write towards the laptop, counting it as stalled while it takes
    /// longer than [`STALL`].
    pub async fn track<F: std::future::Future>(&self, write: F) -> F::Output {
        tokio::pin!(write);
        match tokio::time::timeout(STALL, &mut write).await {
            Ok(v) => v,
            Err(_) => {
                self.stalled_writes.fetch_add(1, Ordering::SeqCst);
                let v = write.await;
                self.stalled_writes.fetch_sub(1, Ordering::SeqCst);
                v
            }
        }
    }

    fn stalled(&self) -> bool {
        self.stalled_writes.load(Ordering::SeqCst) > 0
    }

    fn try_overflow(&self, n: usize) -> bool {
        self.overflow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + n <= OVERFLOW_BYTES).then_some(used + n)
            })
            .is_ok()
    }
}

enum Charge {
    Permits(usize),
    Overflow(usize),
}

/// The laptop-side session's end of a lane.
pub struct LaneTx {
    tx: mpsc::UnboundedSender<(FrontEvent, Charge)>,
    budget: Arc<Semaphore>,
    pressure: Arc<Pressure>,
    kill: CancellationToken,
}

/// The bridge task's end of a lane.
pub struct LaneRx {
    rx: mpsc::UnboundedReceiver<(FrontEvent, Charge)>,
    budget: Arc<Semaphore>,
    pressure: Arc<Pressure>,
}

/// The session was killed while waiting for room.
#[derive(Debug)]
pub struct Killed;

/// A new lane. The channel is unbounded in count but every item holds
/// budget (permits or overflow) until received, so it is bounded in bytes.
pub fn lane(pressure: Arc<Pressure>, kill: CancellationToken) -> (LaneTx, LaneRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(LANE_BYTES));
    (
        LaneTx {
            tx,
            budget: budget.clone(),
            pressure: pressure.clone(),
            kill,
        },
        LaneRx {
            rx,
            budget,
            pressure,
        },
    )
}

impl LaneTx {
    /// Queues `ev`, waiting for room. A lane whose bridge is gone swallows
    /// events (the channel is closing); only a killed session is an error.
    pub async fn push(&self, ev: FrontEvent) -> Result<(), Killed> {
        if self.tx.is_closed() {
            return Ok(());
        }
        let cost = ev.cost();
        let acquire = self.budget.clone().acquire_many_owned(cost as u32);
        tokio::pin!(acquire);
        let charge = loop {
            tokio::select! {
                biased;
                permit = &mut acquire => match permit {
                    Ok(p) => {
                        p.forget();
                        break Charge::Permits(cost);
                    }
                    Err(_) => return Ok(()),
                },
                _ = self.kill.cancelled() => return Err(Killed),
                _ = tokio::time::sleep(STALL) => {
                    if self.tx.is_closed() {
                        return Ok(());
                    }
                    if self.pressure.stalled() && self.pressure.try_overflow(cost) {
                        break Charge::Overflow(cost);
                    }
                }
            }
        };
        if let Err(mpsc::error::SendError((_, charge))) = self.tx.send((ev, charge)) {
            self.release(charge);
        }
        Ok(())
    }

    fn release(&self, charge: Charge) {
        release(&self.budget, &self.pressure, charge);
    }
}

fn release(budget: &Semaphore, pressure: &Pressure, charge: Charge) {
    match charge {
        Charge::Permits(n) => budget.add_permits(n),
        Charge::Overflow(n) => {
            pressure.overflow.fetch_sub(n, Ordering::SeqCst);
        }
    }
}

impl LaneRx {
    /// The next event; `None` once the laptop side is gone.
    pub async fn recv(&mut self) -> Option<FrontEvent> {
        let (ev, charge) = self.rx.recv().await?;
        release(&self.budget, &self.pressure, charge);
        Some(ev)
    }
}

impl Drop for LaneRx {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok((_, charge)) = self.rx.try_recv() {
            release(&self.budget, &self.pressure, charge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> FrontEvent {
        FrontEvent::Data(Bytes::from(vec![0u8; n]))
    }

    #[tokio::test]
    async fn push_waits_when_full_and_resumes_when_drained() {
        let p = Arc::new(Pressure::default());
        let (tx, mut rx) = lane(p.clone(), CancellationToken::new());
        for _ in 0..(LANE_BYTES / 32768) {
            tx.push(data(32768)).await.unwrap();
        }
        let blocked = tokio::time::timeout(Duration::from_millis(200), tx.push(data(32768))).await;
        assert!(blocked.is_err(), "a full lane must not take more");
        assert!(rx.recv().await.is_some());
        tx.push(data(32768)).await.unwrap();
    }

    #[tokio::test]
    async fn overflow_only_while_the_other_direction_is_stuck() {
        let p = Arc::new(Pressure::default());
        let (tx, _rx) = lane(p.clone(), CancellationToken::new());
        for _ in 0..(LANE_BYTES / 32768) {
            tx.push(data(32768)).await.unwrap();
        }
        // A write towards the laptop that never completes.
        let p2 = p.clone();
        let stuck = tokio::spawn(async move { p2.track(std::future::pending::<()>()).await });
        tokio::time::sleep(STALL * 2).await;
        for _ in 0..(OVERFLOW_BYTES / 32768) {
            tokio::time::timeout(Duration::from_millis(200), tx.push(data(32768)))
                .await
                .expect("overflow admits")
                .unwrap();
        }
        let over = tokio::time::timeout(Duration::from_millis(200), tx.push(data(32768))).await;
        assert!(over.is_err(), "overflow is bounded");
        stuck.abort();
    }

    #[tokio::test]
    async fn killed_session_stops_waiting_and_dropped_bridge_swallows() {
        let p = Arc::new(Pressure::default());
        let kill = CancellationToken::new();
        let (tx, rx) = lane(p, kill.clone());
        for _ in 0..(LANE_BYTES / 32768) {
            tx.push(data(32768)).await.unwrap();
        }
        let k = kill.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            k.cancel();
        });
        assert!(tx.push(data(10)).await.is_err());
        drop(rx);
        let (tx, rx) = lane(Arc::new(Pressure::default()), CancellationToken::new());
        drop(rx);
        assert!(tx.push(data(10)).await.is_ok());
    }
}
