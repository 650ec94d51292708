//! Giving the memory of large requests back to the OS. glibc keeps freed memory in its arenas
//! (and raises its mmap threshold after a large free, so the next large buffers come from the
//! arenas too): after a burst of multi-megabyte bodies the server would stay tens of megabytes
//! larger for good. After each request with a large body, one trim runs on a blocking thread;
//! requests finishing while it runs ask for one more, never for one each.

use std::sync::atomic::{AtomicBool, Ordering::AcqRel};
use std::sync::Arc;

/// Bodies at least this large ask for a trim once their request is answered.
pub const RELEASE_AFTER_BYTES: u64 = 1 << 20;

#[derive(Debug, Default, Clone)]
pub struct Releaser {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    /// A request asked for a trim since the running one started.
    pending: AtomicBool,
    /// A trim task is running.
    running: AtomicBool,
}

impl Releaser {
    /// Asks for a trim; starts the trim task unless one is running (it will see the request).
    pub fn request(&self) {
        self.inner
            .pending
            .store(true, std::sync::atomic::Ordering::Release);
        if self.inner.running.swap(true, AcqRel) {
            return;
        }
        let flags = self.inner.clone();
        tokio::task::spawn_blocking(move || loop {
            while flags.pending.swap(false, AcqRel) {
                dsvl::memory::release_freed();
            }
            flags
                .running
                .store(false, std::sync::atomic::Ordering::Release);
            // A request that came after the last check but saw `running` set: take it over.
            if !flags.pending.load(std::sync::atomic::Ordering::Acquire)
                || flags.running.swap(true, AcqRel)
            {
                return;
            }
        });
    }
}
