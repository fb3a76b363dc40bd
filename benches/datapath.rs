//! Placeholder replaced by the data-path benchmarks.
fn main() {}
