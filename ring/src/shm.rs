//! Shared-memory segments: a memfd backed by 2 MiB hugetlb pages when the pool has room, else
//! a plain memfd advised for transparent huge pages; and mappings of it (once, or twice back
//! to back so that any range of the segment is one contiguous slice).
//!
//! The backing actually obtained is always reported ([`Segment::backing`]): for the fallback
//! it is read from `/proc/self/smaps` (`ShmemPmdMapped`), because `madvise(MADV_HUGEPAGE)`
//! succeeds even when the kernel then hands out 4 KiB pages (`shmem_enabled=never`).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Size of a hugetlb / PMD page.
pub const HUGE_PAGE: usize = 2 << 20;
/// Size of a base page.
pub const BASE_PAGE: usize = 4 << 10;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// What memory backs a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// 2 MiB pages from the hugetlb pool (`MFD_HUGETLB`).
    HugeTlb,
    /// Plain shmem that the kernel maps with transparent huge pages.
    ShmemThp,
    /// Plain shmem in 4 KiB pages.
    Shmem,
}

impl Backing {
    /// Page size of this backing (the granularity of segment lengths).
    pub fn page_size(self) -> usize {
        match self {
            Backing::HugeTlb => HUGE_PAGE,
            Backing::ShmemThp | Backing::Shmem => BASE_PAGE,
        }
    }

    /// Stable small code (stored in ring headers).
    pub fn code(self) -> u32 {
        match self {
            Backing::HugeTlb => 1,
            Backing::ShmemThp => 2,
            Backing::Shmem => 3,
        }
    }

    /// Inverse of [`Backing::code`].
    pub fn from_code(c: u32) -> Option<Backing> {
        match c {
            1 => Some(Backing::HugeTlb),
            2 => Some(Backing::ShmemThp),
            3 => Some(Backing::Shmem),
            _ => None,
        }
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backing::HugeTlb => "hugetlb-2MiB",
            Backing::ShmemThp => "shmem-thp",
            Backing::Shmem => "shmem-4KiB",
        })
    }
}

/// Which backing to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackingPref {
    /// hugetlb if the pool has room, else the plain-memfd fallback.
    #[default]
    Auto,
    /// hugetlb or an error.
    HugeTlbOnly,
    /// Never hugetlb (plain memfd, THP advised).
    NoHugeTlb,
}

/// Errors of segments and mappings.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The hugetlb pool cannot hold the segment.
    #[error(
        "hugetlb pool too small for {need_pages} pages of 2 MiB ({free_pages} free of {total_pages}): \
         reserve more with `echo {suggest} > /proc/sys/vm/nr_hugepages`, or allow the 4 KiB fallback"
    )]
    HugePoolTooSmall {
        /// Pages the segment needs.
        need_pages: u64,
        /// Free pages in the pool.
        free_pages: u64,
        /// Pool size.
        total_pages: u64,
        /// A pool size that would do.
        suggest: u64,
    },
    /// The kernel has no hugetlb memfd support.
    #[error("hugetlb memfd not supported by this kernel: {0}")]
    HugeTlbUnsupported(io::Error),
    /// A length of zero or one that overflows.
    #[error("invalid segment length {0}: must be > 0 and fit the address space twice")]
    BadLength(usize),
    /// A name with an interior NUL.
    #[error("invalid segment name {0:?}: contains a NUL byte")]
    BadName(String),
    /// A system call failed.
    #[error("{op} failed: {err}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The OS error.
        err: io::Error,
    },
    /// The fd given to `from_fd` is not a usable segment.
    #[error("not a usable shared-memory segment: {0}")]
    NotASegment(String),
}

fn sys(op: &'static str) -> ShmError {
    ShmError::Sys {
        op,
        err: io::Error::last_os_error(),
    }
}

fn round_up(len: usize, page: usize) -> Option<usize> {
    len.checked_add(page - 1).map(|v| v / page * page)
}

/// A shared-memory segment (owns its memfd). Nothing is left in the filesystem: the memory
/// goes when the last fd and mapping are gone.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: usize,
    backing: Backing,
    fallback_reason: Option<String>,
}

impl Segment {
    /// Create a segment of at least `len` bytes (rounded up to the backing's page size; the
    /// fallback rounds to 2 MiB so THP can apply). Zero-filled.
    pub fn create(name: &str, len: usize, pref: BackingPref) -> Result<Segment, ShmError> {
        if len == 0 || len > isize::MAX as usize / 4 {
            return Err(ShmError::BadLength(len));
        }
        let cname = CString::new(name).map_err(|_| ShmError::BadName(name.to_string()))?;
        match pref {
            BackingPref::NoHugeTlb => Self::create_shmem(&cname, len),
            BackingPref::HugeTlbOnly => Self::create_hugetlb(&cname, len),
            BackingPref::Auto => match Self::create_hugetlb(&cname, len) {
                Ok(s) => Ok(s),
                Err(e @ (ShmError::HugePoolTooSmall { .. } | ShmError::HugeTlbUnsupported(_))) => {
                    let mut s = Self::create_shmem(&cname, len)?;
                    s.fallback_reason = Some(e.to_string());
                    Ok(s)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Create a small plain-shmem segment (4 KiB pages, no THP probe), e.g. a control block.
    pub fn create_small(name: &str, len: usize) -> Result<Segment, ShmError> {
        if len == 0 || len > isize::MAX as usize / 4 {
            return Err(ShmError::BadLength(len));
        }
        let cname = CString::new(name).map_err(|_| ShmError::BadName(name.to_string()))?;
        let len = round_up(len, BASE_PAGE).ok_or(ShmError::BadLength(len))?;
        // SAFETY: cname is a valid NUL-terminated string; flags are valid memfd flags.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(sys("memfd_create"));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ftruncate(&fd, len)?;
        Ok(Segment {
            fd,
            len,
            backing: Backing::Shmem,
            fallback_reason: None,
        })
    }

    fn create_hugetlb(name: &CString, len: usize) -> Result<Segment, ShmError> {
        let len = round_up(len, HUGE_PAGE).ok_or(ShmError::BadLength(len))?;
        // SAFETY: name is a valid NUL-terminated string; flags are valid memfd flags.
        let raw = unsafe {
            libc::memfd_create(
                name.as_ptr(),
                libc::MFD_CLOEXEC
                    | libc::MFD_HUGETLB
                    | libc::MFD_HUGE_2MB
                    | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(ShmError::HugeTlbUnsupported(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ftruncate(&fd, len)?;
        seal_size(&fd);
        // The pool is only charged at mmap (FINDINGS pitfall 1): map once to reserve the pages
        // for the file's lifetime (shared hugetlb reservations stay with the inode). Never
        // MAP_NORESERVE. Pages of a process that just exited may come back asynchronously
        // (pitfall 3): retry briefly when the pool is big enough in total.
        let need = (len / HUGE_PAGE) as u64;
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            match raw_map(fd.as_fd(), len, libc::PROT_READ | libc::PROT_WRITE, None) {
                Ok(p) => {
                    // SAFETY: p/len is the mapping just created.
                    unsafe { libc::munmap(p.cast(), len) };
                    return Ok(Segment {
                        fd,
                        len,
                        backing: Backing::HugeTlb,
                        fallback_reason: None,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                    let (total, free) = huge_pool();
                    if total >= need && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    return Err(ShmError::HugePoolTooSmall {
                        need_pages: need,
                        free_pages: free,
                        total_pages: total,
                        suggest: total - free + need,
                    });
                }
                Err(err) => return Err(ShmError::Sys { op: "mmap", err }),
            }
        }
    }

    fn create_shmem(name: &CString, len: usize) -> Result<Segment, ShmError> {
        let len = round_up(len, HUGE_PAGE).ok_or(ShmError::BadLength(len))?;
        // SAFETY: name is a valid NUL-terminated string; flags are valid memfd flags.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(sys("memfd_create"));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ftruncate(&fd, len)?;
        seal_size(&fd);
        let backing = probe_thp(fd.as_fd(), true)?;
        Ok(Segment {
            fd,
            len,
            backing,
            fallback_reason: None,
        })
    }

    /// Adopt a segment fd received from another process (e.g. over SCM_RIGHTS). The length
    /// comes from `fstat`, the backing from `fstatfs` and, for shmem, a probe of `smaps`.
    pub fn from_fd(fd: OwnedFd) -> Result<Segment, ShmError> {
        // SAFETY: zeroed stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a valid pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(sys("fstat"));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ShmError::NotASegment(
                "fd is not a regular file (memfd)".into(),
            ));
        }
        let len = usize::try_from(st.st_size)
            .map_err(|_| ShmError::NotASegment(format!("negative size {}", st.st_size)))?;
        if len == 0 || len % BASE_PAGE != 0 || len > isize::MAX as usize / 4 {
            return Err(ShmError::NotASegment(format!(
                "size {len} is zero, not page-aligned or too large"
            )));
        }
        // SAFETY: zeroed statfs is a valid out-buffer.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; sfs is a valid pointer.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
            return Err(sys("fstatfs"));
        }
        let backing = if sfs.f_type as i64 == HUGETLBFS_MAGIC {
            if len % HUGE_PAGE != 0 {
                return Err(ShmError::NotASegment(format!(
                    "hugetlb size {len} not a multiple of 2 MiB"
                )));
            }
            Backing::HugeTlb
        } else {
            probe_thp(fd.as_fd(), false)?
        };
        Ok(Segment {
            fd,
            len,
            backing,
            fallback_reason: None,
        })
    }

    /// The memfd (dup it to send it elsewhere).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (segments are never empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backing actually obtained.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Why `BackingPref::Auto` fell back from hugetlb (None when it did not).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Whether the segment's size is sealed (it cannot be shrunk or grown through any of its
    /// descriptors).
    pub fn size_sealed(&self) -> bool {
        // SAFETY: fd is open; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GET_SEALS) };
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        seals >= 0 && seals & want == want
    }

    /// Duplicate the fd (close-on-exec) to hand to another process.
    pub fn dup_fd(&self) -> Result<OwnedFd, ShmError> {
        self.fd
            .try_clone()
            .map_err(|err| ShmError::Sys { op: "dup", err })
    }
}

/// Seal the size of a segment (best effort): whoever else gets its descriptor (a reader, or a
/// local producer writing into a ring) cannot shrink it under the mappings (SIGBUS) or grow it.
/// [`Segment::size_sealed`] tells whether it worked.
fn seal_size(fd: &OwnedFd) {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fd is an open memfd; F_ADD_SEALS takes an int argument.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
}

fn ftruncate(fd: &OwnedFd, len: usize) -> Result<(), ShmError> {
    let off = libc::off_t::try_from(len).map_err(|_| ShmError::BadLength(len))?;
    // SAFETY: fd is an open memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), off) } != 0 {
        return Err(sys("ftruncate"));
    }
    Ok(())
}

/// (total, free) pages of the 2 MiB hugetlb pool.
pub fn huge_pool() -> (u64, u64) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{f}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (read("nr_hugepages"), read("free_hugepages"))
}

/// mmap `len` bytes of `fd` at offset 0, optionally at a fixed address.
fn raw_map(
    fd: BorrowedFd<'_>,
    len: usize,
    prot: libc::c_int,
    at: Option<*mut u8>,
) -> io::Result<*mut u8> {
    let (addr, flags) = match at {
        Some(a) => (a.cast(), libc::MAP_SHARED | libc::MAP_FIXED),
        None => (std::ptr::null_mut(), libc::MAP_SHARED),
    };
    // SAFETY: mapping a shared file; with MAP_FIXED the caller owns the target range (it is
    // part of a PROT_NONE reservation of ours).
    let p = unsafe { libc::mmap(addr, len, prot, flags, fd.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Map the segment, advise THP, touch the first huge page and read smaps to see what the
/// kernel really gave (FINDINGS pitfall 2).
fn probe_thp(fd: BorrowedFd<'_>, writable: bool) -> Result<Backing, ShmError> {
    let seg = Segment {
        fd: fd
            .try_clone_to_owned()
            .map_err(|err| ShmError::Sys { op: "dup", err })?,
        len: HUGE_PAGE,
        backing: Backing::Shmem,
        fallback_reason: None,
    };
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd open, st valid.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(sys("fstat"));
    }
    if (st.st_size as u64) < HUGE_PAGE as u64 {
        return Ok(Backing::Shmem);
    }
    let m = Mapping::map_n(&seg, writable, 1)?;
    // SAFETY: m maps HUGE_PAGE bytes; a volatile access faults the first page in.
    unsafe {
        if writable {
            let v = std::ptr::read_volatile(m.as_ptr());
            std::ptr::write_volatile(m.as_ptr(), v);
        } else {
            std::ptr::read_volatile(m.as_ptr());
        }
    }
    let thp = smaps_pmd_mapped(m.as_ptr() as usize).unwrap_or(0) > 0;
    Ok(if thp {
        Backing::ShmemThp
    } else {
        Backing::Shmem
    })
}

/// kB of PMD-mapped shmem/file memory of the mapping starting at `addr` in this process.
pub fn smaps_pmd_mapped(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let head = format!("{addr:x}-");
    let mut inside = false;
    let mut kb = 0u64;
    for line in smaps.lines() {
        let is_header = line.split_whitespace().next().is_some_and(|w| {
            w.contains('-') && w.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
        if is_header {
            if inside {
                break;
            }
            inside = line.starts_with(&head);
            continue;
        }
        if inside && (line.starts_with("ShmemPmdMapped:") || line.starts_with("FilePmdMapped:")) {
            kb += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    inside.then_some(kb)
}

/// A mapping of a segment (once or twice back to back). `munmap` on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    seg_len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; concurrent access discipline
// is the business of whoever hands out slices of it (the ring writer/reader).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the raw pointer and lengths.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the whole segment once.
    pub fn map(seg: &Segment, writable: bool) -> Result<Mapping, ShmError> {
        Self::map_n(seg, writable, 1)
    }

    /// Map the segment twice back to back: `2 * seg.len()` bytes of address space, where byte
    /// `i` and byte `i + seg.len()` are the same memory.
    pub fn map_double(seg: &Segment, writable: bool) -> Result<Mapping, ShmError> {
        Self::map_n(seg, writable, 2)
    }

    fn map_n(seg: &Segment, writable: bool, n: usize) -> Result<Mapping, ShmError> {
        let seg_len = seg.len;
        let len = seg_len.checked_mul(n).ok_or(ShmError::BadLength(seg_len))?;
        // Reserve address space aligned to 2 MiB (needed for hugetlb MAP_FIXED and for PMD
        // mappings of THP shmem), then place the copies inside it.
        let resv_len = len.checked_add(HUGE_PAGE).ok_or(ShmError::BadLength(len))?;
        // SAFETY: anonymous PROT_NONE reservation, no fd.
        let resv = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                resv_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if resv == libc::MAP_FAILED {
            return Err(sys("mmap (reserve address space)"));
        }
        let resv = resv as usize;
        let base = (resv + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
        let head = base - resv;
        let tail = resv_len - head - len;
        // SAFETY: trimming unused parts of our own reservation.
        unsafe {
            if head > 0 {
                libc::munmap(resv as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((base + len) as *mut libc::c_void, tail);
            }
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let m = Mapping {
            ptr: base as *mut u8,
            len,
            seg_len,
            writable,
        };
        for i in 0..n {
            let at = (base + i * seg_len) as *mut u8;
            match raw_map(seg.fd(), seg_len, prot, Some(at)) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOMEM)
                        && seg.backing == Backing::HugeTlb =>
                {
                    let (total, free) = huge_pool();
                    let need = (seg_len / HUGE_PAGE) as u64;
                    return Err(ShmError::HugePoolTooSmall {
                        need_pages: need,
                        free_pages: free,
                        total_pages: total,
                        suggest: total - free + need,
                    });
                }
                Err(err) => return Err(ShmError::Sys { op: "mmap", err }),
            }
        }
        if seg.backing != Backing::HugeTlb {
            // SAFETY: advising our own mapping; failure only means no THP.
            unsafe { libc::madvise(m.ptr.cast(), len, libc::MADV_HUGEPAGE) };
        }
        Ok(m)
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Whole mapped length (twice the segment length for a double mapping).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the underlying segment.
    pub fn segment_len(&self) -> usize {
        self.seg_len
    }

    /// Whether the mapping is writable.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own [ptr, ptr+len); nobody can hold slices past our lifetime (slices
        // handed out borrow the owner of this mapping).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmem_double_mapping_aliases() {
        let seg = Segment::create("t", 3 * BASE_PAGE, BackingPref::NoHugeTlb).unwrap();
        assert_eq!(seg.len() % HUGE_PAGE, 0);
        assert_ne!(seg.backing(), Backing::HugeTlb);
        let m = Mapping::map_double(&seg, true).unwrap();
        assert_eq!(m.len(), 2 * seg.len());
        // SAFETY: both offsets are inside the mapping.
        unsafe {
            *m.as_ptr().add(5) = 0xAB;
            assert_eq!(*m.as_ptr().add(seg.len() + 5), 0xAB);
            *m.as_ptr().add(seg.len() + 7) = 0xCD;
            assert_eq!(*m.as_ptr().add(7), 0xCD);
        }
        let seg2 = Segment::from_fd(seg.dup_fd().unwrap()).unwrap();
        assert_eq!(seg2.len(), seg.len());
        let r = Mapping::map(&seg2, false).unwrap();
        // SAFETY: offset inside.
        assert_eq!(unsafe { *r.as_ptr().add(5) }, 0xAB);
    }

    #[test]
    fn hugetlb_when_reserved() {
        let (total, free) = huge_pool();
        if free < 2 {
            eprintln!("SKIP hugetlb_when_reserved: only {free} of {total} 2 MiB hugepages free");
            return;
        }
        let seg = Segment::create("t", 1, BackingPref::HugeTlbOnly).unwrap();
        assert_eq!(seg.backing(), Backing::HugeTlb);
        assert_eq!(seg.len(), HUGE_PAGE);
        let m = Mapping::map_double(&seg, true).unwrap();
        // SAFETY: offsets inside the double mapping.
        unsafe {
            *m.as_ptr().add(HUGE_PAGE - 1) = 9;
            assert_eq!(*m.as_ptr().add(2 * HUGE_PAGE - 1), 9);
        }
        let seg2 = Segment::from_fd(seg.dup_fd().unwrap()).unwrap();
        assert_eq!(seg2.backing(), Backing::HugeTlb);
    }

    #[test]
    fn hugetlb_pool_too_small_is_named() {
        let (total, free) = huge_pool();
        // Ask for more than the whole pool holds.
        let want = (total as usize + 1) * HUGE_PAGE;
        match Segment::create("t", want, BackingPref::HugeTlbOnly) {
            Err(ShmError::HugePoolTooSmall { need_pages, .. }) => {
                assert_eq!(need_pages, total + 1)
            }
            Err(ShmError::HugeTlbUnsupported(e)) => eprintln!("SKIP: no hugetlb memfd: {e}"),
            other => panic!("expected HugePoolTooSmall ({free} free of {total}), got {other:?}"),
        }
        let s = Segment::create("t", want, BackingPref::Auto).unwrap();
        assert_ne!(s.backing(), Backing::HugeTlb);
        assert!(
            s.fallback_reason()
                .unwrap()
                .contains("hugetlb pool too small")
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(Backing::HugeTlb.to_string(), "hugetlb-2MiB");
        assert_eq!(Backing::ShmemThp.to_string(), "shmem-thp");
        assert_eq!(Backing::Shmem.to_string(), "shmem-4KiB");
    }

    #[test]
    fn zero_len_refused() {
        assert!(matches!(
            Segment::create("t", 0, BackingPref::Auto),
            Err(ShmError::BadLength(0))
        ));
    }
}
