//! Layout of the control segment: a fixed, versioned header (written once by the writer before
//! hand-off) followed by the shared [`Ctl`] block at [`CTL_OFFSET`].
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic `u64` | `b"SPATERNG"` little-endian |
//! | 8 | version `u32` | [`VERSION`] |
//! | 12 | header length `u32` | [`CONTROL_LEN`] |
//! | 16 | capacity `u64` | data segment length |
//! | 24 | backing `u32` | [`Backing::code`] |
//! | 28 | ctl offset `u32` | [`CTL_OFFSET`] |
//! | 32 | pace rate `u64` | bits/s a constant-rate reader reads at (0: none) |
//! | 40 | prefill `u64` | bytes such a reader waits for before it starts |
//! | 64 | [`Ctl`] | 128 bytes |
//!
//! The pacing fields were added within layout version 1: older writers leave them zero
//! (no pacing), older readers ignore them.

use crate::ctl::Ctl;
use crate::shm::{BASE_PAGE, Backing, Mapping};

/// Magic number at offset 0.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SPATERNG");
/// Layout version this code reads and writes.
pub const VERSION: u32 = 1;
/// Length of the control segment.
pub const CONTROL_LEN: usize = BASE_PAGE;
/// Offset of the shared [`Ctl`] block.
pub const CTL_OFFSET: usize = 64;

/// Offsets of the fixed fields.
pub mod off {
    /// magic
    pub const MAGIC: usize = 0;
    /// version
    pub const VERSION: usize = 8;
    /// header length
    pub const HEADER_LEN: usize = 12;
    /// capacity
    pub const CAPACITY: usize = 16;
    /// backing code
    pub const BACKING: usize = 24;
    /// ctl offset
    pub const CTL: usize = 28;
    /// pace rate (bits/s)
    pub const RATE_BPS: usize = 32;
    /// prefill (bytes)
    pub const PREFILL: usize = 40;
}

/// How the job wants its stream read: at `rate_bps` bits per second, starting once `prefill`
/// bytes are there (the scheduler's plan for a job with a rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pacing {
    /// Bits per second.
    pub rate_bps: u64,
    /// Bytes to wait for before starting.
    pub prefill: u64,
}

/// A control header that cannot be attached, naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The control segment is shorter than a header.
    #[error("control segment too small: {len} bytes, need {CONTROL_LEN}")]
    ControlTooSmall {
        /// Its length.
        len: usize,
    },
    /// Wrong magic.
    #[error(
        "bad magic in ring header: {found:#018x}, expected {MAGIC:#018x} (\"SPATERNG\"): not a spate ring"
    )]
    BadMagic {
        /// What was there.
        found: u64,
    },
    /// Unsupported layout version.
    #[error(
        "unsupported ring layout version {found}, this build reads version {VERSION}: use matching spate versions on writer and reader"
    )]
    BadVersion {
        /// What was there.
        found: u32,
    },
    /// Header length field does not match.
    #[error("bad header length {found}, expected {CONTROL_LEN}")]
    BadHeaderLen {
        /// What was there.
        found: u32,
    },
    /// Ctl offset field does not match.
    #[error("bad control block offset {found}, expected {CTL_OFFSET}")]
    BadCtlOffset {
        /// What was there.
        found: u32,
    },
    /// Capacity disagrees with the data segment.
    #[error("ring capacity {capacity} in header does not match the data segment length {data_len}")]
    CapacityMismatch {
        /// Header capacity.
        capacity: u64,
        /// Actual data segment length.
        data_len: u64,
    },
    /// Unknown backing code.
    #[error("bad backing code {found} in ring header")]
    BadBacking {
        /// What was there.
        found: u32,
    },
}

/// The validated fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// Ring capacity in bytes.
    pub capacity: u64,
    /// Backing the writer obtained.
    pub backing: Backing,
    /// The job's pacing, when it has a rate.
    pub pacing: Option<Pacing>,
}

/// Write the fixed header and a fresh [`Ctl`] into a zeroed control mapping.
pub(crate) fn init(map: &Mapping, capacity: u64, backing: Backing, pacing: Option<Pacing>) {
    debug_assert!(map.len() >= CONTROL_LEN);
    let p = map.as_ptr();
    // SAFETY: the mapping is writable, at least CONTROL_LEN long and page-aligned; every
    // offset is in bounds and naturally aligned; nobody else sees it before hand-off.
    unsafe {
        (p.add(off::VERSION) as *mut u32).write_volatile(VERSION);
        (p.add(off::HEADER_LEN) as *mut u32).write_volatile(CONTROL_LEN as u32);
        (p.add(off::CAPACITY) as *mut u64).write_volatile(capacity);
        (p.add(off::BACKING) as *mut u32).write_volatile(backing.code());
        (p.add(off::CTL) as *mut u32).write_volatile(CTL_OFFSET as u32);
        let pace = pacing.unwrap_or_default();
        (p.add(off::RATE_BPS) as *mut u64).write_volatile(pace.rate_bps);
        (p.add(off::PREFILL) as *mut u64).write_volatile(pace.prefill);
        (p.add(CTL_OFFSET) as *mut Ctl).write(Ctl::new());
        (p.add(off::MAGIC) as *mut u64).write_volatile(MAGIC);
    }
}

/// Read and validate the fixed header of a mapped control segment against the data segment
/// length. Every field is copied out once and checked.
pub(crate) fn read(map: &Mapping, data_len: usize) -> Result<Fixed, HeaderError> {
    if map.len() < CONTROL_LEN {
        return Err(HeaderError::ControlTooSmall { len: map.len() });
    }
    let p = map.as_ptr();
    // SAFETY: offsets are in bounds (checked above) and aligned (page-aligned mapping).
    let (magic, version, hlen, capacity, backing, ctl, rate_bps, prefill) = unsafe {
        (
            (p.add(off::MAGIC) as *const u64).read_volatile(),
            (p.add(off::VERSION) as *const u32).read_volatile(),
            (p.add(off::HEADER_LEN) as *const u32).read_volatile(),
            (p.add(off::CAPACITY) as *const u64).read_volatile(),
            (p.add(off::BACKING) as *const u32).read_volatile(),
            (p.add(off::CTL) as *const u32).read_volatile(),
            (p.add(off::RATE_BPS) as *const u64).read_volatile(),
            (p.add(off::PREFILL) as *const u64).read_volatile(),
        )
    };
    if magic != MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    if version != VERSION {
        return Err(HeaderError::BadVersion { found: version });
    }
    if hlen as usize != CONTROL_LEN {
        return Err(HeaderError::BadHeaderLen { found: hlen });
    }
    if ctl as usize != CTL_OFFSET {
        return Err(HeaderError::BadCtlOffset { found: ctl });
    }
    if capacity != data_len as u64 || capacity == 0 {
        return Err(HeaderError::CapacityMismatch {
            capacity,
            data_len: data_len as u64,
        });
    }
    let backing = Backing::from_code(backing).ok_or(HeaderError::BadBacking { found: backing })?;
    let pacing = (rate_bps > 0).then_some(Pacing { rate_bps, prefill });
    Ok(Fixed {
        capacity,
        backing,
        pacing,
    })
}

/// The shared control block of a mapped, validated control segment.
pub(crate) fn ctl(map: &Mapping) -> &Ctl {
    // SAFETY: the mapping is at least CONTROL_LEN (checked at init/read) and page-aligned, so
    // CTL_OFFSET..+128 is in bounds and 64-aligned; Ctl is only atomics (any bit pattern is a
    // valid value); the reference borrows the mapping, which stays mapped while borrowed.
    unsafe { &*(map.as_ptr().add(CTL_OFFSET) as *const Ctl) }
}
