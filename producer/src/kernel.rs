//! Kernels: what a compute task runs. A kernel turns a line range of the job into bytes of every
//! output channel; it knows nothing of the network, of rings or of the scheduler.
//!
//! The producer hands a kernel one [`Output`] per channel, in channel order: the stream the
//! channel's bytes belong to, their offset in that stream, and the buffer to fill (the chunk's
//! registered send buffer). Whatever the chunking, a kernel's output for a line must not depend
//! on which other lines share its chunk: that is what keeps every stream byte-identical to a
//! sequential run.

use std::ops::Range;

use spate_netlib::proto::Value;

/// One channel's share of a chunk.
#[derive(Debug)]
pub struct Output<'a> {
    /// Stream the bytes belong to.
    pub stream: u32,
    /// Offset of `buf[0]` in that stream.
    pub offset: u64,
    /// The bytes to fill: lines × line bytes of this channel.
    pub buf: &'a mut [u8],
}

/// Why a kernel could not be built or could not compute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The job names a kernel this producer does not have.
    #[error("unknown kernel {0:?} (known: pattern, null, rip)")]
    Unknown(String),
    /// A kernel parameter is missing, of the wrong type or out of range.
    #[error("kernel parameter `{name}`: {problem}")]
    Param {
        /// The parameter's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The buffers given to `compute` do not fit the kernel's geometry.
    #[error("chunk buffers do not fit: {0}")]
    Shape(String),
}

/// A compute kernel.
pub trait Kernel: Send + Sync {
    /// The kernel's name as a job spec writes it.
    fn name(&self) -> &'static str;
    /// Compute lines `lines` of every channel into `outs` (one per channel, channel order).
    fn compute(&self, lines: Range<u64>, outs: &mut [Output<'_>]) -> Result<(), KernelError>;
}

/// `pattern`: every stream is the ring's deterministic test pattern under the job's `seed`
/// (parameter, default 0), so any reader can verify it byte for byte (`spate read --verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern seed.
    pub seed: u64,
}

impl Pattern {
    /// Build from the job's parameters: `seed` (a non-negative integer, default 0).
    pub fn from_params(params: &Value) -> Result<Pattern, KernelError> {
        let seed = match params.get("seed") {
            None => 0,
            Some(v) => match v.as_int() {
                Some(s) if s >= 0 => s as u64,
                _ => {
                    return Err(KernelError::Param {
                        name: "seed".into(),
                        problem: "must be a non-negative integer".into(),
                    });
                }
            },
        };
        Ok(Pattern { seed })
    }
}

impl Kernel for Pattern {
    fn name(&self) -> &'static str {
        "pattern"
    }
    fn compute(&self, _lines: Range<u64>, outs: &mut [Output<'_>]) -> Result<(), KernelError> {
        for o in outs.iter_mut() {
            spate_ring::pattern::fill(self.seed, u64::from(o.stream), o.offset, o.buf);
        }
        Ok(())
    }
}

/// `null`: computes nothing and leaves the buffers as they are, to measure communication alone.
/// Its streams carry whatever the send buffers held, so they cannot be verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Null;

impl Kernel for Null {
    fn name(&self) -> &'static str {
        "null"
    }
    fn compute(&self, _lines: Range<u64>, _outs: &mut [Output<'_>]) -> Result<(), KernelError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn table(entries: &[(&str, Value)]) -> Value {
        Value::Table(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn pattern_chunks_equal_one_sequential_fill() {
        let k = Pattern::from_params(&table(&[("seed", Value::Int(42))])).unwrap();
        let line = 1000usize;
        let lines = 37u64;
        let mut whole = vec![0u8; line * lines as usize];
        spate_ring::pattern::fill(42, 3, 0, &mut whole);
        // Compute in uneven chunks and compare.
        let mut got = vec![0u8; whole.len()];
        let mut l0 = 0u64;
        for step in [1u64, 5, 2, 13, 16] {
            let l1 = (l0 + step).min(lines);
            let (a, b) = (l0 as usize * line, l1 as usize * line);
            let mut outs = [Output {
                stream: 3,
                offset: a as u64,
                buf: &mut got[a..b],
            }];
            k.compute(l0..l1, &mut outs).unwrap();
            l0 = l1;
        }
        assert_eq!(l0, lines);
        assert_eq!(got, whole);
    }

    #[test]
    fn pattern_params_are_checked() {
        assert_eq!(
            Pattern::from_params(&Value::default()).unwrap(),
            Pattern { seed: 0 }
        );
        let err = Pattern::from_params(&table(&[("seed", Value::Int(-1))])).unwrap_err();
        assert_eq!(
            err,
            KernelError::Param {
                name: "seed".into(),
                problem: "must be a non-negative integer".into()
            }
        );
        assert!(Pattern::from_params(&table(&[("seed", Value::Str("x".into()))])).is_err());
    }

    #[test]
    fn null_leaves_buffers_untouched() {
        let mut buf = vec![7u8; 64];
        let mut outs = [Output {
            stream: 0,
            offset: 0,
            buf: &mut buf,
        }];
        Null.compute(0..1, &mut outs).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }
}
