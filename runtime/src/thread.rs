//! Thread-per-core: threads pinned to configured cores, bounded queues between them, and an
//! eventfd-backed [`Notifier`] that wakes a thread blocked in its io_uring.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::{Result, RuntimeError};

/// The cores this process may run on (its affinity mask). Call it once, before pinning any
/// thread: afterwards it returns the calling thread's (pinned) affinity (FINDINGS 8).
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|v| v.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Parse a core list such as `"0-3,6"` (sorted, deduplicated).
pub fn parse_cores(s: &str) -> Result<Vec<usize>> {
    let err = |reason: &str| RuntimeError::CoreList {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a
            .parse()
            .map_err(|_| err(&format!("{a:?} is not a core number")))?;
        let b: usize = b
            .parse()
            .map_err(|_| err(&format!("{b:?} is not a core number")))?;
        if a > b {
            return Err(err(&format!("range {a}-{b} is reversed")));
        }
        if b - a > 4096 {
            return Err(err("range too large"));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(err("no cores"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The CPU the calling thread runs on now (sched_getcpu).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as usize)
}

/// Pin the calling thread to `core` and check the affinity took.
pub fn pin_current(core: usize) -> Result<()> {
    // The cores allowed before pinning, for the error message (never an empty list when the
    // affinity can be read).
    let allowed = allowed_cores();
    let fail = |reason: &str| RuntimeError::Pin {
        core,
        reason: reason.to_string(),
        available: allowed.clone(),
    };
    if core >= nix::sched::CpuSet::count() {
        return Err(fail("core number beyond the CPU set size"));
    }
    let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if !ok {
        return Err(fail("sched_setaffinity refused"));
    }
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| fail(&format!("sched_getaffinity: {e}")))?;
    let only = (0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect::<Vec<_>>();
    if only != [core] {
        return Err(fail(&format!("affinity is {only:?} after pinning")));
    }
    Ok(())
}

/// The cores the calling thread may run on now (its affinity mask), empty if it cannot be read.
pub fn allowed_cores() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Let the calling thread run on any of `cores` (undoing [`pin_current`]), as an unpinned
/// thread of a plain program would; checks the affinity took.
pub fn allow_cores(cores: &[usize]) -> Result<()> {
    let fail = |reason: &str| RuntimeError::Pin {
        core: cores.first().copied().unwrap_or(0),
        reason: reason.to_string(),
        available: cores.to_vec(),
    };
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        set.set(c)
            .map_err(|e| fail(&format!("core {c} beyond the CPU set size: {e}")))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| fail(&format!("sched_setaffinity: {e}")))?;
    Ok(())
}

/// A thread pinned to one core.
#[derive(Debug)]
pub struct PinnedThread<T> {
    core: usize,
    handle: JoinHandle<Option<T>>,
}

impl<T> PinnedThread<T> {
    /// Its core.
    pub fn core(&self) -> usize {
        self.core
    }
    /// Wait for it; Err if it panicked.
    pub fn join(self) -> std::thread::Result<T> {
        self.handle
            .join()?
            .ok_or_else(|| Box::new("thread was not pinned") as Box<dyn std::any::Any + Send>)
    }
}

/// Spawn a thread named `name` pinned to `core` running `f`. Returns once the thread is pinned
/// (or with the pinning error, naming the cores available).
pub fn spawn_pinned<T, F>(name: &str, core: usize, f: F) -> Result<PinnedThread<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let available = available_cores();
    let (tx, rx) = mpsc::sync_channel::<Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let r = pin_current(core);
            let ok = r.is_ok();
            let _ = tx.send(r);
            // Unpinned, the thread must not run `f`: the spawner reports the error.
            ok.then(f)
        })
        .map_err(|e| RuntimeError::io("spawning a thread", e))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(PinnedThread { core, handle }),
        Ok(Err(RuntimeError::Pin {
            core,
            reason,
            available: seen,
        })) => Err(RuntimeError::Pin {
            core,
            reason,
            available: if available.is_empty() {
                seen
            } else {
                available
            },
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RuntimeError::Pin {
            core,
            reason: "thread died before pinning".into(),
            available,
        }),
    }
}

/// Wakes a thread blocked in its io_uring: it keeps an [`Op::PollIn`](crate::Op::PollIn) on
/// [`Notifier::fd`] in flight. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier(Arc<EventFd>);

impl Notifier {
    /// A new non-blocking eventfd.
    pub fn new() -> Result<Notifier> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| RuntimeError::io("eventfd", e.into()))?;
        Ok(Notifier(Arc::new(fd)))
    }
    /// Wake the owner.
    pub fn notify(&self) {
        // Cannot fail except on counter overflow, which still leaves it readable.
        let _ = self.0.write(1);
    }
    /// Reset after waking (returns how many notifications were pending).
    pub fn drain(&self) -> u64 {
        self.0.read().unwrap_or(0)
    }
    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Sending half of a bounded queue; each send wakes the receiver's [`Notifier`].
#[derive(Debug)]
pub struct QueueTx<T> {
    tx: mpsc::SyncSender<T>,
    notifier: Notifier,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx {
            tx: self.tx.clone(),
            notifier: self.notifier.clone(),
        }
    }
}

/// Receiving half of a bounded queue.
#[derive(Debug)]
pub struct QueueRx<T> {
    rx: mpsc::Receiver<T>,
    notifier: Notifier,
}

/// A bounded queue between threads whose receiver may be blocked in io_uring.
pub fn queue<T>(capacity: usize) -> Result<(QueueTx<T>, QueueRx<T>)> {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let notifier = Notifier::new()?;
    Ok((
        QueueTx {
            tx,
            notifier: notifier.clone(),
        },
        QueueRx { rx, notifier },
    ))
}

impl<T> QueueTx<T> {
    /// Send, blocking while the queue is full. Err(value) if the receiver is gone.
    pub fn send(&self, v: T) -> std::result::Result<(), T> {
        self.tx.send(v).map_err(|e| e.0)?;
        self.notifier.notify();
        Ok(())
    }
    /// Send without blocking. Err(value) if full or the receiver is gone.
    pub fn try_send(&self, v: T) -> std::result::Result<(), T> {
        match self.tx.try_send(v) {
            Ok(()) => {
                self.notifier.notify();
                Ok(())
            }
            Err(mpsc::TrySendError::Full(v)) | Err(mpsc::TrySendError::Disconnected(v)) => Err(v),
        }
    }
}

impl<T> QueueRx<T> {
    /// Take a message if there is one.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
    /// Block until a message arrives (for threads without a ring); None when all senders left.
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }
    /// The notifier to poll in io_uring (then [`Notifier::drain`] and `try_recv` until empty).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_parse() {
        assert_eq!(parse_cores("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cores("1, 0,1").unwrap(), vec![0, 1]);
        assert!(matches!(
            parse_cores("3-1"),
            Err(RuntimeError::CoreList { .. })
        ));
        assert!(matches!(
            parse_cores("x"),
            Err(RuntimeError::CoreList { .. })
        ));
        assert!(matches!(
            parse_cores(""),
            Err(RuntimeError::CoreList { .. })
        ));
    }
}
