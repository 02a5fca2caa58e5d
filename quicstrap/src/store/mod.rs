//! The storage level: partitions on disk and their offset inside the data ([`partition`]),
//! file digests ([`checksum`]), and who owns a directory or a mutex ([`lock`]). Everything
//! above keeps its bytes through these.

pub mod checksum;
pub mod lock;
pub mod partition;
