//! Whole jobs assembled from the pipeline: one partition bootstrapped from a peer or Kafka
//! ([`bootstrap`]), every partition of a node recovered at once ([`recover`]), and a serving
//! node ([`node`]), what `quicstrap serve` runs, and how an operator drives it ([`admin`]).

pub mod admin;
pub mod bootstrap;
pub mod node;
pub mod recover;
