//! Whole jobs assembled from the pipeline: one partition bootstrapped from a peer or Kafka
//! ([`bootstrap`]), every partition of a node recovered at once ([`recover`]), and a serving
//! node ([`node`]), what `quicstrap serve` runs.

pub mod bootstrap;
pub mod node;
pub mod recover;
