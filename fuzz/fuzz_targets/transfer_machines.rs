//! Drives the client and server transfer machines with arbitrary event sequences. Nothing may
//! panic, and neither side may accept an invalid transfer: the checks live in
//! `quicstrap_proto::transfer::script`, shared with a randomized unit test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicstrap_proto::transfer::script;

fuzz_target!(|data: &[u8]| {
    script::run_client(data);
    script::run_server(data);
});
