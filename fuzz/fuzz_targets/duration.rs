//! Fuzz target: `agent_guard::fuzzing::duration` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_guard::fuzzing::duration(data));
