//! Any bytes as a definition file: an error or a definition, never a panic.
#![no_main]

use image_syncer_core::definition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = definition::parse(text, std::path::Path::new("fuzz.yaml"), &["oci"]);
});
