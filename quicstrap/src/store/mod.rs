//! The storage level: partitions on disk and their offset inside the data ([`partition`]),
//! file digests ([`checksum`]), the filesystem they sit on ([`disk`]), and who owns a
//! directory or a mutex ([`lock`]). Everything
//! above keeps its bytes through these.

pub mod checksum;
pub mod disk;
pub mod lock;
pub mod partition;
