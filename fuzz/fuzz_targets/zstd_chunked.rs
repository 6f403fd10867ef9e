#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lazyboot::fuzzing::zstd_chunked(data));
