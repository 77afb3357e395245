//! Why a stream was aborted (a code in the control segment).

use std::fmt;

/// Reason of an abort, stored as a `u32` code in the control header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The job was cancelled by the user or the scheduler.
    Cancelled,
    /// A producer was lost and its chunks could not be redone in time.
    ProducerLost,
    /// The consumer daemon is shutting down.
    ConsumerShutdown,
    /// The writer was dropped without finishing the stream.
    WriterGone,
    /// The reader went away before the end.
    ReaderGone,
    /// The scheduler aborted the job (the abort message says why).
    JobAborted,
    /// Any other code (application defined, >= 100 by convention).
    Other(u32),
}

impl AbortReason {
    /// The stored code.
    pub fn code(self) -> u32 {
        match self {
            AbortReason::Cancelled => 1,
            AbortReason::ProducerLost => 2,
            AbortReason::ConsumerShutdown => 3,
            AbortReason::WriterGone => 4,
            AbortReason::ReaderGone => 5,
            AbortReason::JobAborted => 6,
            AbortReason::Other(c) => c,
        }
    }

    /// Decode a stored code.
    pub fn from_code(c: u32) -> AbortReason {
        match c {
            1 => AbortReason::Cancelled,
            2 => AbortReason::ProducerLost,
            3 => AbortReason::ConsumerShutdown,
            4 => AbortReason::WriterGone,
            5 => AbortReason::ReaderGone,
            6 => AbortReason::JobAborted,
            c => AbortReason::Other(c),
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Cancelled => write!(f, "cancelled"),
            AbortReason::ProducerLost => write!(f, "a producer was lost"),
            AbortReason::ConsumerShutdown => write!(f, "the consumer is shutting down"),
            AbortReason::WriterGone => write!(f, "the writer closed without finishing"),
            AbortReason::ReaderGone => write!(f, "the reader went away"),
            AbortReason::JobAborted => write!(f, "the job was aborted"),
            AbortReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}
