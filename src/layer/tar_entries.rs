//! Tar entry table (being written).
