//! RLIMIT_MEMLOCK: registered io_uring buffers count against it (unless the process has
//! CAP_IPC_LOCK). [`plan`] decides purely from the limits; [`ensure`] applies the decision.

use crate::error::{Result, RuntimeError};

/// `u64::MAX` stands for "unlimited" (RLIM_INFINITY).
pub const UNLIMITED: u64 = u64::MAX;

/// The process's memlock limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Soft limit (what is enforced).
    pub soft: u64,
    /// Hard limit (how far an unprivileged process may raise the soft limit).
    pub hard: u64,
}

/// What to do about the memlock limit before registering `need` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// CAP_IPC_LOCK: registered memory is not accounted.
    Privileged,
    /// The soft limit already covers the need.
    Enough,
    /// Raise the soft limit to the hard limit, which covers the need.
    RaiseTo(u64),
}

/// Decide, given the limits, the bytes to register and whether we hold CAP_IPC_LOCK.
/// Returns the memlock error (naming the fix) when the need cannot be met.
pub fn plan(limits: Limits, need: u64, cap_ipc_lock: bool) -> Result<Plan> {
    if cap_ipc_lock {
        return Ok(Plan::Privileged);
    }
    if limits.soft >= need {
        return Ok(Plan::Enough);
    }
    if limits.hard >= need {
        return Ok(Plan::RaiseTo(limits.hard));
    }
    Err(RuntimeError::Memlock {
        soft: limits.soft,
        hard: limits.hard,
        need,
    })
}

/// Current limits of this process.
pub fn limits() -> Result<Limits> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map_err(|e| RuntimeError::io("getrlimit(RLIMIT_MEMLOCK)", e.into()))?;
    let conv = |v: u64| {
        if v == libc::RLIM_INFINITY {
            UNLIMITED
        } else {
            v
        }
    };
    Ok(Limits {
        soft: conv(soft),
        hard: conv(hard),
    })
}

/// Whether this process has CAP_IPC_LOCK in its effective set (read from /proc/self/status).
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Make sure `need` bytes can be registered: raise the soft limit to the hard limit when that
/// suffices, or fail with a message that says how to fix it.
pub fn ensure(need: u64) -> Result<Plan> {
    let lim = limits()?;
    let p = plan(lim, need, has_cap_ipc_lock())?;
    if let Plan::RaiseTo(to) = p {
        let to_rlim = if to == UNLIMITED {
            libc::RLIM_INFINITY
        } else {
            to
        };
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            to_rlim,
            lim.hard,
        )
        .map_err(|e| RuntimeError::io("setrlimit(RLIMIT_MEMLOCK)", e.into()))?;
        tracing::info!(to = %fmt_limit(to), "raised memlock soft limit to the hard limit");
    }
    Ok(p)
}

/// Human-readable limit ("unlimited" or bytes).
pub fn fmt_limit(v: u64) -> String {
    if v == UNLIMITED {
        "unlimited".to_string()
    } else {
        fmt_bytes(v)
    }
}

/// Human-readable byte count in KiB/MiB/GiB.
pub fn fmt_bytes(v: u64) -> String {
    const K: u64 = 1024;
    if v >= K * K * K && v.is_multiple_of(K * K * K) {
        format!("{} GiB", v / (K * K * K))
    } else if v >= K * K && v.is_multiple_of(K * K) {
        format!("{} MiB", v / (K * K))
    } else if v >= K && v.is_multiple_of(K) {
        format!("{} KiB", v / K)
    } else {
        format!("{v} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn plan_decides_from_limits() {
        let l = Limits {
            soft: 8 * MIB,
            hard: 8 * MIB,
        };
        assert_eq!(plan(l, 64 * MIB, true).unwrap(), Plan::Privileged);
        assert_eq!(plan(l, 4 * MIB, false).unwrap(), Plan::Enough);
        let l2 = Limits {
            soft: 8 * MIB,
            hard: UNLIMITED,
        };
        assert_eq!(plan(l2, 64 * MIB, false).unwrap(), Plan::RaiseTo(UNLIMITED));
        let l3 = Limits {
            soft: 8 * MIB,
            hard: 128 * MIB,
        };
        assert_eq!(plan(l3, 64 * MIB, false).unwrap(), Plan::RaiseTo(128 * MIB));
    }

    #[test]
    fn insufficient_limit_names_the_fix() {
        let l = Limits {
            soft: 8 * MIB,
            hard: 8 * MIB,
        };
        let e = plan(l, 64 * MIB, false).unwrap_err();
        assert!(
            matches!(e, RuntimeError::Memlock { soft, hard, need } if soft == 8 * MIB && hard == 8 * MIB && need == 64 * MIB)
        );
        let msg = e.to_string();
        assert!(
            msg.contains("memlock limit 8 MiB is below the 64 MiB needed"),
            "{msg}"
        );
        assert!(msg.contains("ulimit -l"), "{msg}");
        assert!(msg.contains("LimitMEMLOCK=infinity"), "{msg}");
        assert!(msg.contains("CAP_IPC_LOCK"), "{msg}");
    }

    #[test]
    fn ensure_on_this_process_succeeds_for_small_need() {
        // 1 MiB fits under the default 8 MiB soft limit (or we are privileged).
        let p = ensure(MIB).unwrap();
        assert!(matches!(
            p,
            Plan::Privileged | Plan::Enough | Plan::RaiseTo(_)
        ));
        let lim = limits().unwrap();
        assert!(lim.soft <= lim.hard);
    }
}
