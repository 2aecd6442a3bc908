//! A plugin that is wrong on purpose; each feature picks one way. The loader
//! must refuse each before calling anything (the register function aborts the
//! process if it is reached in a version-mismatch build).

use image_syncer_plugin::core::catalogue::{BuildError, ConfigValue};
use image_syncer_plugin::core::context::{GuardContext, SourceContext};
use image_syncer_plugin::core::manifest::{Descriptor, RawManifest};
use image_syncer_plugin::core::reference::ImageRef;
use image_syncer_plugin::core::stage::{GuardInput, StageError, Verdict};
use image_syncer_plugin::{
    BlockingGuard, BlockingSource, PluginFactory, Registrar, StageDeclaration,
};
#[cfg(not(feature = "no-declaration"))]
use image_syncer_plugin::{PluginDeclaration, ABI_VERSION, CORE_VERSION_NUL, RUSTC_VERSION_NUL};

struct Pass;

impl BlockingGuard for Pass {
    fn check(&self, _input: GuardInput<'_>) -> Result<Verdict, StageError> {
        if cfg!(feature = "panicking-guard") {
            panic!("this guard always panics");
        }
        Ok(Verdict::Copy)
    }
}

/// With `panicking-source`: a source named `panicky` that panics on every
/// call.
struct Panicky;

impl Panicky {
    fn called<T>(&self, method: &str) -> T {
        panic!("this source always panics ({method})");
    }
}

impl BlockingSource for Panicky {
    fn resolve(&self, _: &ImageRef) -> Result<RawManifest, StageError> {
        self.called("resolve")
    }
    fn fetch_manifest(&self, _: &ImageRef, _: &Descriptor) -> Result<RawManifest, StageError> {
        self.called("fetch_manifest")
    }
    fn fetch_blob(
        &self,
        _: &ImageRef,
        _: &Descriptor,
    ) -> Result<Box<dyn std::io::Read + Send>, StageError> {
        self.called("fetch_blob")
    }
}

fn pass(_: &ConfigValue, _: &GuardContext) -> Result<Box<dyn BlockingGuard>, BuildError> {
    Ok(Box::new(Pass))
}

fn panicky(_: &ConfigValue, _: &SourceContext) -> Result<Box<dyn BlockingSource>, BuildError> {
    Ok(Box::new(Panicky))
}

unsafe extern "C" fn register(registrar: *mut Registrar) {
    if cfg!(any(
        feature = "wrong-abi",
        feature = "wrong-core",
        feature = "wrong-rustc"
    )) {
        // Reaching this means the loader called a mismatched plugin.
        std::process::abort();
    }
    let registrar = unsafe { &mut *registrar };
    if cfg!(feature = "no-stages") {
        return;
    }
    registrar.register(StageDeclaration {
        // `immutable` is a built-in guard: a duplicate.
        name: if cfg!(feature = "duplicate") {
            "immutable"
        } else {
            "pass"
        }
        .into(),
        description: "lets everything through (test plugin)".into(),
        example_config: "{}\n".into(),
        config_schema: if cfg!(feature = "bad-schema") {
            Some("{ not json".into())
        } else {
            None
        },
        transport: None,
        factory: PluginFactory::guard(pass),
    });
    if cfg!(feature = "panicking-source") {
        registrar.register(StageDeclaration {
            name: "panicky".into(),
            description: "panics on every call (test plugin)".into(),
            example_config: "{}\n".into(),
            config_schema: None,
            transport: None,
            factory: PluginFactory::source(panicky),
        });
    }
}

#[cfg(not(feature = "no-declaration"))]
#[unsafe(no_mangle)]
pub static IMAGE_SYNCER_PLUGIN_DECLARATION: PluginDeclaration = PluginDeclaration {
    abi_version: if cfg!(feature = "wrong-abi") {
        ABI_VERSION + 1
    } else {
        ABI_VERSION
    },
    core_version: if cfg!(feature = "wrong-core") {
        "0.0.0-elsewhere\0"
    } else {
        CORE_VERSION_NUL
    }
    .as_ptr() as *const std::ffi::c_char,
    rustc_version: if cfg!(feature = "wrong-rustc") {
        "rustc 0.0.0 (elsewhere)\0"
    } else {
        RUSTC_VERSION_NUL
    }
    .as_ptr() as *const std::ffi::c_char,
    layout: if cfg!(feature = "wrong-layout") {
        image_syncer_plugin::LAYOUT ^ 1
    } else {
        image_syncer_plugin::LAYOUT
    },
    register,
};

/// Keeps `register` referenced when there is no declaration.
#[cfg(feature = "no-declaration")]
pub fn unused() -> unsafe extern "C" fn(*mut Registrar) {
    register
}
