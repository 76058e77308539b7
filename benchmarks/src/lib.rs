//! The parts the benchmark binaries share: genrt in-process (`harness`), the HTTP load
//! generator (`load`), the raw llama.cpp baseline (`raw`), latency statistics (`stats`), the
//! ratio plot (`plot`) and the synthetic-model writer (`synth`).

pub mod harness;
pub mod load;
pub mod plot;
pub mod raw;
pub mod stats;
pub mod synth;
