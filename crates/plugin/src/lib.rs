//! Plugin authoring kit for image-syncer.
//!
//! A dynamic plugin is a `cdylib` that depends on this crate (and on
//! `image-syncer-core` through it), implements one or more **blocking** stage
//! traits ([`BlockingSource`], [`BlockingSink`], [`BlockingGuard`],
//! [`BlockingSigner`], or the core's synchronous [`Transform`] and
//! [`Selector`]), and declares
//! itself with [`declare_plugin!`]:
//!
//! ```text
//! fn register(r: &mut image_syncer_plugin::Registrar) {
//!     r.register(image_syncer_plugin::StageDeclaration { /* name, description, factory: PluginFactory::guard(build), ... */ });
//! }
//! image_syncer_plugin::declare_plugin!(register);
//! ```
//!
//! # The boundary
//! - The declaration is a `#[repr(C)]` static holding an ABI version, the core
//!   crate's version and the rustc version as C strings, and a fingerprint of
//!   the layouts of the types that cross (`LAYOUT`). The host reads and
//!   compares all four **before** calling anything; a mismatch is refused.
//! - After the check, stages cross as Rust trait objects (same compiler, same
//!   core version: same layouts).
//! - Stage methods are blocking. The host calls them on tokio's blocking pool
//!   (`spawn_blocking`), never from its async workers, and a plugin never
//!   touches the host's tokio: statics such as tokio's runtime context and
//!   `inventory`'s registry exist once per linked copy, so the plugin's copy
//!   would see no runtime. A plugin that needs async I/O runs its own runtime
//!   (for example a current-thread tokio runtime built in its factory) and
//!   blocks on it inside its methods; [`block_on`] runs simple futures.
//! - Blobs cross as `std::io::Read` streams, so memory stays constant.

use std::ffi::c_char;
use std::io::Read;
use std::sync::Arc;

pub use image_syncer_core as core;
use image_syncer_core::catalogue::{BuildError, ConfigValue};
use image_syncer_core::context::{
    GuardContext, SelectorContext, SignerContext, SinkContext, SourceContext, TransformContext,
};
use image_syncer_core::digest::{ByteStream, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{
    GuardInput, ManifestTarget, RepositoryUse, SignOutcome, SignRequest, Sink, StageError,
    StageKind, Verdict,
};
pub use image_syncer_core::stage::{Selector, Transform};
/// The `tracing` a plugin logs with: its events reach the host (see [`log`]).
pub use tracing;

#[cfg(feature = "host")]
pub mod host;
pub mod log;

/// The shape of the declaration and of the types crossing the boundary. Bumped
/// by the first change of that shape of a piece of work; its later changes,
/// and those merged before the next bump, ride on it. docs/plugins.md ("What
/// is stable") has the rule, each bump and a migration table.
pub const ABI_VERSION: u32 = 8;

/// A fingerprint of the sizes and alignments of the types that cross the
/// boundary, computed when this crate is compiled. Host and plugin must agree:
/// it catches a layout change that no version number recorded.
pub const LAYOUT: u64 = {
    use std::mem::{align_of, size_of};
    let shapes = [
        size_of::<ImageRef>(),
        align_of::<ImageRef>(),
        size_of::<Digest>(),
        align_of::<Digest>(),
        size_of::<Descriptor>(),
        align_of::<Descriptor>(),
        size_of::<RawManifest>(),
        align_of::<RawManifest>(),
        size_of::<StageError>(),
        align_of::<StageError>(),
        size_of::<BuildError>(),
        align_of::<BuildError>(),
        size_of::<SourceContext>(),
        align_of::<SourceContext>(),
        size_of::<SelectorContext>(),
        size_of::<SinkContext>(),
        size_of::<TransformContext>(),
        size_of::<GuardContext>(),
        size_of::<SignerContext>(),
        size_of::<image_syncer_core::stage::ImageEntry>(),
        align_of::<image_syncer_core::stage::ImageEntry>(),
        size_of::<GuardInput<'static>>(),
        size_of::<Verdict>(),
        size_of::<image_syncer_core::stage::TransformInput<'static>>(),
        size_of::<SignRequest>(),
        size_of::<SignOutcome>(),
        size_of::<ManifestTarget>(),
        size_of::<RepositoryUse>(),
        size_of::<ConfigValue>(),
        size_of::<bytes::Bytes>(),
        size_of::<PluginFactory>(),
        size_of::<StageDeclaration>(),
        size_of::<Registrar>(),
        size_of::<log::HostLog>(),
        size_of::<Box<dyn Read + Send>>(),
        size_of::<String>(),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < shapes.len() {
        h ^= shapes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
};

/// The compiler this crate (and so a plugin or host using it) was built with.
pub const RUSTC_VERSION: &str = env!("IMAGE_SYNCER_RUSTC_VERSION");

/// NUL-terminated versions, for the C-layout declaration.
#[doc(hidden)]
pub const CORE_VERSION_NUL: &str = image_syncer_core::CORE_VERSION_NUL;
#[doc(hidden)]
pub const RUSTC_VERSION_NUL: &str = concat!(env!("IMAGE_SYNCER_RUSTC_VERSION"), "\0");

/// The exported symbol's name.
pub const DECLARATION_SYMBOL: &str = "IMAGE_SYNCER_PLUGIN_DECLARATION";

/// What a plugin library exports under [`DECLARATION_SYMBOL`]. Only the
/// version fields are read before they are checked.
#[repr(C)]
pub struct PluginDeclaration {
    pub abi_version: u32,
    /// NUL-terminated `image-syncer-core` version the plugin was built against.
    pub core_version: *const c_char,
    /// NUL-terminated `rustc --version` of the plugin's compiler.
    pub rustc_version: *const c_char,
    /// [`LAYOUT`] as the plugin was compiled.
    pub layout: u64,
    /// Called once, after the checks, to collect the plugin's stages.
    pub register: unsafe extern "C" fn(registrar: *mut Registrar),
}

// The pointers point at 'static string literals.
unsafe impl Sync for PluginDeclaration {}

/// A blocking source. Manifests must be returned with their exact bytes; the
/// host verifies digests of everything.
pub trait BlockingSource: Send + Sync {
    fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError>;
    /// The tags of `repository`, for entries selecting tags by a rule. The
    /// default: this source cannot list tags (a `Config` error).
    fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        Err(StageError::config(format!(
            "{repository}: this source cannot list tags, so its entries cannot select tags by a rule"
        )))
    }
    fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError>;
    fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, StageError>;
}

/// A blocking sink. `put_blob`'s content fails (an `InvalidData` read error)
/// when the bytes do not match the descriptor: commit only after reading to
/// the end without error.
pub trait BlockingSink: Send + Sync {
    fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError>;
    fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError>;
    fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, StageError>;
    fn has_blob(&self, repository: &ImageRef, descriptor: &Descriptor) -> Result<bool, StageError>;
    fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: &mut dyn Read,
    ) -> Result<(), StageError>;
    fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError>;
    /// The core's [`Sink::prepare_repository`]: makes a target repository
    /// ready before its first write (once per repository per run); a note
    /// for the report, or `None`. The default does nothing.
    fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let _ = (repository, how);
        Ok(None)
    }
}

/// A blocking guard.
pub trait BlockingGuard: Send + Sync {
    fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError>;
}

/// A blocking signer: it reads and writes signatures through the target's
/// sink, which the host hands over as a blocking sink.
pub trait BlockingSigner: Send + Sync {
    fn sign(
        &self,
        request: &SignRequest,
        sink: &dyn BlockingSink,
    ) -> Result<SignOutcome, StageError>;
}

/// The kit's stage type of each kind: what a plugin implements (blocking
/// traits for the kinds that do I/O, the core's synchronous ones otherwise).
/// A new kind in the core's `stage_kinds!` fails to compile here until it is
/// given one.
macro_rules! kit_stage {
    (Source) => { dyn $crate::BlockingSource };
    (Selector) => { dyn $crate::Selector };
    (Sink) => { dyn $crate::BlockingSink };
    (Transform) => { dyn $crate::Transform };
    (Guard) => { dyn $crate::BlockingGuard };
    (Signer) => { dyn $crate::BlockingSigner };
}

macro_rules! plugin_factories {
    ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $context:ident, factory: $factory:ident })*) => {
        $(
            #[doc = concat!("Builds a ", stringify!($ctor), " (", stringify!(kit_stage!($variant)), ").")]
            pub trait $factory: Send + Sync {
                fn build(&self, config: &ConfigValue, cx: &$context)
                    -> Result<Box<kit_stage!($variant)>, BuildError>;
            }

            impl<F> $factory for F
            where
                F: Fn(&ConfigValue, &$context) -> Result<Box<kit_stage!($variant)>, BuildError> + Send + Sync,
            {
                fn build(&self, config: &ConfigValue, cx: &$context)
                    -> Result<Box<kit_stage!($variant)>, BuildError> {
                    self(config, cx)
                }
            }
        )*

        /// A plugin stage's factory: one kind, that kind's context (typed
        /// config with [`image_syncer_core::catalogue::typed_config`]).
        pub enum PluginFactory {
            $($variant(Box<dyn $factory>),)*
        }

        impl PluginFactory {
            /// The kind of stage this factory builds.
            pub fn kind(&self) -> StageKind {
                match self {
                    $(PluginFactory::$variant(_) => StageKind::$variant,)*
                }
            }
            $(
                #[doc = concat!("A ", stringify!($ctor), " factory.")]
                pub fn $ctor(factory: impl $factory + 'static) -> PluginFactory {
                    PluginFactory::$variant(Box::new(factory))
                }
            )*
        }
    };
}

image_syncer_core::stage_kinds!(plugin_factories);

/// One stage a plugin offers; its kind is its factory's.
pub struct StageDeclaration {
    pub name: String,
    pub description: String,
    /// YAML, as it would appear under `config:`.
    pub example_config: String,
    /// The JSON Schema of the config, as JSON text ([`config_schema`] makes
    /// it from a config type deriving `JsonSchema`); `None`: free-form.
    /// `--print-schema` checks `config:` against it; text that is not JSON
    /// makes the host refuse the plugin.
    pub config_schema: Option<String>,
    /// For sources and sinks: the reference transport served (`dir` for `dir:PATH`).
    pub transport: Option<String>,
    pub factory: PluginFactory,
}

impl StageDeclaration {
    /// The kind of stage declared.
    pub fn kind(&self) -> StageKind {
        self.factory.kind()
    }
}

/// The JSON Schema of config type `C` as JSON text, for
/// [`StageDeclaration::config_schema`]. `C` derives `JsonSchema` from the
/// `schemars` crate (1.x; re-exported as `image_syncer_plugin::core::schemars`).
pub fn config_schema<C: image_syncer_core::schemars::JsonSchema>() -> Option<String> {
    Some(image_syncer_core::catalogue::config_schema::<C>().to_string())
}

/// Collects a plugin's stages during registration.
#[derive(Default)]
pub struct Registrar {
    pub stages: Vec<StageDeclaration>,
    /// Set when the plugin's registration panicked: the host refuses it.
    pub panicked: Option<String>,
    /// Where the plugin's `tracing` events go; [`declare_plugin!`] installs
    /// it before the plugin's register function runs.
    pub log: Option<log::HostLog>,
}

impl Registrar {
    /// Registers a stage. Its factory and every stage it builds are wrapped so
    /// that a panic in plugin code becomes a stage error: a panic cannot cross
    /// into the host (each side has its own copy of the Rust runtime, and an
    /// unwind from the other copy is a foreign exception that aborts).
    pub fn register(&mut self, mut stage: StageDeclaration) {
        stage.factory = guard::fence(stage.name.clone(), stage.factory);
        self.stages.push(stage);
    }
}

/// Panic fences, compiled into the plugin (this crate's copy in the plugin).
mod guard {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Which stage a fence guards: named in the error a panic becomes.
    #[derive(Clone)]
    pub(super) struct Named {
        pub kind: StageKind,
        pub name: String,
    }

    impl Named {
        /// Runs `f`; a panic becomes an [`ErrorKind::Internal`] error naming
        /// the plugin and stage: a bug, never retried like a network glitch.
        fn fence<T>(
            &self,
            method: &str,
            f: impl FnOnce() -> Result<T, StageError>,
        ) -> Result<T, StageError> {
            match catch_unwind(AssertUnwindSafe(f)) {
                Ok(r) => r,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    Err(StageError::internal(format!(
                        "plugin {} `{}` panicked in {method}: {message} (a bug in the plugin; not retried)",
                        self.kind, self.name
                    )))
                }
            }
        }
    }

    /// Builds with `build`; a panic becomes a setup error naming the plugin.
    fn built<T>(
        kind: StageKind,
        name: &str,
        build: impl FnOnce() -> Result<T, BuildError>,
    ) -> Result<(T, Named), BuildError> {
        match catch_unwind(AssertUnwindSafe(build)) {
            Ok(r) => Ok((
                r?,
                Named {
                    kind,
                    name: name.to_string(),
                },
            )),
            Err(_) => Err(BuildError::Setup {
                kind,
                plugin: name.to_string(),
                message: "the plugin's factory panicked".into(),
            }),
        }
    }

    /// `factory`, and every stage it builds, behind panic fences: each kind's
    /// stage is wrapped in this module's type of the kind's name.
    pub(super) fn fence(name: String, factory: PluginFactory) -> PluginFactory {
        macro_rules! fence {
            ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $context:ident, factory: $factory:ident })*) => {
                match factory {
                    $(PluginFactory::$variant(f) => {
                        PluginFactory::$ctor(move |c: &ConfigValue, cx: &$context| {
                            let (s, named) = built(StageKind::$variant, &name, || f.build(c, cx))?;
                            Ok(Box::new($variant(named, s)) as Box<kit_stage!($variant)>)
                        })
                    })*
                }
            };
        }
        image_syncer_core::stage_kinds!(fence)
    }

    struct Source(Named, Box<dyn BlockingSource>);
    impl BlockingSource for Source {
        fn resolve(&self, r: &ImageRef) -> Result<RawManifest, StageError> {
            self.0.fence("resolve", || self.1.resolve(r))
        }
        fn list_tags(&self, r: &ImageRef) -> Result<Vec<String>, StageError> {
            self.0.fence("list_tags", || self.1.list_tags(r))
        }
        fn fetch_manifest(&self, r: &ImageRef, d: &Descriptor) -> Result<RawManifest, StageError> {
            self.0
                .fence("fetch_manifest", || self.1.fetch_manifest(r, d))
        }
        fn fetch_blob(
            &self,
            r: &ImageRef,
            d: &Descriptor,
        ) -> Result<Box<dyn Read + Send>, StageError> {
            let inner = self.0.fence("fetch_blob", || self.1.fetch_blob(r, d))?;
            Ok(Box::new(Reader(inner)))
        }
    }

    struct Sink(Named, Box<dyn BlockingSink>);
    impl BlockingSink for Sink {
        fn manifest_digest(&self, t: &ImageRef) -> Result<Option<Digest>, StageError> {
            self.0
                .fence("manifest_digest", || self.1.manifest_digest(t))
        }
        fn fetch_manifest(&self, t: &ImageRef) -> Result<Option<RawManifest>, StageError> {
            self.0.fence("fetch_manifest", || self.1.fetch_manifest(t))
        }
        fn fetch_blob(
            &self,
            r: &ImageRef,
            d: &Descriptor,
        ) -> Result<Box<dyn Read + Send>, StageError> {
            let inner = self.0.fence("fetch_blob", || self.1.fetch_blob(r, d))?;
            Ok(Box::new(Reader(inner)))
        }
        fn has_blob(&self, r: &ImageRef, d: &Descriptor) -> Result<bool, StageError> {
            self.0.fence("has_blob", || self.1.has_blob(r, d))
        }
        fn put_blob(
            &self,
            r: &ImageRef,
            d: &Descriptor,
            c: &mut dyn Read,
        ) -> Result<(), StageError> {
            self.0.fence("put_blob", || self.1.put_blob(r, d, c))
        }
        fn put_manifest(
            &self,
            r: &ImageRef,
            t: &ManifestTarget,
            m: &RawManifest,
        ) -> Result<(), StageError> {
            self.0
                .fence("put_manifest", || self.1.put_manifest(r, t, m))
        }
        fn prepare_repository(
            &self,
            r: &ImageRef,
            how: &RepositoryUse,
        ) -> Result<Option<String>, StageError> {
            self.0
                .fence("prepare_repository", || self.1.prepare_repository(r, how))
        }
    }

    struct Transform(Named, Box<dyn super::Transform>);
    impl super::Transform for Transform {
        fn apply(
            &self,
            input: image_syncer_core::stage::TransformInput<'_>,
        ) -> Result<ImageRef, StageError> {
            self.0.fence("apply", || self.1.apply(input))
        }
    }

    struct Selector(Named, Box<dyn super::Selector>);
    impl super::Selector for Selector {
        fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError> {
            self.0.fence("select", || self.1.select(tags))
        }
        fn describe(&self) -> String {
            self.0
                .fence("describe", || Ok(self.1.describe()))
                .unwrap_or_else(|e| e.message)
        }
    }

    struct Guard(Named, Box<dyn BlockingGuard>);
    impl BlockingGuard for Guard {
        fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
            self.0.fence("check", || self.1.check(input))
        }
    }

    struct Signer(Named, Box<dyn BlockingSigner>);
    impl BlockingSigner for Signer {
        fn sign(
            &self,
            request: &SignRequest,
            sink: &dyn BlockingSink,
        ) -> Result<SignOutcome, StageError> {
            self.0.fence("sign", || self.1.sign(request, sink))
        }
    }

    /// A plugin reader whose panics become I/O errors.
    struct Reader(Box<dyn Read + Send>);
    impl Read for Reader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match catch_unwind(AssertUnwindSafe(|| self.0.read(buf))) {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other("plugin reader panicked")),
            }
        }
    }
}

/// Declares the plugin: exports the versioned declaration whose `register`
/// calls `$register(&mut Registrar)`. A panic in `$register` is caught and the
/// host refuses the plugin.
#[macro_export]
macro_rules! declare_plugin {
    ($register:path) => {
        #[unsafe(no_mangle)]
        pub static IMAGE_SYNCER_PLUGIN_DECLARATION: $crate::PluginDeclaration = {
            unsafe extern "C" fn __image_syncer_register(registrar: *mut $crate::Registrar) {
                let registrar = unsafe { &mut *registrar };
                let _ = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
                    if let ::std::option::Option::Some(log) = registrar.log {
                        $crate::log::install(log);
                    }
                    $register(registrar)
                }));
            }
            $crate::PluginDeclaration {
                abi_version: $crate::ABI_VERSION,
                core_version: $crate::CORE_VERSION_NUL.as_ptr() as *const ::std::ffi::c_char,
                rustc_version: $crate::RUSTC_VERSION_NUL.as_ptr() as *const ::std::ffi::c_char,
                layout: $crate::LAYOUT,
                register: __image_syncer_register,
            }
        };
    };
}

/// Runs a future to completion on the current thread, without any runtime.
/// Enough for futures that do no I/O of their own (for example the core's
/// `image-syncer-cosign-format` flow over a [`SyncSink`]); for async I/O, use a runtime of your own.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// A [`BlockingSink`] seen as the core's async [`Sink`], so that async
/// flows written against the core traits (such as `image_syncer_cosign_format::sign_request`) run in a
/// plugin with [`block_on`]. Each call blocks the current thread.
pub struct SyncSink<'a>(pub &'a dyn BlockingSink);

fn read_all(mut r: Box<dyn Read + Send>) -> ByteStream {
    let mut buf = Vec::new();
    let item = r.read_to_end(&mut buf).map(|_| bytes::Bytes::from(buf));
    Box::pin(futures_util::stream::once(async move { item }))
}

#[image_syncer_core::async_trait]
impl Sink for SyncSink<'_> {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.0.manifest_digest(target)
    }
    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        self.0.fetch_manifest(target)
    }
    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        Ok(read_all(self.0.fetch_blob(repository, descriptor)?))
    }
    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        self.0.has_blob(repository, descriptor)
    }
    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        mut content: ByteStream,
    ) -> Result<(), StageError> {
        use futures_util::StreamExt;
        let mut buf = Vec::new();
        while let Some(chunk) = content.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| StageError::from_io("blob", &e))?);
        }
        self.0.put_blob(repository, descriptor, &mut buf.as_slice())
    }
    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        self.0.put_manifest(repository, target, manifest)
    }
    async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        self.0.prepare_repository(repository, how)
    }
}
