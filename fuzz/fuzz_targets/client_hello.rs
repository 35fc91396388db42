//! libFuzzer over `properties::client_hello` (fuzz/properties.rs says what it checks).
#![no_main]

#[allow(dead_code)] // each target uses one of the properties
#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::client_hello(data));
