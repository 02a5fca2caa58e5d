//! `quicstrap demo`: the whole job on embedded defaults, with no flags and no services.
//!
//! Seeds a ~256 MB source partition, starts three peers on loopback like the reference
//! design's diagram — one busy, one serving the other table format, one good — fetches through
//! them in the fetcher's random order until one succeeds, verifies the result key by key against the
//! source, prints what happened, and deletes everything it made.
//!
//! Its source partition comes from the seed generator (`testkit::seed`), which
//! `quicstrap seed`, the tests and the benchmarks use too.

pub mod cli;
mod error;
mod from_kafka;
mod render;
mod run;
mod tail;

pub use render::render;
pub use run::{run, DemoOptions};
