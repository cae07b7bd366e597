//! ordo-benches: criterion micro-benchmarks (`cargo bench -p ordo-benches`). The library
//! is empty; the benchmarks are in `benches/`.
