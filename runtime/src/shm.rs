//! Memory for arenas and foreign regions, from `spate_ring::shm` (hugetlb memfd when the pool
//! has room, else the plain-memfd fallback; the backing is reported, never silent).

use std::sync::Arc;

use spate_ring::shm::{BackingPref, Mapping, Segment};

use crate::error::{Result, RuntimeError};
use crate::region::StableMemory;

/// A segment and its single read/write mapping, owned together.
struct ShmMem {
    map: Mapping,
    seg: Segment,
}

// SAFETY: the mapping is read/write (`Mapping::map(.., true)`), stays at `as_ptr()` until
// dropped, and is dropped with this value.
unsafe impl StableMemory for ShmMem {
    fn ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn describe(&self) -> String {
        match self.seg.fallback_reason() {
            Some(r) => format!("{} (fallback: {r})", self.seg.backing()),
            None => self.seg.backing().to_string(),
        }
    }
    fn file(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // Mapped once, from offset 0, over the whole segment (`alloc`).
        Some(self.seg.fd())
    }
}

/// A writable mapping shared with its owner (e.g. a stream ring's data mapping).
pub(crate) struct Foreign(pub(crate) Arc<Mapping>);

// SAFETY: the constructor (`Region::from_mapping`) only accepts writable mappings; the `Arc`
// keeps the mapping (and so the address range) alive as long as this value.
unsafe impl StableMemory for Foreign {
    fn ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn describe(&self) -> String {
        "foreign shared-memory mapping".into()
    }
}

/// Allocate `len` bytes of registrable shared memory, hugepages preferred.
pub fn alloc(name: &str, len: usize, pref: BackingPref) -> Result<Arc<dyn StableMemory>> {
    let seg = Segment::create(name, len, pref).map_err(|e| RuntimeError::Shm(e.to_string()))?;
    let map = Mapping::map(&seg, true).map_err(|e| RuntimeError::Shm(e.to_string()))?;
    Ok(Arc::new(ShmMem { map, seg }))
}
