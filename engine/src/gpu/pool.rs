//! Size-keyed pool of storage buffers.
//!
//! Reuse rule (why this is safe with lazy submission): commands are recorded into one
//! encoder and run in recording order, and wgpu puts a barrier between dispatches whenever a
//! buffer goes from being read to being written (or written twice). So a buffer released
//! while recorded commands that read it are still unsubmitted may be handed to a *later
//! recorded* dispatch as its output: the earlier reads run first. It must not be handed to an
//! upload, because `queue.write_buffer` lands before the whole pending command buffer at the
//! next submit and would overwrite data the earlier dispatches have yet to read. Buffers
//! released while commands are pending therefore wait in `recent` (usable by recorded writes
//! only) and join `free` (usable by anything) at the next submit.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Default)]
struct Inner {
    /// size -> buffers of exactly that size, usable by anything.
    free: BTreeMap<u64, Vec<(u64, wgpu::Buffer)>>,
    /// (size, id, buffer) released while recorded commands were unsubmitted.
    recent: Vec<(u64, u64, wgpu::Buffer)>,
    /// Recorded commands exist that have not been submitted.
    pending: bool,
    free_bytes: u64,
    live_bytes: u64,
    created: u64,
    reused: u64,
}

pub(crate) struct Pool {
    inner: Mutex<Inner>,
    limit: u64,
    /// Bumped whenever pooled buffers are destroyed, so bind-group caches forget them.
    epoch: AtomicU64,
}

/// Pool counters, see [`super::GpuStats`].
pub(crate) struct PoolStats {
    pub created: u64,
    pub reused: u64,
    pub live_bytes: u64,
    pub free_bytes: u64,
}

impl Pool {
    pub(crate) fn new(limit: u64) -> Pool {
        Pool {
            inner: Mutex::new(Inner::default()),
            limit,
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held cannot leave the maps inconsistent (every update
        // is a single push/pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// A buffer of `size` bytes (at most 25% larger): from `free`, or also from `recent`
    /// when the caller writes it with a recorded command (see the module docs).
    pub(crate) fn take(&self, size: u64, recorded_write: bool) -> Option<(u64, u64, wgpu::Buffer)> {
        let max = size + size / 4;
        let mut g = self.lock();
        let key = g.free.range(size..=max).next().map(|(k, _)| *k);
        if let Some(k) = key {
            let list = g.free.get_mut(&k)?;
            let (id, buf) = list.pop()?;
            if list.is_empty() {
                g.free.remove(&k);
            }
            g.free_bytes -= k;
            g.live_bytes += k;
            g.reused += 1;
            return Some((k, id, buf));
        }
        if recorded_write {
            let best = g
                .recent
                .iter()
                .enumerate()
                .filter(|(_, (s, _, _))| *s >= size && *s <= max)
                .min_by_key(|(_, (s, _, _))| *s)
                .map(|(i, _)| i);
            if let Some(i) = best {
                let (s, id, buf) = g.recent.swap_remove(i);
                g.free_bytes -= s;
                g.live_bytes += s;
                g.reused += 1;
                return Some((s, id, buf));
            }
        }
        None
    }

    /// Accounts for a freshly created buffer.
    pub(crate) fn created(&self, size: u64) {
        let mut g = self.lock();
        g.created += 1;
        g.live_bytes += size;
    }

    pub(crate) fn release(&self, size: u64, id: u64, buf: wgpu::Buffer) {
        let mut g = self.lock();
        g.live_bytes -= size;
        g.free_bytes += size;
        if g.pending {
            g.recent.push((size, id, buf));
        } else {
            g.free.entry(size).or_default().push((id, buf));
            self.trim(&mut g);
        }
    }

    /// Recorded commands now exist that the next submit will carry.
    pub(crate) fn mark_pending(&self) {
        self.lock().pending = true;
    }

    /// Everything recorded so far was submitted: recently released buffers become free.
    pub(crate) fn submitted(&self) {
        let mut g = self.lock();
        g.pending = false;
        for (s, id, buf) in std::mem::take(&mut g.recent) {
            g.free.entry(s).or_default().push((id, buf));
        }
        self.trim(&mut g);
    }

    /// Drops the largest free buffers until the pool holds at most `limit` bytes. (wgpu keeps
    /// a dropped buffer alive until submitted work that uses it is done.)
    fn trim(&self, g: &mut Inner) {
        let mut dropped = false;
        while g.free_bytes > self.limit {
            let Some(mut e) = g.free.last_entry() else {
                break;
            };
            let size = *e.key();
            e.get_mut().pop();
            if e.get().is_empty() {
                e.remove();
            }
            g.free_bytes -= size;
            dropped = true;
        }
        if dropped {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let g = self.lock();
        PoolStats {
            created: g.created,
            reused: g.reused,
            live_bytes: g.live_bytes,
            free_bytes: g.free_bytes,
        }
    }
}
