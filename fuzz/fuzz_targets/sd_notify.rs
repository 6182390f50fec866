//! Fuzz target: `agent_guard::fuzzing::sd_notify` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_guard::fuzzing::sd_notify(data));
