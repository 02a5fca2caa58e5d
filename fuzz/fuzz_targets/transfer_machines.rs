//! Drives the client and server transfer machines, and the fetch machine above them, with
//! arbitrary event sequences. Nothing may panic, neither side may accept an invalid transfer,
//! and the fetch machine may not ask a stranger, resume another peer's files or retry without
//! bound: the checks live in `quicstrap_proto::transfer::script`, shared with a randomized unit
//! test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicstrap_proto::transfer::script;

fuzz_target!(|data: &[u8]| {
    script::run_client(data);
    script::run_server(data);
    script::run_fetch(data);
});
