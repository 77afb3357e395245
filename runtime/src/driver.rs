//! The io_uring driver: one ring per thread, typed operations that own their buffers until
//! completion, completions handed back with the caller's tag so the caller dispatches them to
//! their owners, and blocking waits (no busy loop) when idle.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::error::{Result, RuntimeError};
use crate::region::{FixedBuf, Region};

/// The kernel's limit for one registered buffer.
const WINDOW: usize = 1 << 30;
/// Regions over [`WINDOW`] are registered as overlapping 1 GiB windows at this stride, so any
/// I/O of at most `WINDOW - STRIDE` bytes fits inside one window.
const STRIDE: usize = 1 << 29;
/// `IORING_SEND_ZC_REPORT_USAGE` (io-uring's `sys` module is private).
const SEND_ZC_REPORT_USAGE: u16 = 8;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: bit 31 of the notification's result.
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;

/// Bytes registered by all drivers of this process (for the memlock check).
static REGISTERED: AtomicU64 = AtomicU64::new(0);

/// Ring parameters.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Submission queue entries (the completion queue gets twice as many).
    pub entries: u32,
    /// Fixed-buffer table size (slots; a region over 1 GiB takes several).
    pub buffer_slots: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            entries: 256,
            buffer_slots: 64,
        }
    }
}

/// Which setup flags the ring got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingMode {
    /// SINGLE_ISSUER + DEFER_TASKRUN (+ TASKRUN_FLAG).
    DeferTaskrun,
    /// COOP_TASKRUN (+ TASKRUN_FLAG).
    CoopTaskrun,
    /// No special flags.
    Plain,
}

/// Identifies one submitted operation (for [`Op::Cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// An operation. Buffers are moved in and come back in the [`Completion`].
#[derive(Debug)]
pub enum Op {
    /// Accept a connection on a listening socket; the new socket comes back as [`Output::Fd`].
    Accept {
        /// Listening socket.
        fd: RawFd,
    },
    /// Connect a socket.
    Connect {
        /// Socket.
        fd: RawFd,
        /// Peer address.
        addr: socket2::SockAddr,
    },
    /// Receive into the spare capacity of `buf` (its length grows by the bytes received).
    Recv {
        /// Socket.
        fd: RawFd,
        /// Buffer; must have spare capacity.
        buf: Vec<u8>,
        /// recv(2) flags (e.g. `libc::MSG_WAITALL`).
        flags: i32,
    },
    /// Send `buf[at..]`.
    Send {
        /// Socket.
        fd: RawFd,
        /// Bytes.
        buf: Vec<u8>,
        /// Start offset in `buf`.
        at: usize,
    },
    /// Read up to `len` bytes into `buf[at..at+len]` (a registered buffer).
    ReadFixed {
        /// File or socket.
        fd: RawFd,
        /// Destination.
        buf: FixedBuf,
        /// Offset in `buf`.
        at: usize,
        /// Bytes wanted.
        len: usize,
    },
    /// Read up to `len` bytes at file offset `off` of a file (e.g. a peer's shared-memory
    /// segment) into `buf[at..at+len]` (a registered buffer).
    ReadFixedAt {
        /// File.
        fd: RawFd,
        /// Destination.
        buf: FixedBuf,
        /// Offset in `buf`.
        at: usize,
        /// Bytes wanted.
        len: usize,
        /// Offset in the file.
        off: u64,
    },
    /// Receive into the spare capacity of `buf` like [`Op::Recv`], also taking up to `max_fds`
    /// descriptors passed with `SCM_RIGHTS` (UNIX sockets). Completes with [`Output::VecFds`].
    RecvFds {
        /// Socket.
        fd: RawFd,
        /// Buffer; must have spare capacity.
        buf: Vec<u8>,
        /// recvmsg(2) flags (e.g. `libc::MSG_WAITALL`).
        flags: i32,
        /// Most descriptors taken (1..=16); more are closed by the kernel and reported as
        /// truncated.
        max_fds: usize,
    },
    /// Send `buf` with descriptors attached (`SCM_RIGHTS`, UNIX sockets). The descriptors are
    /// closed here once the kernel has taken its own references; the completion gives `buf`
    /// back as [`Output::Vec`].
    SendFds {
        /// Socket.
        fd: RawFd,
        /// Bytes (at least one).
        buf: Vec<u8>,
        /// Descriptors to pass (1..=16).
        fds: Vec<OwnedFd>,
    },
    /// Write up to `len` bytes from `buf[at..at+len]` (a registered buffer).
    WriteFixed {
        /// File or socket.
        fd: RawFd,
        /// Source.
        buf: FixedBuf,
        /// Offset in `buf`.
        at: usize,
        /// Bytes.
        len: usize,
    },
    /// Zero-copy send from a registered buffer (TCP only; see FINDINGS: it loses on loopback).
    /// Completes once the kernel no longer needs the buffer; [`Completion::zc_copied`] says
    /// whether the kernel copied after all.
    SendZc {
        /// Socket.
        fd: RawFd,
        /// Source.
        buf: FixedBuf,
        /// Offset in `buf`.
        at: usize,
        /// Bytes.
        len: usize,
    },
    /// Completes when `fd` is readable (e.g. an eventfd).
    PollIn {
        /// Descriptor.
        fd: RawFd,
    },
    /// Completes after `after` (result `Err(ETIME)` is normal expiry and is mapped to `Ok(0)`).
    Timeout {
        /// Delay.
        after: Duration,
    },
    /// Cancel another operation (which then completes with `ECANCELED`).
    Cancel {
        /// The operation.
        target: OpId,
    },
}

/// What an operation gives back.
#[derive(Debug)]
pub enum Output {
    /// Nothing.
    None,
    /// The `Vec` of a Recv/Send.
    Vec(Vec<u8>),
    /// The buffer of a fixed-buffer operation.
    Fixed(FixedBuf),
    /// The accepted socket.
    Fd(OwnedFd),
    /// The buffer of a [`Op::RecvFds`], the descriptors that came with it, and whether some
    /// were cut off (`MSG_CTRUNC`: the sender passed more than `max_fds`).
    VecFds(Vec<u8>, Vec<OwnedFd>, bool),
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission (the owner uses it to dispatch).
    pub tag: u64,
    /// The operation.
    pub id: OpId,
    /// Bytes transferred (or the op's non-negative result), or the error.
    pub result: io::Result<u32>,
    /// Resources handed back.
    pub output: Output,
    /// For SendZc: whether the kernel copied the data anyway.
    pub zc_copied: Option<bool>,
}

#[derive(Debug)]
enum Held {
    None,
    Vec(Vec<u8>),
    Fixed(FixedBuf),
    Addr(#[allow(dead_code)] Box<socket2::SockAddr>),
    Time(#[allow(dead_code)] Box<Timespec>),
    Msg(Box<MsgState>),
    MsgOut(Box<MsgState>, #[allow(dead_code)] Vec<OwnedFd>),
}

/// The msghdr of a [`Op::RecvFds`] with everything it points to, boxed so that the addresses
/// the kernel holds stay put until the completion.
struct MsgState {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// Control buffer, u64 words so it is aligned for `cmsghdr`.
    ctrl: Vec<u64>,
    buf: Vec<u8>,
}

// SAFETY: the raw pointers in `hdr`/`iov` point only into this value's own heap buffers
// (`ctrl`, `buf`, and the boxed `iov` itself), which move with it; nothing else aliases them.
unsafe impl Send for MsgState {}

impl std::fmt::Debug for MsgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgState")
            .field("buf", &self.buf.len())
            .finish()
    }
}

impl MsgState {
    /// A msghdr over `buf[len..len+iov_len]` (set by the caller) with room for `nfds`
    /// descriptors of control data.
    fn boxed(buf: Vec<u8>, nfds: usize) -> Box<MsgState> {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((nfds * size_of::<RawFd>()) as u32) } as usize;
        let mut m = Box::new(MsgState {
            // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            ctrl: vec![0u64; space.div_ceil(8)],
            buf,
        });
        m.hdr.msg_iov = &mut m.iov;
        m.hdr.msg_iovlen = 1;
        m.hdr.msg_control = m.ctrl.as_mut_ptr().cast();
        m.hdr.msg_controllen = space;
        m
    }

    /// The bytes received and the descriptors taken, after a completion with `res` bytes.
    fn finish(&mut self, res: i32) -> Output {
        let mut fds = Vec::new();
        if res >= 0 {
            // SAFETY: the kernel initialised `res` bytes of the spare capacity (res <= the
            // length we passed in the iovec).
            unsafe { self.buf.set_len(self.buf.len() + res as usize) };
            // SAFETY: `hdr` was filled in by the kernel: `msg_control`/`msg_controllen` describe
            // our `ctrl` buffer, and the CMSG_* macros walk only inside it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&self.hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(c).cast::<RawFd>();
                        let head = libc::CMSG_LEN(0) as usize;
                        let n = ((*c).cmsg_len as usize).saturating_sub(head)
                            / std::mem::size_of::<RawFd>();
                        for i in 0..n {
                            // SAFETY: SCM_RIGHTS hands us new descriptors that we now own.
                            fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                        }
                    }
                    c = libc::CMSG_NXTHDR(&self.hdr, c);
                }
            }
        }
        let truncated = self.hdr.msg_flags & libc::MSG_CTRUNC != 0;
        Output::VecFds(std::mem::take(&mut self.buf), fds, truncated)
    }
}

#[derive(Debug)]
struct InFlight {
    tag: u64,
    held: Held,
    kind: Kind,
    /// SendZc: result of the first CQE while waiting for the notification.
    zc_result: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Accept,
    Recv,
    Timeout,
    SendZc,
    Other,
}

struct Registration {
    region: Arc<Region>,
    /// Slot of window k.
    slots: Vec<u16>,
}

/// One io_uring, owned by one thread.
pub struct Driver {
    ring: IoUring,
    mode: RingMode,
    ops: Vec<Option<InFlight>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    inflight: usize,
    regs: HashMap<u64, Registration>,
    free_slots: Vec<u16>,
    slots: u32,
    cqes: Vec<(u64, i32, u32)>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("mode", &self.mode)
            .field("inflight", &self.inflight)
            .field("regions", &self.regs.len())
            .finish()
    }
}

fn windows(len: usize) -> usize {
    if len <= WINDOW {
        1
    } else {
        (len - WINDOW).div_ceil(STRIDE) + 1
    }
}

impl Driver {
    /// A ring for the calling thread: probes the kernel once (missing opcodes are an error),
    /// then sets up with SINGLE_ISSUER + DEFER_TASKRUN, falling back to COOP_TASKRUN, then plain.
    pub fn new(cfg: &DriverConfig) -> Result<Driver> {
        crate::probe::checked()?;
        let entries = cfg.entries.max(8);
        let build = |mode: RingMode| {
            let mut b = IoUring::<squeue::Entry, cqueue::Entry>::builder();
            b.setup_cqsize(entries * 2);
            match mode {
                RingMode::DeferTaskrun => {
                    b.setup_single_issuer()
                        .setup_defer_taskrun()
                        .setup_taskrun_flag();
                }
                RingMode::CoopTaskrun => {
                    b.setup_coop_taskrun().setup_taskrun_flag();
                }
                RingMode::Plain => {}
            }
            b.build(entries)
        };
        let mut last = None;
        let mut got = None;
        for mode in [
            RingMode::DeferTaskrun,
            RingMode::CoopTaskrun,
            RingMode::Plain,
        ] {
            match build(mode) {
                Ok(r) => {
                    got = Some((r, mode));
                    break;
                }
                Err(e) => {
                    tracing::debug!(?mode, error = %e, "io_uring setup flags refused, falling back");
                    last = Some(e);
                }
            }
        }
        let Some((ring, mode)) = got else {
            return Err(RuntimeError::IoUringUnavailable {
                source: last.unwrap_or_else(|| io::Error::other("no setup mode worked")),
            });
        };
        let slots = cfg.buffer_slots.clamp(1, u16::MAX as u32);
        ring.submitter()
            .register_buffers_sparse(slots)
            .map_err(|e| RuntimeError::io("registering the fixed-buffer table", e))?;
        Ok(Driver {
            ring,
            mode,
            ops: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            regs: HashMap::new(),
            free_slots: (0..slots as u16).rev().collect(),
            slots,
            cqes: Vec::with_capacity(64),
        })
    }

    /// Setup flags in effect.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// Operations submitted and not yet completed.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Register `region` as fixed buffers (idempotent). Buffers of unregistered regions are
    /// registered automatically on first use; call this up front to fail early.
    pub fn register(&mut self, region: &Arc<Region>) -> Result<()> {
        if self.regs.contains_key(&region.id()) {
            return Ok(());
        }
        let n = windows(region.len());
        if self.free_slots.len() < n {
            return Err(RuntimeError::NoBufferSlots { slots: self.slots });
        }
        let len = region.len();
        let total = REGISTERED.load(Ordering::Relaxed) + len as u64;
        crate::memlock::ensure(total)?;
        let mut slots = Vec::with_capacity(n);
        for k in 0..n {
            let start = k * STRIDE;
            let wlen = (len - start).min(WINDOW);
            let slot = self.free_slots.pop().unwrap_or(0);
            let iov = libc::iovec {
                // SAFETY: start < len, inside the region.
                iov_base: unsafe { region.as_ptr().add(start) }.cast(),
                iov_len: wlen,
            };
            // SAFETY: the iovec lies in `region`, which stays mapped while we hold the Arc in
            // `self.regs`; we keep it until the slot is cleared (unregister / Drop).
            let r = unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(slot as u32, &[iov], None)
            };
            if let Err(e) = r {
                self.free_slots.push(slot);
                for s in slots {
                    self.clear_slot(s);
                }
                let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                    ": the memlock limit is probably too small: raise it with `ulimit -l \
                     unlimited`, LimitMEMLOCK=infinity, or CAP_IPC_LOCK"
                } else {
                    ""
                };
                return Err(RuntimeError::Register {
                    len: wlen,
                    source: e,
                    hint,
                });
            }
            slots.push(slot);
        }
        REGISTERED.fetch_add(len as u64, Ordering::Relaxed);
        self.regs.insert(
            region.id(),
            Registration {
                region: region.clone(),
                slots,
            },
        );
        Ok(())
    }

    fn clear_slot(&mut self, slot: u16) {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: a null iovec clears the slot; nothing is pinned by it.
        let r = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot as u32, &[iov], None)
        };
        if let Err(e) = r {
            tracing::warn!(slot, error = %e, "clearing a fixed-buffer slot failed");
        }
        self.free_slots.push(slot);
    }

    /// Unregister a region (in-flight operations on it still complete safely: they hold it).
    pub fn unregister(&mut self, region: &Region) {
        if let Some(reg) = self.regs.remove(&region.id()) {
            for s in reg.slots {
                self.clear_slot(s);
            }
            REGISTERED.fetch_sub(reg.region.len() as u64, Ordering::Relaxed);
        }
    }

    /// Unregister every region nobody else holds any more; returns how many.
    pub fn release_unused(&mut self) -> usize {
        let unused: Vec<Arc<Region>> = self
            .regs
            .values()
            .filter(|r| Arc::strong_count(&r.region) == 1)
            .map(|r| r.region.clone())
            .collect();
        for r in &unused {
            self.unregister(r);
        }
        unused.len()
    }

    /// Regions currently registered.
    pub fn registered(&self) -> usize {
        self.regs.len()
    }

    fn fixed_addr(
        &mut self,
        buf: &FixedBuf,
        at: usize,
        len: usize,
        write_to_mem: bool,
    ) -> Result<(*mut u8, u16)> {
        let (region, off, blen, writable) = buf.parts();
        if write_to_mem && !writable {
            return Err(RuntimeError::InvalidBuffer(
                "a frozen (shared, read-only) buffer cannot be read into",
            ));
        }
        if len == 0 || len > u32::MAX as usize || at.checked_add(len).is_none_or(|e| e > blen) {
            return Err(RuntimeError::InvalidBuffer(
                "range is empty or outside the buffer",
            ));
        }
        let region = region.clone();
        self.register(&region)?;
        let roff = off + at;
        let k = if region.len() <= WINDOW {
            0
        } else {
            roff / STRIDE
        };
        let wend = (k * STRIDE + WINDOW).min(region.len());
        if roff + len > wend {
            return Err(RuntimeError::RangeTooLarge {
                offset: roff,
                len,
                max: WINDOW - STRIDE,
            });
        }
        let slot = self
            .regs
            .get(&region.id())
            .and_then(|r| r.slots.get(k).copied())
            .ok_or(RuntimeError::InvalidBuffer("region not registered"))?;
        // SAFETY: roff < region.len() (checked above), so the pointer stays in the region.
        Ok((unsafe { region.as_ptr().add(roff) }, slot))
    }

    /// Queue `op` under `tag`. The operation reaches the kernel at the next
    /// [`Driver::submit`]/[`Driver::wait`]. Returns its id (for cancelling).
    pub fn push(&mut self, tag: u64, op: Op) -> Result<OpId> {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                self.gens.push(0);
                (self.ops.len() - 1) as u32
            }
        };
        self.gens[idx as usize] = self.gens[idx as usize].wrapping_add(1);
        let ud = ((self.gens[idx as usize] as u64) << 32) | idx as u64;
        match self.build(ud, op) {
            Ok((entry, held, kind)) => {
                self.ops[idx as usize] = Some(InFlight {
                    tag,
                    held,
                    kind,
                    zc_result: None,
                });
                self.inflight += 1;
                if let Err(e) = self.push_entry(&entry) {
                    self.ops[idx as usize] = None;
                    self.inflight -= 1;
                    self.free.push(idx);
                    return Err(e);
                }
                Ok(OpId(ud))
            }
            Err(e) => {
                self.free.push(idx);
                Err(e)
            }
        }
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> Result<()> {
        for _ in 0..2 {
            // SAFETY: every pointer in `entry` refers to memory held in `self.ops` (owned
            // buffers, boxed addresses/timespecs) or a registered region held by `self.regs`
            // and the op, all of which outlive the operation (we only drop them on completion,
            // or leak them if the ring is torn down with operations still pending).
            let pushed = unsafe { self.ring.submission().push(entry).is_ok() };
            if pushed {
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| RuntimeError::io("io_uring submit", e))?;
        }
        Err(RuntimeError::io(
            "io_uring submission queue full",
            io::Error::from_raw_os_error(libc::EBUSY),
        ))
    }

    fn build(&mut self, ud: u64, op: Op) -> Result<(squeue::Entry, Held, Kind)> {
        Ok(match op {
            Op::Accept { fd } => (
                opcode::Accept::new(Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(ud),
                Held::None,
                Kind::Accept,
            ),
            Op::Connect { fd, addr } => {
                let addr = Box::new(addr);
                let e = opcode::Connect::new(Fd(fd), addr.as_ptr().cast(), addr.len())
                    .build()
                    .user_data(ud);
                (e, Held::Addr(addr), Kind::Other)
            }
            Op::Recv { fd, mut buf, flags } => {
                let spare = buf.capacity() - buf.len();
                if spare == 0 {
                    return Err(RuntimeError::InvalidBuffer(
                        "Recv buffer has no spare capacity",
                    ));
                }
                let spare = spare.min(u32::MAX as usize);
                // SAFETY: len <= capacity, so this points into (or one past) the allocation.
                let p = unsafe { buf.as_mut_ptr().add(buf.len()) };
                let e = opcode::Recv::new(Fd(fd), p, spare as u32)
                    .flags(flags)
                    .build()
                    .user_data(ud);
                (e, Held::Vec(buf), Kind::Recv)
            }
            Op::Send { fd, buf, at } => {
                if at >= buf.len() {
                    return Err(RuntimeError::InvalidBuffer("Send range is empty"));
                }
                let n = (buf.len() - at).min(u32::MAX as usize);
                // SAFETY: at < len.
                let p = unsafe { buf.as_ptr().add(at) };
                let e = opcode::Send::new(Fd(fd), p, n as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ud);
                (e, Held::Vec(buf), Kind::Other)
            }
            Op::ReadFixed { fd, buf, at, len } => {
                let (p, slot) = self.fixed_addr(&buf, at, len, true)?;
                // Offset 0: sockets refuse any other offset with ESPIPE (FINDINGS 5).
                let e = opcode::ReadFixed::new(Fd(fd), p, len as u32, slot)
                    .offset(0)
                    .build()
                    .user_data(ud);
                (e, Held::Fixed(buf), Kind::Other)
            }
            Op::ReadFixedAt {
                fd,
                buf,
                at,
                len,
                off,
            } => {
                let (p, slot) = self.fixed_addr(&buf, at, len, true)?;
                let e = opcode::ReadFixed::new(Fd(fd), p, len as u32, slot)
                    .offset(off)
                    .build()
                    .user_data(ud);
                (e, Held::Fixed(buf), Kind::Other)
            }
            Op::RecvFds {
                fd,
                buf,
                flags,
                max_fds,
            } => {
                let spare = buf.capacity() - buf.len();
                if spare == 0 {
                    return Err(RuntimeError::InvalidBuffer(
                        "RecvFds buffer has no spare capacity",
                    ));
                }
                if max_fds == 0 || max_fds > 16 {
                    return Err(RuntimeError::InvalidBuffer(
                        "RecvFds takes 1..=16 descriptors",
                    ));
                }
                let mut m = MsgState::boxed(buf, max_fds);
                let len = m.buf.len();
                // SAFETY: len <= capacity, so this points into (or one past) the allocation.
                m.iov.iov_base = unsafe { m.buf.as_mut_ptr().add(len) }.cast();
                m.iov.iov_len = spare.min(u32::MAX as usize);
                let e = opcode::RecvMsg::new(Fd(fd), &mut m.hdr)
                    .flags(flags as u32)
                    .build()
                    .user_data(ud);
                (e, Held::Msg(m), Kind::Recv)
            }
            Op::SendFds { fd, buf, fds } => {
                if buf.is_empty() || fds.is_empty() || fds.len() > 16 {
                    return Err(RuntimeError::InvalidBuffer(
                        "SendFds takes at least one byte and 1..=16 descriptors",
                    ));
                }
                let mut m = MsgState::boxed(buf, fds.len());
                m.iov.iov_base = m.buf.as_mut_ptr().cast();
                m.iov.iov_len = m.buf.len().min(u32::MAX as usize);
                // SAFETY: `boxed` sized the control buffer for exactly `fds.len()` descriptors,
                // so the first header and its data lie inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&m.hdr);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as u32) as _;
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for (i, f) in fds.iter().enumerate() {
                        data.add(i).write_unaligned(f.as_raw_fd());
                    }
                }
                let e = opcode::SendMsg::new(Fd(fd), &m.hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(ud);
                (e, Held::MsgOut(m, fds), Kind::Other)
            }
            Op::WriteFixed { fd, buf, at, len } => {
                let (p, slot) = self.fixed_addr(&buf, at, len, false)?;
                let e = opcode::WriteFixed::new(Fd(fd), p, len as u32, slot)
                    .offset(0)
                    .build()
                    .user_data(ud);
                (e, Held::Fixed(buf), Kind::Other)
            }
            Op::SendZc { fd, buf, at, len } => {
                let (p, slot) = self.fixed_addr(&buf, at, len, false)?;
                let e = opcode::SendZc::new(Fd(fd), p, len as u32)
                    .buf_index(Some(slot))
                    .flags(libc::MSG_NOSIGNAL)
                    .zc_flags(SEND_ZC_REPORT_USAGE)
                    .build()
                    .user_data(ud);
                (e, Held::Fixed(buf), Kind::SendZc)
            }
            Op::PollIn { fd } => (
                opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(ud),
                Held::None,
                Kind::Other,
            ),
            Op::Timeout { after } => {
                let ts = Box::new(Timespec::from(after));
                let e = opcode::Timeout::new(&*ts as *const Timespec)
                    .build()
                    .user_data(ud);
                (e, Held::Time(ts), Kind::Timeout)
            }
            Op::Cancel { target } => (
                opcode::AsyncCancel2::new(CancelBuilder::user_data(target.0))
                    .build()
                    .user_data(ud),
                Held::None,
                Kind::Other,
            ),
        })
    }

    /// Hand queued operations to the kernel without waiting.
    pub fn submit(&mut self) -> Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(RuntimeError::io("io_uring submit", e)),
        }
    }

    /// Submit queued operations and collect completions into `out`. Blocks (in the kernel,
    /// no busy loop) until at least one completion arrives or `timeout` passes; `None` waits
    /// indefinitely, `Some(ZERO)` only polls. Returns the number of completions appended.
    /// Returns 0 at once if nothing is in flight and `timeout` is None.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> Result<usize> {
        let n = self.reap(out);
        if n > 0 || self.inflight == 0 && timeout.is_none() {
            self.submit()?;
            return Ok(n + self.reap(out));
        }
        let r = match timeout {
            Some(t) if t.is_zero() => self.ring.submit_and_wait(0),
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(RuntimeError::io("io_uring wait", e)),
        }
        Ok(self.reap(out))
    }

    /// Run `wait` until `done` returns true or `deadline` passes, feeding completions to `f`.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(&mut Driver, Completion),
        mut done: impl FnMut() -> bool,
    ) -> Result<bool> {
        let mut buf = Vec::new();
        while !done() {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.wait(Some(deadline - now), &mut buf)?;
            for c in buf.drain(..) {
                f(self, c);
            }
        }
        Ok(true)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.cqes.clear();
        for cqe in self.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        let mut n = 0;
        for i in 0..self.cqes.len() {
            let (ud, res, flags) = self.cqes[i];
            if ud == u64::MAX {
                continue; // the teardown's cancel-all
            }
            let idx = (ud & 0xffff_ffff) as usize;
            let gen_ok = self.gens.get(idx).copied() == Some((ud >> 32) as u32);
            let Some(Some(op)) = self.ops.get_mut(idx).filter(|_| gen_ok) else {
                tracing::warn!(ud, "completion for an unknown operation");
                continue;
            };
            let mut res = res;
            let mut zc_copied = None;
            if op.kind == Kind::SendZc {
                if cqueue::more(flags) {
                    // The send's result; the buffer is still in use until the notification.
                    op.zc_result = Some(res);
                    continue;
                }
                if cqueue::notif(flags) {
                    zc_copied = Some(res & NOTIF_USAGE_ZC_COPIED != 0);
                    res = op.zc_result.unwrap_or(res);
                }
            }
            let Some(op) = self.ops[idx].take() else {
                continue;
            };
            self.free.push(idx as u32);
            self.inflight -= 1;
            n += 1;
            let result = if res >= 0 {
                Ok(res as u32)
            } else if op.kind == Kind::Timeout && res == -libc::ETIME {
                Ok(0)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            let output = match op.held {
                Held::Vec(mut v) => {
                    if op.kind == Kind::Recv && res > 0 {
                        // SAFETY: the kernel initialised `res` bytes of the spare capacity
                        // (res <= the spare length we passed).
                        unsafe { v.set_len(v.len() + res as usize) };
                    }
                    Output::Vec(v)
                }
                Held::Fixed(b) => Output::Fixed(b),
                Held::Msg(mut m) => m.finish(res),
                Held::MsgOut(mut m, _fds) => Output::Vec(std::mem::take(&mut m.buf)),
                Held::None if op.kind == Kind::Accept && res >= 0 => {
                    // SAFETY: a successful accept returns a new descriptor that we now own.
                    Output::Fd(unsafe { OwnedFd::from_raw_fd(res) })
                }
                _ => Output::None,
            };
            out.push(Completion {
                tag: op.tag,
                id: OpId(ud),
                result,
                output,
                zc_copied,
            });
        }
        n
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.inflight > 0 {
            let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(u64::MAX);
            // SAFETY: a cancel entry carries no pointers.
            let _ = unsafe { self.ring.submission().push(&cancel) };
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut sink = Vec::new();
            while self.inflight > 0 && Instant::now() < deadline {
                if self
                    .wait(Some(Duration::from_millis(50)), &mut sink)
                    .is_err()
                {
                    break;
                }
                sink.clear();
            }
            if self.inflight > 0 {
                // The kernel may still use these buffers: leak them rather than free them.
                tracing::error!(
                    inflight = self.inflight,
                    "io_uring torn down with operations pending; leaking their buffers"
                );
                std::mem::forget(std::mem::take(&mut self.ops));
            }
        }
        // FINDINGS 3: unregister before the ring goes, so pinned pages return synchronously.
        if !self.regs.is_empty() {
            if let Err(e) = self.ring.submitter().unregister_buffers() {
                tracing::warn!(error = %e, "unregister_buffers failed");
            }
            for r in self.regs.values() {
                REGISTERED.fetch_sub(r.region.len() as u64, Ordering::Relaxed);
            }
        } else {
            let _ = self.ring.submitter().unregister_buffers();
        }
    }
}
