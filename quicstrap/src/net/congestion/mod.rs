//! Congestion control: the default controller ([`paced`]), which sends at the rate of a model
//! of the path through quinn's one knob, and quinn's BBR behind a guard against drowning a
//! shared bottleneck ([`guard`]), kept as an alternative.

pub mod guard;
pub mod paced;
pub mod sample;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use guard::{GuardedBbr, GuardedBbrConfig, LossGuard};
pub use paced::{Paced, PacedConfig};
