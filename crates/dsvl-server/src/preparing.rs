//! A bound on request preparation: decoding images and tokenizing prompts costs memory in
//! proportion to what the client sent (about 75 bytes per prompt byte while tokenizing), before
//! the engine's queue sees the request. At most `slots` requests are prepared at once; up to
//! `max_waiting` more wait for a slot; beyond that a request is refused with 429 at once.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

#[derive(Debug)]
pub struct PrepareGate {
    slots: Arc<Semaphore>,
    total: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A preparation slot, given back when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl PrepareGate {
    pub fn new(slots: usize, max_waiting: usize) -> Self {
        let total = slots.max(1);
        Self {
            slots: Arc::new(Semaphore::new(total)),
            total,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A slot, after waiting for one if need be; 429 when `max_waiting` requests already wait.
    /// A request whose client leaves while it waits stops waiting (the future is dropped).
    pub async fn enter(&self) -> Result<Slot, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        let waiting = Waiting::join(&self.waiting);
        if waiting.ahead >= self.max_waiting {
            return Err(ApiError::preparing_full(waiting.ahead));
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        Ok(Slot { _permit: permit })
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Requests being prepared now.
    pub fn busy(&self) -> usize {
        self.total.saturating_sub(self.slots.available_permits())
    }
}

/// One waiting request, counted while it lives (so a dropped, cancelled wait is uncounted too).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Relaxed);
        Self { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_a_slot_then_refuses_past_the_waiting_room() {
        let gate = Arc::new(PrepareGate::new(1, 1));
        let first = gate.enter().await.expect("free slot");
        // The second waits; a third finds the waiting room full.
        let g = gate.clone();
        let second = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let third = gate.enter().await.err().expect("refused");
        assert_eq!(third.status.as_u16(), 429);
        assert_eq!(gate.busy(), 1);
        drop(first);
        second.await.expect("joins").expect("got the slot");
        assert_eq!(gate.waiting(), 0);
        assert_eq!(gate.busy(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_waiting_room() {
        let gate = PrepareGate::new(1, 1);
        let _held = gate.enter().await.expect("free slot");
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), gate.enter()).await;
        assert!(waited.is_err(), "no slot was free");
        assert_eq!(gate.waiting(), 0);
        // The room is free again: the next request waits instead of being refused.
        let again = tokio::time::timeout(std::time::Duration::from_millis(20), gate.enter()).await;
        assert!(again.is_err(), "waited, not refused");
    }
}
