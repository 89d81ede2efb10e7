//! Every byte string through the parser, the response salvager, the datagram handler, the STUN
//! responder and the stream framer, with the invariants of `sixgate::fuzzing::exercise`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sixgate::fuzzing::exercise(data);
});
