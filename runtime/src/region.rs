//! Memory the kernel reads and writes: registered regions, buffer arenas carved from them,
//! and spans of foreign memory (e.g. a stream ring's data mapping).
//!
//! Ownership is what makes the driver's API safe: an I/O operation takes a [`FixedBuf`] by
//! value and gives it back in its completion, and every buffer keeps its [`Region`] alive
//! through an `Arc`, so memory the kernel may still touch can never be freed or handed to
//! someone else while an operation is in flight.

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Result, RuntimeError};

/// Memory mapped at a fixed address for as long as the value lives.
///
/// # Safety
/// `ptr()..ptr()+len()` must be mapped readable and writable, never move, and stay mapped
/// until the value is dropped.
pub unsafe trait StableMemory: Send + Sync + 'static {
    /// Start address.
    fn ptr(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the length is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How the memory is backed (hugetlb, THP, 4 KiB pages...), for reports.
    fn describe(&self) -> String;
    /// The shared-memory file whose bytes `0..len()` are exactly this memory, if there is one
    /// (a memfd mapped once from offset 0): a local peer can then read them itself.
    fn file(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

static NEXT_REGION_ID: AtomicU64 = AtomicU64::new(1);

/// A contiguous range of memory that can be registered with io_urings as fixed buffers.
pub struct Region {
    id: u64,
    ptr: NonNull<u8>,
    len: usize,
    mem: Arc<dyn StableMemory>,
}

// SAFETY: `Region` only hands out its pointer; the memory is `StableMemory` (Send + Sync) and
// all access to its bytes goes through `ArenaBuf` (exclusive) or the kernel.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` exposes no interior mutation of the bytes.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("backing", &self.mem.describe())
            .finish()
    }
}

impl Region {
    /// Wrap memory (e.g. an `Arc<spate_ring::shm::Mapping>` of a ring's data) as a region.
    pub fn new(mem: Arc<dyn StableMemory>) -> Result<Arc<Region>> {
        let len = mem.len();
        let ptr = NonNull::new(mem.ptr()).ok_or(RuntimeError::InvalidBuffer("null region"))?;
        if len == 0 {
            return Err(RuntimeError::InvalidBuffer("empty region"));
        }
        Ok(Arc::new(Region {
            id: NEXT_REGION_ID.fetch_add(1, Ordering::Relaxed),
            ptr,
            len,
            mem,
        }))
    }

    /// A region over a writable shared-memory mapping owned elsewhere (e.g. a stream ring's
    /// double-mapped data): fixed-buffer I/O can then land straight in it through [`Span`]s.
    pub fn from_mapping(map: Arc<spate_ring::shm::Mapping>) -> Result<Arc<Region>> {
        if !map.writable() {
            return Err(RuntimeError::InvalidBuffer("mapping is read-only"));
        }
        Region::new(Arc::new(crate::shm::Foreign(map)))
    }

    /// Map a shared-memory file another process lent us for writing (e.g. a consumer's ring
    /// data segment), twice back to back like the ring, so that any range of up to its length
    /// starting inside it is contiguous. Write only inside ranges its owner placed at our
    /// disposal ([`Placed`]).
    pub fn map_lent(fd: &std::os::fd::OwnedFd) -> Result<Arc<Region>> {
        let dup = fd
            .try_clone()
            .map_err(|e| RuntimeError::Shm(format!("duplicating a lent descriptor: {e}")))?;
        let seg = spate_ring::shm::Segment::from_fd(dup)
            .map_err(|e| RuntimeError::Shm(format!("a lent segment: {e}")))?;
        let map = spate_ring::shm::Mapping::map_double(&seg, true)
            .map_err(|e| RuntimeError::Shm(format!("mapping a lent segment: {e}")))?;
        Region::from_mapping(Arc::new(map))
    }

    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (regions are never empty).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Start address (for registration).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    /// The backing, as reported by the memory.
    pub fn describe(&self) -> String {
        self.mem.describe()
    }
    /// A new read-only descriptor of the file behind this region (byte `i` of the file is byte
    /// `i` of the region), to hand to a local peer that copies from it; `None` when the memory
    /// is not a whole file (e.g. a double-mapped ring). Read-only: the peer cannot write it or
    /// map it writable.
    pub fn share_fd(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        use std::os::fd::AsRawFd;
        let Some(fd) = self.mem.file() else {
            return Ok(None);
        };
        // Reopening the memfd through /proc gives a descriptor with its own (read-only) mode;
        // dup would share the read-write one.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|e| RuntimeError::Shm(format!("reopening {path} read-only: {e}")))?;
        Ok(Some(f.into()))
    }
}

/// A span of a region (typically foreign memory: a stream ring's data mapping) that the kernel
/// may read or write. It gives no safe access to the bytes: the owner of that memory (the ring
/// writer) reads them through its own API and is responsible for handing out disjoint spans.
#[derive(Debug, Clone)]
pub struct Span {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl Span {
    /// `range` of `region`; errors if it is out of bounds or empty.
    pub fn new(region: &Arc<Region>, range: Range<usize>) -> Result<Span> {
        if range.start >= range.end || range.end > region.len {
            return Err(RuntimeError::InvalidBuffer("span out of region bounds"));
        }
        Ok(Span {
            region: region.clone(),
            start: range.start,
            len: range.end - range.start,
        })
    }
    /// Offset in the region.
    pub fn start(&self) -> usize {
        self.start
    }
    /// Length.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

/// A range of lent memory placed at our disposal for writing (a zero-copy placement in a
/// consumer's ring): ours alone to write until we say it is written. Keeps its region mapped.
pub struct Placed {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed")
            .field("region", &self.region.id)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl Placed {
    /// `range` of `region`, placed at our disposal.
    ///
    /// # Safety
    /// The owner of the memory must have granted `range` to this process exclusively: no one
    /// else reads or writes those bytes until this value is dropped and the owner is told so
    /// (e.g. a consumer's ring writer granted the range, which lies beyond its in-order
    /// frontier, so its reader does not read it either).
    pub unsafe fn new(region: &Arc<Region>, range: Range<usize>) -> Result<Placed> {
        if range.start >= range.end || range.end > region.len {
            return Err(RuntimeError::InvalidBuffer(
                "placement out of region bounds",
            ));
        }
        Ok(Placed {
            region: region.clone(),
            start: range.start,
            len: range.end - range.start,
        })
    }
    /// Length.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The bytes to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the range lies inside the region (checked in `new`), which stays mapped while
        // we hold it; the owner granted it to us alone (the contract of `new`), and `&mut self`
        // makes this the only reference through us.
        unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr().add(self.start), self.len) }
    }
}

struct ArenaInner {
    region: Arc<Region>,
    buf_size: usize,
    count: usize,
    free: Mutex<Vec<u32>>,
    backing: String,
}

/// A pool of equal-size buffers in one registered region (hugepage shared memory when
/// available). Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Arena(Arc<ArenaInner>);

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("buf_size", &self.0.buf_size)
            .field("count", &self.0.count)
            .field("backing", &self.0.backing)
            .finish()
    }
}

impl Arena {
    /// `count` buffers of `buf_size` bytes in a new shared-memory segment (hugetlb when
    /// reserved, else the ring crate's fallback; the choice is in [`Arena::backing`]).
    pub fn new(name: &str, buf_size: usize, count: usize) -> Result<Arena> {
        Arena::with_backing(name, buf_size, count, spate_ring::shm::BackingPref::Auto)
    }

    /// As [`Arena::new`] with an explicit backing preference.
    pub fn with_backing(
        name: &str,
        buf_size: usize,
        count: usize,
        pref: spate_ring::shm::BackingPref,
    ) -> Result<Arena> {
        let total =
            buf_size
                .checked_mul(count)
                .filter(|t| *t > 0)
                .ok_or(RuntimeError::InvalidBuffer(
                    "arena size is zero or overflows",
                ))?;
        let mem = crate::shm::alloc(name, total, pref)?;
        // The segment may be rounded up to whole hugepages: hand out `count` buffers only.
        Arena::carve(mem, buf_size, count)
    }

    /// Carve `mem` into buffers of `buf_size` bytes (the tail that does not fit is unused).
    pub fn from_memory(mem: Arc<dyn StableMemory>, buf_size: usize) -> Result<Arena> {
        Arena::carve(mem, buf_size, usize::MAX)
    }

    fn carve(mem: Arc<dyn StableMemory>, buf_size: usize, max: usize) -> Result<Arena> {
        if buf_size == 0 || buf_size > mem.len() {
            return Err(RuntimeError::InvalidBuffer(
                "buffer size is zero or exceeds the memory",
            ));
        }
        let count = (mem.len() / buf_size).min(max);
        if count > u32::MAX as usize {
            return Err(RuntimeError::InvalidBuffer("too many buffers in one arena"));
        }
        let backing = mem.describe();
        let region = Region::new(mem)?;
        Ok(Arena(Arc::new(ArenaInner {
            region,
            buf_size,
            count,
            free: Mutex::new((0..count as u32).rev().collect()),
            backing,
        })))
    }

    /// Take a free buffer, or None when all are in use.
    pub fn alloc(&self) -> Option<ArenaBuf> {
        let idx = self.0.free.lock().ok()?.pop()?;
        Some(ArenaBuf {
            arena: self.0.clone(),
            index: idx,
        })
    }
    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.0.buf_size
    }
    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.0.count
    }
    /// Buffers currently free.
    pub fn free_count(&self) -> usize {
        self.0.free.lock().map(|f| f.len()).unwrap_or(0)
    }
    /// The region (register it with a driver up front with `Driver::register`).
    pub fn region(&self) -> &Arc<Region> {
        &self.0.region
    }
    /// How the memory is backed.
    pub fn backing(&self) -> &str {
        &self.0.backing
    }
}

/// One buffer of an [`Arena`], owned exclusively; returns to the arena when dropped.
pub struct ArenaBuf {
    arena: Arc<ArenaInner>,
    index: u32,
}

impl std::fmt::Debug for ArenaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArenaBuf#{}({} bytes)", self.index, self.arena.buf_size)
    }
}

impl ArenaBuf {
    fn offset(&self) -> usize {
        self.index as usize * self.arena.buf_size
    }
    /// Index within the arena.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.arena.buf_size
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range lies inside the region (index < count), the region is alive
        // (we hold the arena), and this buffer is the only owner of the range: the arena hands
        // each index out once until it is returned, and the driver takes buffers by value while
        // the kernel uses them.
        unsafe {
            std::slice::from_raw_parts(
                self.arena.region.as_ptr().add(self.offset()),
                self.arena.buf_size,
            )
        }
    }
    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.region.as_ptr().add(self.offset()),
                self.arena.buf_size,
            )
        }
    }
    /// Make it shareable read-only (e.g. to send the same bytes on several connections).
    pub fn freeze(self) -> FrozenBuf {
        FrozenBuf(Arc::new(self))
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        if let Ok(mut f) = self.arena.free.lock() {
            f.push(self.index);
        }
    }
}

/// A read-only, shareable arena buffer (for writes only).
#[derive(Clone, Debug)]
pub struct FrozenBuf(Arc<ArenaBuf>);

impl FrozenBuf {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }
    /// Get the exclusive buffer back if this is the last handle.
    pub fn try_unfreeze(self) -> std::result::Result<ArenaBuf, FrozenBuf> {
        Arc::try_unwrap(self.0).map_err(FrozenBuf)
    }
}

/// Any buffer a fixed-buffer operation (ReadFixed/WriteFixed) can use. Given to the driver by
/// value, returned in the completion.
#[derive(Debug)]
pub enum FixedBuf {
    /// An exclusive arena buffer (read or write).
    Arena(ArenaBuf),
    /// A shared read-only arena buffer (write only).
    Frozen(FrozenBuf),
    /// A span of foreign memory (read or write).
    Span(Span),
}

impl FixedBuf {
    /// (region, offset of the buffer in it, length, writable by the kernel).
    pub(crate) fn parts(&self) -> (&Arc<Region>, usize, usize, bool) {
        match self {
            FixedBuf::Arena(b) => (&b.arena.region, b.offset(), b.len(), true),
            FixedBuf::Frozen(b) => (&b.0.arena.region, b.0.offset(), b.0.len(), false),
            FixedBuf::Span(s) => (&s.region, s.start, s.len, true),
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.parts().2
    }
    /// Where it starts in its region.
    pub fn offset(&self) -> usize {
        self.parts().1
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The region it lies in.
    pub fn region(&self) -> &Arc<Region> {
        self.parts().0
    }
}

impl From<ArenaBuf> for FixedBuf {
    fn from(b: ArenaBuf) -> Self {
        FixedBuf::Arena(b)
    }
}
impl From<FrozenBuf> for FixedBuf {
    fn from(b: FrozenBuf) -> Self {
        FixedBuf::Frozen(b)
    }
}
impl From<Span> for FixedBuf {
    fn from(s: Span) -> Self {
        FixedBuf::Span(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_hands_out_each_buffer_once() {
        let a = Arena::new("t-arena", 4096, 3).unwrap();
        assert_eq!(a.count(), 3);
        let mut b1 = a.alloc().unwrap();
        let b2 = a.alloc().unwrap();
        let b3 = a.alloc().unwrap();
        assert!(a.alloc().is_none());
        assert_ne!(b1.index(), b2.index());
        assert_ne!(b2.index(), b3.index());
        b1.as_mut_slice().fill(7);
        assert_eq!(b1.as_slice()[4095], 7);
        let f = b1.freeze();
        let f2 = f.clone();
        let f = f.try_unfreeze().unwrap_err();
        drop(f2);
        let b1 = f.try_unfreeze().unwrap();
        drop(b1);
        assert_eq!(a.free_count(), 1);
        assert!(a.alloc().is_some());
    }

    #[test]
    fn span_bounds_are_checked() {
        let a = Arena::new("t-span", 4096, 2).unwrap();
        let r = a.region().clone();
        assert!(r.len() >= 8192);
        assert!(Span::new(&r, 0..r.len()).is_ok());
        assert!(Span::new(&r, 0..r.len() + 1).is_err());
        assert!(Span::new(&r, 5..5).is_err());
    }
}
