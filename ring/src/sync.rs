//! Atomics and futex, switched to loom's model under `--cfg loom` so that the writer/reader
//! protocol in [`crate::ctl`] is model-checked as the very code the ring runs.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
mod imp {
    use super::AtomicU32;
    use std::time::Duration;

    /// Block while `*word == expected`, at most `timeout`. Shared (not PRIVATE) futex: the
    /// word lives in memory mapped by several processes. Spurious returns are fine.
    pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: word is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only
        // reads it; tsp is null or points to a live timespec (relative timeout).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                tsp,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
    }

    /// Wake every waiter on `word` (in any process).
    pub(crate) fn futex_wake(word: &AtomicU32) {
        // SAFETY: word is a valid, aligned u32; FUTEX_WAKE does not touch memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            )
        };
    }
}

#[cfg(not(loom))]
pub(crate) use imp::{futex_wait, futex_wake};
