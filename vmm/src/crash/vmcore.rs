//! Host-side vmcore writer (being written).
