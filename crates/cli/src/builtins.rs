//! Links the built-in plugins into the binary so that their `inventory`
//! registrations are present. Referencing each crate is what makes the linker
//! keep it.

use image_syncer_cosign as _;
use image_syncer_immutable as _;
use image_syncer_oci as _;
use image_syncer_oci_layout as _;
use image_syncer_retag as _;
