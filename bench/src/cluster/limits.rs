//! Topology limits (filled in by the report work).
