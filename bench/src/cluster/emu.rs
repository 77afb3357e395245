//! The emulated cluster (filled in by the emu work).
