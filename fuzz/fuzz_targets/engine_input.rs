//! libFuzzer target for the stateful engine: see `sixgate::fuzzing::exercise_engine`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sixgate::fuzzing::exercise_engine(data));
