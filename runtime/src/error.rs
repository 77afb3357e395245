//! The runtime's error type.

use std::io;

/// Everything the runtime can fail with. Messages name the problem and, where there is one,
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// io_uring cannot be set up at all on this kernel / in this sandbox.
    #[error(
        "io_uring is not available ({source}): spate needs Linux >= 6.1 with io_uring enabled \
         (check `sysctl kernel.io_uring_disabled` is 0 and no seccomp profile blocks io_uring_setup)"
    )]
    IoUringUnavailable {
        /// The error from io_uring_setup.
        source: io::Error,
    },
    /// The kernel lacks io_uring opcodes spate needs.
    #[error(
        "this kernel's io_uring lacks opcodes spate needs: {}; upgrade to Linux >= 6.1",
        missing.join(", ")
    )]
    MissingOpcodes {
        /// Names of the missing opcodes.
        missing: Vec<&'static str>,
    },
    /// RLIMIT_MEMLOCK is too small for the memory to register and cannot be raised.
    #[error(
        "memlock limit {} is below the {} needed to register buffers{}: raise it with \
         `ulimit -l unlimited` (or a larger value in KiB), LimitMEMLOCK=infinity in the systemd \
         unit, or grant CAP_IPC_LOCK (AmbientCapabilities=CAP_IPC_LOCK)",
        crate::memlock::fmt_limit(*soft), crate::memlock::fmt_bytes(*need),
        if hard < need { format!(" (hard limit {})", crate::memlock::fmt_limit(*hard)) } else { String::new() }
    )]
    Memlock {
        /// Soft limit in bytes (u64::MAX = unlimited).
        soft: u64,
        /// Hard limit in bytes (u64::MAX = unlimited).
        hard: u64,
        /// Bytes needed.
        need: u64,
    },
    /// Registering buffers failed.
    #[error("registering {len} bytes as io_uring fixed buffers failed: {source}{hint}")]
    Register {
        /// Bytes being registered.
        len: usize,
        /// The kernel's error.
        source: io::Error,
        /// A hint on how to fix it (memlock for ENOMEM).
        hint: &'static str,
    },
    /// All fixed-buffer slots of this driver are in use.
    #[error(
        "all {slots} fixed-buffer slots of this io_uring are in use: raise DriverConfig::buffer_slots or release regions"
    )]
    NoBufferSlots {
        /// Number of slots.
        slots: u32,
    },
    /// A fixed-buffer operation does not fit one registered window.
    #[error(
        "fixed-buffer I/O of {len} bytes at region offset {offset} crosses a registration window (max {max} bytes per I/O in regions over 1 GiB)"
    )]
    RangeTooLarge {
        /// Region offset.
        offset: usize,
        /// Length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// A buffer range argument was out of bounds or the buffer kind does not allow the op.
    #[error("invalid buffer for this operation: {0}")]
    InvalidBuffer(&'static str),
    /// Shared memory could not be created or mapped.
    #[error("shared memory: {0}")]
    Shm(String),
    /// Pinning a thread to a core failed.
    #[error(
        "cannot pin thread to core {core}: {reason} (cores this process may use: {available:?})"
    )]
    Pin {
        /// Requested core.
        core: usize,
        /// Why.
        reason: String,
        /// Cores allowed by the process affinity.
        available: Vec<usize>,
    },
    /// A core list in a config could not be parsed.
    #[error("invalid core list {input:?}: {reason} (expected e.g. \"0-3,6\")")]
    CoreList {
        /// The input.
        input: String,
        /// Why.
        reason: String,
    },
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(what: &'static str, source: io::Error) -> Self {
        RuntimeError::Io { what, source }
    }
}

/// Result alias.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
