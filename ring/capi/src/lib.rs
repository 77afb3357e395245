//! `libspate`: the C reader library for printer drivers and other programs that read spate
//! streams. It wraps [`spate_ring::handoff::connect`] and the ring [`Reader`]: connect to a
//! consumer's hand-off socket with a stream key, acquire contiguous blocks of the in-order
//! prefix (mapped read-only, no copy), release them, close. Errors leave a message that
//! [`spate_last_error`] returns.
//!
//! The header `include/spate.h` is generated from this file by cbindgen (`cbindgen.toml`);
//! the test `tests/header.rs` fails when the checked-in header is stale
//! (`SPATE_BLESS=1 cargo test -p spate-capi --test header` rewrites it).
//!
//! Threads: a reader may be used from one thread at a time; the last error is per thread.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::time::Duration;

use spate_ring::handoff;
use spate_ring::{Acquired, ReadError, Reader};

/// A block was acquired (`*data`, `*len`, `*offset` are set).
pub const SPATE_OK: c_int = 0;
/// The stream ended: every byte was read (and, for a consumer's ring, the scheduler recorded
/// it).
pub const SPATE_END: c_int = 1;
/// The timeout passed with fewer than `min` bytes available.
pub const SPATE_TIMEOUT: c_int = 2;
/// The writer (the consumer daemon) aborted the stream; the last error says why.
pub const SPATE_ERR_ABORTED: c_int = -1;
/// The writer died before the end of the stream, or after every byte was read but before it
/// confirmed the end (the bytes are whole; the job's outcome is not known here).
pub const SPATE_ERR_WRITER_DEAD: c_int = -2;
/// Bad arguments (null pointers, `min` of 0 or above `max`, releasing more than acquired).
pub const SPATE_ERR_INVALID: c_int = -3;
/// Any other error (cannot connect, unknown key, corrupt ring...).
pub const SPATE_ERR_OTHER: c_int = -4;

/// An attached stream reader (opaque).
pub struct SpateReader {
    reader: Reader,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<String>) {
    let mut m = msg.into();
    m.retain(|c| c != '\0');
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(m).unwrap_or_default());
}

/// The message of the last error on this thread ("" when none): valid until the next call of
/// this library on this thread. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn spate_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Reads a C string argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn arg<'a>(p: *const c_char, what: &str) -> Option<&'a str> {
    if p.is_null() {
        set_error(format!("{what} is NULL"));
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string (the function's contract).
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Some(s),
        Err(_) => {
            set_error(format!("{what} is not UTF-8"));
            None
        }
    }
}

/// Attach to the stream `key` (32 hex digits, as `spate submit` prints it) at the consumer's
/// hand-off socket `socket` (the node's `RUN_DIR/handoff.sock`). Returns NULL on error (see
/// [`spate_last_error`]). Free the reader with [`spate_close`].
///
/// # Safety
/// `socket` and `key` are NULL or NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_connect(
    socket: *const c_char,
    key: *const c_char,
) -> *mut SpateReader {
    // SAFETY: `socket` is NULL or NUL-terminated (this function's contract).
    let socket = unsafe { arg(socket, "socket") };
    // SAFETY: `key` is NULL or NUL-terminated (this function's contract).
    let key = unsafe { arg(key, "key") };
    let (Some(socket), Some(key)) = (socket, key) else {
        return std::ptr::null_mut();
    };
    match handoff::connect(Path::new(socket), key) {
        Ok(reader) => {
            set_error("");
            Box::into_raw(Box::new(SpateReader { reader }))
        }
        Err(e) => {
            set_error(e.to_string());
            std::ptr::null_mut()
        }
    }
}

fn read_error(e: &ReadError) -> c_int {
    set_error(e.to_string());
    match e {
        ReadError::Aborted(_) => SPATE_ERR_ABORTED,
        ReadError::WriterDead { .. } | ReadError::Unconfirmed { .. } => SPATE_ERR_WRITER_DEAD,
        ReadError::BadRequest(_) => SPATE_ERR_INVALID,
        _ => SPATE_ERR_OTHER,
    }
}

/// Acquire at least `min` and at most `max` contiguous bytes of the stream (fewer than `min`
/// only at its end), waiting up to `timeout_ms` milliseconds (negative: as long as the writer
/// lives). On [`SPATE_OK`], `*data` points at `*len` bytes at stream offset `*offset`, valid
/// until the next [`spate_release`], [`spate_acquire`] or [`spate_close`] on this reader;
/// they are mapped read-only. Returns [`SPATE_END`] at the end, [`SPATE_TIMEOUT`], or a
/// negative `SPATE_ERR_*` code. `offset` may be NULL.
///
/// # Safety
/// `r` is NULL or a reader from [`spate_connect`] not yet closed; `data` and `len` are NULL or
/// valid for writes, `offset` too.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_acquire(
    r: *mut SpateReader,
    min: usize,
    max: usize,
    timeout_ms: i64,
    data: *mut *const u8,
    len: *mut usize,
    offset: *mut u64,
) -> c_int {
    if r.is_null() || data.is_null() || len.is_null() {
        set_error("spate_acquire: reader, data and len must not be NULL");
        return SPATE_ERR_INVALID;
    }
    // SAFETY: r comes from spate_connect and is not closed (contract); no other reference to
    // it exists during this call (one thread at a time).
    let reader = unsafe { &mut (*r).reader };
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    match reader.acquire(min, max, timeout) {
        Ok(Acquired::Data(b)) => {
            // SAFETY: data, len (and offset when not NULL) are valid for writes (contract).
            unsafe {
                *data = b.data.as_ptr();
                *len = b.data.len();
                if !offset.is_null() {
                    *offset = b.offset;
                }
            }
            SPATE_OK
        }
        Ok(Acquired::End) => SPATE_END,
        Ok(Acquired::TimedOut) => SPATE_TIMEOUT,
        Err(e) => read_error(&e),
    }
}

/// Release the next `n` bytes (acquired before) back to the writer. Returns [`SPATE_OK`] or a
/// negative `SPATE_ERR_*` code.
///
/// # Safety
/// `r` is NULL or a reader from [`spate_connect`] not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_release(r: *mut SpateReader, n: usize) -> c_int {
    if r.is_null() {
        set_error("spate_release: reader is NULL");
        return SPATE_ERR_INVALID;
    }
    // SAFETY: as in spate_acquire.
    let reader = unsafe { &mut (*r).reader };
    match reader.release(n) {
        Ok(()) => SPATE_OK,
        Err(e) => read_error(&e),
    }
}

/// Bytes read and released so far (the reader's position in the stream).
///
/// # Safety
/// `r` is NULL (returns 0) or a reader from [`spate_connect`] not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_position(r: *const SpateReader) -> u64 {
    if r.is_null() {
        return 0;
    }
    // SAFETY: r is a live reader (contract).
    unsafe { (*r).reader.position() }
}

/// The stream's total length in bytes, or -1 when the writer does not know it yet.
///
/// # Safety
/// `r` is NULL (returns -1) or a reader from [`spate_connect`] not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_total_length(r: *const SpateReader) -> i64 {
    if r.is_null() {
        return -1;
    }
    // SAFETY: r is a live reader (contract).
    unsafe { (*r).reader.total_len() }.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX))
}

/// Detach and free the reader (NULL is ignored). Blocks acquired and not released are
/// released by the detach.
///
/// # Safety
/// `r` is NULL or a reader from [`spate_connect`], closed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spate_close(r: *mut SpateReader) {
    if !r.is_null() {
        // SAFETY: r came from Box::into_raw in spate_connect and is closed once (contract).
        drop(unsafe { Box::from_raw(r) });
    }
}
