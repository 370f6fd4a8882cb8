#![no_main]
// The input's handling is shared with the corpus replay test: src/fuzz.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| blip2::fuzz::safetensors(data));
