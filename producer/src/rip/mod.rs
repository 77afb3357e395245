//! The RIP kernel's image pipeline (filled in by this change).
