//! Opcode and setup-flag probe: what this kernel's io_uring offers spate.

use io_uring::{IoUring, opcode};
use std::sync::OnceLock;

use crate::error::{Result, RuntimeError};

/// The opcodes the spate data path submits (name, opcode number).
pub const REQUIRED: &[(&str, u8)] = &[
    ("ACCEPT", opcode::Accept::CODE),
    ("CONNECT", opcode::Connect::CODE),
    ("RECV", opcode::Recv::CODE),
    ("RECVMSG", opcode::RecvMsg::CODE),
    ("SENDMSG", opcode::SendMsg::CODE),
    ("SEND", opcode::Send::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ("TIMEOUT", opcode::Timeout::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("POLL_ADD", opcode::PollAdd::CODE),
];

/// Opcodes spate can use when present (reported, not required).
pub const OPTIONAL: &[(&str, u8)] = &[("SEND_ZC", opcode::SendZc::CODE)];

/// What the kernel offers.
#[derive(Debug, Clone)]
pub struct Features {
    /// `uname -r`.
    pub kernel: String,
    /// Every required and optional opcode with whether it is supported.
    pub opcodes: Vec<(&'static str, bool)>,
    /// IORING_SETUP_SINGLE_ISSUER + DEFER_TASKRUN accepted.
    pub defer_taskrun: bool,
    /// IORING_SETUP_COOP_TASKRUN accepted.
    pub coop_taskrun: bool,
}

impl Features {
    /// Names of required opcodes that are missing.
    pub fn missing(&self) -> Vec<&'static str> {
        missing(|code| {
            REQUIRED
                .iter()
                .chain(OPTIONAL)
                .zip(&self.opcodes)
                .any(|((_, c), (_, ok))| *c == code && *ok)
        })
    }

    /// Error when a required opcode is missing.
    pub fn check(&self) -> Result<()> {
        let m = self.missing();
        if m.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::MissingOpcodes { missing: m })
        }
    }
}

/// Pure: the required opcodes for which `supported` says no.
pub fn missing(supported: impl Fn(u8) -> bool) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .filter(|(_, c)| !supported(*c))
        .map(|(n, _)| *n)
        .collect()
}

/// Kernel release string (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Probe io_uring once (a throwaway ring). Fails only if io_uring cannot be set up at all.
pub fn probe() -> Result<Features> {
    let ring: IoUring =
        IoUring::new(4).map_err(|source| RuntimeError::IoUringUnavailable { source })?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|source| RuntimeError::IoUringUnavailable { source })?;
    let opcodes = REQUIRED
        .iter()
        .chain(OPTIONAL)
        .map(|(n, c)| (*n, p.is_supported(*c)))
        .collect();
    let defer_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)
        .is_ok();
    let coop_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_coop_taskrun()
        .build(4)
        .is_ok();
    Ok(Features {
        kernel: kernel_release(),
        opcodes,
        defer_taskrun,
        coop_taskrun,
    })
}

/// Probe once per process and check the required opcodes; cached after the first success.
pub fn checked() -> Result<&'static Features> {
    static CACHE: OnceLock<Features> = OnceLock::new();
    if let Some(f) = CACHE.get() {
        return Ok(f);
    }
    let f = probe()?;
    f.check()?;
    Ok(CACHE.get_or_init(|| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_exactly_the_unsupported() {
        assert!(missing(|_| true).is_empty());
        let m = missing(|c| c != opcode::ReadFixed::CODE && c != opcode::Accept::CODE);
        assert_eq!(m, vec!["ACCEPT", "READ_FIXED"]);
        let e = RuntimeError::MissingOpcodes { missing: m };
        assert_eq!(
            e.to_string(),
            "this kernel's io_uring lacks opcodes spate needs: ACCEPT, READ_FIXED; upgrade to Linux >= 6.1"
        );
    }

    #[test]
    fn this_kernel_has_everything() {
        let f = probe().unwrap();
        assert_eq!(f.opcodes.len(), REQUIRED.len() + OPTIONAL.len());
        assert!(f.missing().is_empty(), "{:?}", f.missing());
        f.check().unwrap();
        assert!(checked().is_ok());
        assert!(!f.kernel.is_empty());
    }
}
