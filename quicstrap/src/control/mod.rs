//! The control level: how fast and how much. One token bucket per direction ([`pacing`]),
//! receive and send windows under one memory cap ([`budget`]), and rate limits that move
//! with signals of distress ([`throttle`]), what each store may do ([`stores`]) and what it
//! moved ([`store_counts`]).

pub mod budget;
pub mod pacing;
pub mod store_counts;
pub mod stores;
pub mod throttle;
