//! Fork-join for decode-sized calls (0.3–2 ms each, ~130 a token at OPT-2.7B): the caller
//! runs tasks itself while helper threads, which spin for a while after each call, take the
//! rest. rayon parks an idle worker within microseconds and wakes it through the kernel, and
//! a caller outside its pool waits on a latch: on the 2-core VMs here that cost 40–100 µs a
//! call, against 4–5 µs with a spinning helper (`docs/cpu.md`).
//!
//! One call at a time: a call while the team is busy (from another thread, or from inside a
//! task) goes to rayon instead. Helpers spin for [`SPIN`] after their last task, then sleep
//! until a call wakes them, so an idle process burns no CPU.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper spins for the next call before it sleeps: longer than the serial work
/// between two decode matmuls (tens of µs; a long attention a few hundred).
const SPIN: Duration = Duration::from_millis(1);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// Activation rows up to which a matmul is a decode step (one token of up to 16 sequences),
/// short enough per call to go to the team.
pub(crate) const DECODE_ROWS: usize = 16;

struct Team {
    /// Helper threads started (set once, before the first call).
    helpers: AtomicUsize,
    /// Taken by the one caller at a time.
    busy: AtomicBool,
    /// Odd while a call is open. A helper joins an open call it has not joined yet.
    epoch: AtomicUsize,
    /// The open call's task, its lifetime erased: only read by a helper counted in `inside`
    /// that has seen the call still open after counting itself, and the caller closes the
    /// call and waits for `inside` to reach 0 before it returns.
    task: UnsafeCell<Option<*const Task<'static>>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    inside: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `task` is written only by the caller holding `busy` while no helper reads it (the
// protocol above); everything else is atomics and locks.
unsafe impl Sync for Team {}
// SAFETY: as above; the pointer is only dereferenced under that protocol.
unsafe impl Send for Team {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let wanted = rayon::current_num_threads().saturating_sub(1);
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let started = (0..wanted)
            .take_while(|i| {
                std::thread::Builder::new()
                    .name(format!("blip2-team-{i}"))
                    .spawn(move || team.helper())
                    .is_ok()
            })
            .count();
        team.helpers.store(started, Release);
        team
    })
}

impl Team {
    /// Claims and runs tasks of the open call until none are left.
    fn work(&self, f: &Task<'_>) {
        let tasks = self.tasks.load(Relaxed);
        loop {
            let t = self.next.fetch_add(1, Relaxed);
            if t >= tasks {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(t))) {
                lock(&self.panic).get_or_insert(p);
            }
            self.done.fetch_add(1, Release);
        }
    }

    fn helper(&self) {
        let mut joined = 0;
        loop {
            let e = self.wait_open(joined);
            joined = e;
            self.inside.fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == e {
                // SAFETY: the call is open and this helper is counted in `inside`, so the
                // caller is still inside `for_each` and its task alive (struct docs).
                if let Some(f) = unsafe { *self.task.get() } {
                    self.work(unsafe { &*f });
                }
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }

    /// The epoch of the next open call other than `joined`: spinning for [`SPIN`], then
    /// asleep until a caller wakes this helper.
    fn wait_open(&self, joined: usize) -> usize {
        let open = |e: usize| !e.is_multiple_of(2) && e != joined;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(Acquire);
            if open(e) {
                return e;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(128) && start.elapsed() > SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let mut g = lock(&self.lock);
        self.sleepers.fetch_add(1, SeqCst);
        let e = loop {
            let e = self.epoch.load(SeqCst);
            if open(e) {
                break e;
            }
            g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        };
        self.sleepers.fetch_sub(1, SeqCst);
        e
    }
}

/// Runs `f(t)` for every `t < tasks`: on the team for a `decode`-sized call, else on rayon
/// (serially for one task). The one place a kernel chooses between the two.
pub(crate) fn run(tasks: usize, decode: bool, f: &Task<'_>) {
    if decode {
        for_each(tasks, f);
    } else if tasks > 1 {
        (0..tasks).into_par_iter().for_each(f);
    } else {
        (0..tasks).for_each(f);
    }
}

/// Runs `f(t)` for every `t < tasks`, each exactly once, over the caller and the team's
/// helpers (rayon when the team is busy); returns when all have finished. A panic in a task
/// is resumed in the caller after every task has finished.
pub(crate) fn for_each(tasks: usize, f: &Task<'_>) {
    if tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let team = team();
    if team.helpers.load(Acquire) == 0
        || team
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
    {
        (0..tasks).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: no helper reads `task` now (the last call was closed with `inside` at 0, and
    // a helper that counts itself in later sees it closed); the lifetime is erased only for
    // as long as this call stays open, and it is closed before `f` can go away.
    unsafe {
        *team.task.get() = Some(std::mem::transmute::<*const Task<'_>, *const Task<'static>>(f));
    }
    team.tasks.store(tasks, Relaxed);
    team.next.store(0, Relaxed);
    team.done.store(0, Relaxed);
    let e = team.epoch.load(Relaxed) + 1;
    team.epoch.store(e, SeqCst);
    if team.sleepers.load(SeqCst) > 0 {
        let _g = lock(&team.lock);
        team.wake.notify_all();
    }
    team.work(f);
    while team.done.load(Acquire) < tasks {
        std::hint::spin_loop();
    }
    team.epoch.store(e + 1, SeqCst);
    while team.inside.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    // SAFETY: closed, and no helper inside.
    unsafe { *team.task.get() = None };
    let panic = lock(&team.panic).take();
    team.busy.store(false, Release);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU32;

    /// Every task runs exactly once, over many back-to-back calls of every size (the epoch
    /// hand-over between calls is where a helper could run a stale or a missed task).
    #[test]
    fn every_task_runs_once() {
        for round in 0..300 {
            let tasks = [0, 1, 2, 3, 5, 17, 64][round % 7];
            let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            for_each(tasks, &|t| {
                hits[t].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "round {round}");
        }
    }

    /// With more than one thread, helpers really take tasks: slow tasks leave them time to.
    #[test]
    fn helpers_take_tasks() {
        if rayon::current_num_threads() < 2 {
            return; // one thread: no helpers to observe
        }
        let me = std::thread::current().id();
        let others = Mutex::new(HashSet::new());
        for _ in 0..20 {
            for_each(4, &|_| {
                std::thread::sleep(Duration::from_millis(1));
                let id = std::thread::current().id();
                if id != me {
                    lock(&others).insert(id);
                }
            });
        }
        assert!(!lock(&others).is_empty());
    }

    /// Several threads calling at once (one gets the team, the others rayon) and a task that
    /// calls back in: all tasks run once, nothing deadlocks.
    #[test]
    fn concurrent_and_nested_calls_complete() {
        let total = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each(3, &|_| {
                            for_each(2, &|_| {
                                total.fetch_add(1, Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 4 * 200 * 3 * 2);
    }

    /// A panicking task reaches the caller after the other tasks finished, and the team
    /// works afterwards; calls after the helpers went to sleep wake them.
    #[test]
    fn panics_propagate_and_sleepers_wake() {
        let ran = AtomicU32::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each(8, &|t| {
                ran.fetch_add(1, Relaxed);
                if t == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(Relaxed), 8);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            let hits = AtomicU32::new(0);
            for_each(6, &|_| {
                hits.fetch_add(1, Relaxed);
            });
            assert_eq!(hits.load(Relaxed), 6);
        }
    }
}
