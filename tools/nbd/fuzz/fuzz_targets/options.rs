//! The handshake phase's parsers, both directions: `ordo_nbd::fuzzing::options`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ordo_nbd::fuzzing::options(data);
});
