//! (filled in by this change)
