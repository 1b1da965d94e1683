#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenmeter_fuzz_checks::usage(data));
