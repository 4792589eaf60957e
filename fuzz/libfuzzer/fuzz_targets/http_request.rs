#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbs_fuzz::http_request(data));
