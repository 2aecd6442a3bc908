//! Any string: parsing a reference never panics, and what parses prints back
//! to a string that parses to the same reference.
#![no_main]

use image_syncer_core::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for transports in [&[][..], &["oci", "dir"][..]] {
        if let Ok(r) = ImageRef::parse_with_transports(s, transports) {
            let again = ImageRef::parse_with_transports(&r.to_string(), transports)
                .expect("a printed reference parses");
            assert_eq!(again, r);
            let _ = (r.repository(), r.repository_name(), r.registry());
        }
    }
    let _ = s.parse::<image_syncer_core::digest::Digest>();
    let _ = s.parse::<image_syncer_core::keyref::KeyRef>();
});
