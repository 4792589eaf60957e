#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbs_fuzz::traceparent(data));
