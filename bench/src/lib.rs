//! Benchmarks live in `benches/` (criterion) and `compare/` (scinterp vs Python baselines, side by side).
