//! spate-consumer: stream allocation, landing chunks into rings, reader hand-off.
//! See DESIGN.md §1 and §4.
#![forbid(unsafe_code)]
