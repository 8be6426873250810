//! Stream metadata and routing (filled in by the next step).
