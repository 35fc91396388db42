//! The configuration loader (`Config::parse`): any text an operator (or a
//! tool writing the file) produces. It must never panic: a bad file is a
//! clear error naming where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = warrant::config::Config::parse(text, "fuzz.toml") {
        assert!(!error.to_string().is_empty());
    }
});
