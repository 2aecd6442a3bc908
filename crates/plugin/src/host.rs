//! The host side: loads plugin libraries and adapts their blocking stages to
//! the core's async stage traits.
//!
//! Every object that came from a library (factories, stages, blob readers)
//! holds an `Arc<Library>`, declared after the object so that it is dropped
//! after it: the library stays loaded while anything of it lives. Manifests
//! returned by a plugin are copied into host-owned memory.

use std::ffi::CStr;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use image_syncer_core::async_trait;
use image_syncer_core::catalogue::{
    BuildError, ConfigValue, Factory, Origin, RegisteredStage, StageRegistry,
};
use image_syncer_core::context::{
    GuardContext, SelectorContext, SignerContext, SinkContext, SourceContext, TransformContext,
};
use image_syncer_core::digest::{ByteStream, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{
    ErrorKind, Guard, GuardInput, ManifestTarget, RepositoryUse, Selector, SignOutcome,
    SignRequest, Signer, Sink, Source, StageError, Transform, Verdict,
};
use libloading::Library;
use tokio::runtime::Handle;

use crate::{
    BlockingGuard, BlockingSigner, BlockingSink, BlockingSource, PluginDeclaration, PluginFactory,
    Registrar, ABI_VERSION, DECLARATION_SYMBOL, LAYOUT, RUSTC_VERSION,
};

/// A plugin library that cannot be used. Nothing of it was called when a
/// version check fails.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {path}: cannot load the library: {message}")]
    Open { path: String, message: String },
    #[error("plugin {path}: not an image-syncer plugin (no `{symbol}` symbol; a plugin exports it with `image_syncer_plugin::declare_plugin!`): {message}")]
    MissingSymbol {
        path: String,
        symbol: &'static str,
        message: String,
    },
    #[error("plugin {path}: plugin ABI version {found}, this image-syncer speaks {expected}; rebuild the plugin against image-syncer-plugin {core}")]
    Abi {
        path: String,
        found: u32,
        expected: u32,
        core: &'static str,
    },
    #[error("plugin {path}: built against image-syncer-core {found}, this image-syncer has {expected}; rebuild the plugin against {expected}")]
    CoreVersion {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("plugin {path}: built with `{found}`, this image-syncer with `{expected}`; plugins must be built by the same compiler")]
    Rustc {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("plugin {path}: the types it shares with image-syncer have another layout (fingerprint {found:#x}, expected {expected:#x}); rebuild the plugin against this image-syncer's sources")]
    Layout {
        path: String,
        found: u64,
        expected: u64,
    },
    #[error("plugin {path}: {message}")]
    Registration { path: String, message: String },
    #[error("plugin {path}: {kind} `{name}`: the config schema is not JSON: {message}")]
    Schema {
        path: String,
        kind: image_syncer_core::stage::StageKind,
        name: String,
        message: String,
    },
    #[error("plugin {path}: declares no stages")]
    Empty { path: String },
    #[error("plugin {path}: {source}")]
    Register { path: String, source: BuildError },
}

/// Loads a plugin library and adds its stages to `registry`, all or none: a
/// stage whose kind and name (or, for sources and sinks, transport) is already
/// registered refuses the whole library.
pub fn load_into(registry: &mut StageRegistry, path: &Path) -> Result<usize, LoadError> {
    let stages = load(path)?;
    let n = stages.len();
    let mut trial = registry.clone();
    for s in stages {
        trial.insert(s).map_err(|source| LoadError::Register {
            path: path.display().to_string(),
            source,
        })?;
    }
    *registry = trial;
    Ok(n)
}

/// libloading's message plus the system's (`dlerror`) reason.
fn with_source(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Opens a library that is never unmapped. Plugin code running on host
/// threads registers thread-local destructors in the host's threads; unmapping
/// the library before those threads end would leave them pointing at nothing.
/// So `dlclose` keeps the code (`RTLD_NODELETE`), while the `Arc<Library>`
/// held by every object from the library still orders drops correctly.
fn open(path: &Path) -> Result<Library, libloading::Error> {
    // Loading runs the library's initialisers: a plugin is trusted code.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};
        #[cfg(target_os = "linux")]
        const RTLD_NODELETE: std::ffi::c_int = 0x1000;
        #[cfg(target_os = "macos")]
        const RTLD_NODELETE: std::ffi::c_int = 0x80;
        unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) }
            .map(Library::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let library = unsafe { Library::new(path) }?;
        // No RTLD_NODELETE here: keep one more handle for the life of the process.
        static KEPT: std::sync::Mutex<Vec<Library>> = std::sync::Mutex::new(Vec::new());
        let again = unsafe { Library::new(path) }?;
        KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(again);
        Ok(library)
    }
}

/// Loads a plugin library: checks its declaration, then collects its stages.
pub fn load(path: &Path) -> Result<Vec<RegisteredStage>, LoadError> {
    // A bare file name is a file here, not a name for the system's library search.
    let owned;
    let path = if path.is_relative() {
        owned = std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf());
        owned.as_path()
    } else {
        path
    };
    let shown = path.display().to_string();
    let library = open(path).map_err(|e| LoadError::Open {
        path: shown.clone(),
        message: with_source(&e),
    })?;
    let library = Arc::new(library);
    let declaration: *const PluginDeclaration = unsafe {
        let symbol = library
            .get::<*const PluginDeclaration>(DECLARATION_SYMBOL.as_bytes())
            .map_err(|e| LoadError::MissingSymbol {
                path: shown.clone(),
                symbol: DECLARATION_SYMBOL,
                message: with_source(&e),
            })?;
        // For a static, the symbol's value is the static's address.
        *symbol
    };
    let declaration = unsafe { &*declaration };
    if declaration.abi_version != ABI_VERSION {
        return Err(LoadError::Abi {
            path: shown,
            found: declaration.abi_version,
            expected: ABI_VERSION,
            core: image_syncer_core::CORE_VERSION,
        });
    }
    let c_str = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::from("<missing>")
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let core = c_str(declaration.core_version);
    if core != image_syncer_core::CORE_VERSION {
        return Err(LoadError::CoreVersion {
            path: shown,
            found: core,
            expected: image_syncer_core::CORE_VERSION,
        });
    }
    let rustc = c_str(declaration.rustc_version);
    if rustc != RUSTC_VERSION || rustc.starts_with("unknown") {
        return Err(LoadError::Rustc {
            path: shown,
            found: rustc,
            expected: RUSTC_VERSION,
        });
    }
    if declaration.layout != LAYOUT {
        return Err(LoadError::Layout {
            path: shown,
            found: declaration.layout,
            expected: LAYOUT,
        });
    }
    let mut registrar = Registrar {
        log: Some(host_log(&shown)),
        ..Registrar::default()
    };
    unsafe { (declaration.register)(&mut registrar) };
    if let Some(message) = registrar.panicked.take() {
        return Err(LoadError::Registration {
            path: shown,
            message,
        });
    }
    if registrar.stages.is_empty() {
        return Err(LoadError::Empty { path: shown });
    }
    registrar
        .stages
        .into_iter()
        .map(|d| {
            let config_schema = match d.config_schema.as_deref().map(serde_json::from_str) {
                None => None,
                Some(Ok(schema)) => Some(schema),
                Some(Err(e)) => {
                    return Err(LoadError::Schema {
                        path: shown.clone(),
                        kind: d.kind(),
                        name: d.name,
                        message: e.to_string(),
                    })
                }
            };
            Ok(RegisteredStage {
                name: d.name,
                description: d.description,
                example_config: d.example_config,
                config_schema,
                transport: d.transport,
                origin: Origin::Library(shown.clone()),
                factory: host_factory(d.factory, library.clone()),
            })
        })
        .collect()
}

/// A plugin's factory as the core's: each stage it builds is adapted to the
/// core's async traits ([`Hosted`]) and holds the library. One arm per kind of
/// the core's `stage_kinds!`.
fn host_factory(factory: PluginFactory, library: Arc<Library>) -> Factory {
    macro_rules! adapt {
        ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $context:ident, factory: $factory:ident })*) => {
            // Each closure owns a `Lib`: the factory drops before the library.
            match factory {
                $(PluginFactory::$variant(f) => {
                    let held = Lib(f, library);
                    Factory::$ctor(move |c: &ConfigValue, cx: &$context| {
                        let stage = held.0.build(c, cx)?;
                        Ok(Arc::new(Hosted {
                            inner: Arc::from(stage),
                            _library: held.1.clone(),
                        }) as Arc<dyn $variant>)
                    })
                })*
            }
        };
    }
    image_syncer_core::stage_kinds!(adapt)
}

/// A stage from a plugin library as the core's stage of its kind (the kit's
/// blocking traits run on the blocking pool), holding the library.
struct Hosted<T: ?Sized> {
    inner: Arc<T>,
    _library: Arc<Library>,
}

/// Something from a library, and the library: a tuple struct's fields drop
/// in order, so the library outlives what came from it.
struct Lib<T>(T, Arc<Library>);

/// Runs a plugin call on the blocking pool. Plugin panics are already turned
/// into stage errors on the plugin's side (see `Registrar::register`); a join
/// error here means the call was cancelled or host code panicked.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StageError::internal(format!(
            "plugin {what} call did not complete: {e}"
        ))),
    }
}

/// A manifest in host-owned memory.
fn own(m: RawManifest) -> RawManifest {
    RawManifest {
        media_type: m.media_type.clone(),
        bytes: Bytes::copy_from_slice(&m.bytes),
        digest: m.digest.clone(),
    }
}

/// Streams a plugin reader on the blocking pool through a bounded channel.
fn reader_stream(reader: Box<dyn Read + Send>, library: Arc<Library>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
        drop(reader);
        drop(library);
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A blocking reader over chunks handed out by `next` (an error chunk is
/// returned as is; `None` is the end).
struct ChunkReader<F: FnMut() -> Option<std::io::Result<Bytes>>> {
    next: F,
    current: Bytes,
}

impl<F: FnMut() -> Option<std::io::Result<Bytes>>> ChunkReader<F> {
    fn new(next: F) -> Self {
        ChunkReader {
            next,
            current: Bytes::new(),
        }
    }
}

impl<F: FnMut() -> Option<std::io::Result<Bytes>>> Read for ChunkReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match (self.next)() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[async_trait]
impl Source for Hosted<dyn BlockingSource> {
    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        let (inner, r) = (self.inner.clone(), reference.clone());
        blocking("source", move || inner.resolve(&r).map(own)).await
    }

    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        let (inner, r) = (self.inner.clone(), repository.clone());
        // Strings copied into host-owned memory.
        blocking("source", move || {
            inner
                .list_tags(&r)
                .map(|tags| tags.iter().map(|t| t.as_str().to_owned()).collect())
        })
        .await
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        let (inner, r, d) = (self.inner.clone(), repository.clone(), descriptor.clone());
        blocking("source", move || inner.fetch_manifest(&r, &d).map(own)).await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        let (inner, r, d) = (self.inner.clone(), repository.clone(), descriptor.clone());
        let reader = blocking("source", move || inner.fetch_blob(&r, &d)).await?;
        Ok(reader_stream(reader, self._library.clone()))
    }
}

#[async_trait]
impl Sink for Hosted<dyn BlockingSink> {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        let (inner, t) = (self.inner.clone(), target.clone());
        blocking("sink", move || inner.manifest_digest(&t)).await
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        let (inner, t) = (self.inner.clone(), target.clone());
        blocking("sink", move || inner.fetch_manifest(&t).map(|m| m.map(own))).await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        let (inner, r, d) = (self.inner.clone(), repository.clone(), descriptor.clone());
        let reader = blocking("sink", move || inner.fetch_blob(&r, &d)).await?;
        Ok(reader_stream(reader, self._library.clone()))
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        let (inner, r, d) = (self.inner.clone(), repository.clone(), descriptor.clone());
        blocking("sink", move || inner.has_blob(&r, &d)).await
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        mut content: ByteStream,
    ) -> Result<(), StageError> {
        let (inner, r, d) = (self.inner.clone(), repository.clone(), descriptor.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The stream's own failure (a content mismatch) decides the error kind.
        let failure: Arc<Mutex<Option<StageError>>> = Arc::default();
        let seen = failure.clone();
        let context = format!("{repository}: blob {}", descriptor.digest);
        let pump = async move {
            while let Some(item) = content.next().await {
                let stop = item.is_err();
                if let Err(e) = &item {
                    *seen.lock().unwrap() = Some(StageError::from_io(&context, e));
                }
                let item = item.map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        };
        let write = blocking("sink", move || {
            let mut rx = rx;
            let mut reader = ChunkReader::new(move || rx.blocking_recv());
            inner.put_blob(&r, &d, &mut reader)
        });
        let ((), result) = tokio::join!(pump, write);
        if let Some(e) = failure.lock().unwrap().take() {
            return Err(e);
        }
        result
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        let (inner, r, t, m) = (
            self.inner.clone(),
            repository.clone(),
            target.clone(),
            manifest.clone(),
        );
        blocking("sink", move || inner.put_manifest(&r, &t, &m)).await
    }

    async fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let (inner, r, how) = (self.inner.clone(), repository.clone(), how.clone());
        blocking("sink", move || inner.prepare_repository(&r, &how)).await
    }
}

impl Transform for Hosted<dyn Transform> {
    fn apply(
        &self,
        input: image_syncer_core::stage::TransformInput<'_>,
    ) -> Result<ImageRef, StageError> {
        self.inner.apply(input)
    }
}

impl Selector for Hosted<dyn Selector> {
    fn select(&self, tags: &[String]) -> Result<Vec<String>, StageError> {
        self.inner.select(tags)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait]
impl Guard for Hosted<dyn BlockingGuard> {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
        let inner = self.inner.clone();
        let image = input.image.clone();
        let source_digest = input.source_digest.clone();
        let target = input.target.clone();
        let target_digest = input.target_digest.cloned();
        let upstream = input.upstream_digest.cloned();
        // The source does not cross: a plugin guard decides from the data.
        blocking("guard", move || {
            let mut input =
                GuardInput::new(&image, &source_digest, &target, target_digest.as_ref());
            if let Some(u) = &upstream {
                input = input.with_upstream_digest(u);
            }
            inner.check(input)
        })
        .await
    }
}

#[async_trait]
impl Signer for Hosted<dyn BlockingSigner> {
    async fn sign(
        &self,
        request: &SignRequest,
        sink: &Arc<dyn Sink>,
    ) -> Result<SignOutcome, StageError> {
        let inner = self.inner.clone();
        let request = request.clone();
        let host = BlockingHostSink {
            sink: sink.clone(),
            handle: Handle::current(),
        };
        blocking("signer", move || inner.sign(&request, &host)).await
    }
}

/// The host's async sink, offered to a plugin signer as a blocking sink. The
/// signer runs on the blocking pool; each call runs on the host's runtime
/// through its handle. Blobs a signer writes are small (payloads, configs) and
/// are buffered, bounded by their descriptor's size.
struct BlockingHostSink {
    sink: Arc<dyn Sink>,
    handle: Handle,
}

impl BlockingSink for BlockingHostSink {
    fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        self.handle.block_on(self.sink.manifest_digest(target))
    }
    fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        self.handle.block_on(self.sink.fetch_manifest(target))
    }
    fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, StageError> {
        let stream = self
            .handle
            .block_on(self.sink.fetch_blob(repository, descriptor))?;
        // Reads the async stream from this blocking thread.
        let (mut stream, handle) = (stream, self.handle.clone());
        Ok(Box::new(ChunkReader::new(move || {
            handle.block_on(stream.next())
        })))
    }
    fn has_blob(&self, repository: &ImageRef, descriptor: &Descriptor) -> Result<bool, StageError> {
        self.handle
            .block_on(self.sink.has_blob(repository, descriptor))
    }
    fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: &mut dyn Read,
    ) -> Result<(), StageError> {
        let mut buf = Vec::new();
        content
            .take(descriptor.size + 1)
            .read_to_end(&mut buf)
            .map_err(|e| StageError::from_io("plugin blob", &e))?;
        let stream: ByteStream = Box::pin(futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(Bytes::from(buf))
        }));
        let verified = image_syncer_core::digest::VerifyingStream::new(
            stream,
            descriptor.digest.clone(),
            Some(descriptor.size),
        );
        self.handle.block_on(
            self.sink
                .put_blob(repository, descriptor, Box::pin(verified)),
        )
    }
    fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        if let Err(actual) = manifest.digest.verify(&manifest.bytes) {
            return Err(StageError::new(
                ErrorKind::Integrity,
                format!(
                    "plugin manifest claims {} but hashes to {actual}",
                    manifest.digest
                ),
            ));
        }
        self.handle
            .block_on(self.sink.put_manifest(repository, target, manifest))
    }
    fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        self.handle
            .block_on(self.sink.prepare_repository(repository, how))
    }
}

/// The log sink handed to the library at `path`: its events are re-emitted
/// here with `plugin = path`, under the host's filter for this module.
fn host_log(path: &str) -> crate::log::HostLog {
    // Lives as long as the library, which is never unloaded (RTLD_NODELETE):
    // one small string per loaded library.
    let context: &'static String = Box::leak(Box::new(path.to_string()));
    let max_level = [
        tracing::Level::TRACE,
        tracing::Level::DEBUG,
        tracing::Level::INFO,
        tracing::Level::WARN,
        tracing::Level::ERROR,
    ]
    .iter()
    .find(|level| level_enabled(level))
    .map(crate::log::level_number)
    .unwrap_or(0);
    crate::log::HostLog {
        max_level,
        context: context as *const String as *const std::ffi::c_void,
        emit: host_emit,
    }
}

fn level_enabled(level: &tracing::Level) -> bool {
    match *level {
        tracing::Level::TRACE => tracing::enabled!(tracing::Level::TRACE),
        tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
        tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
        tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
        tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
    }
}

/// Re-emits one plugin event. Called from plugin code on any thread; it only
/// reads the bytes it is given and never unwinds (a panic in an `extern "C"`
/// function aborts, so there is nothing here that panics).
extern "C" fn host_emit(
    context: *const std::ffi::c_void,
    level: u8,
    target: *const u8,
    target_len: usize,
    text: *const u8,
    text_len: usize,
) {
    // SAFETY: `context` is the leaked String of `host_log`; the plugin passes
    // pointer and length of live `&str`s for the duration of the call.
    let plugin = unsafe { &*(context as *const String) };
    let read = |p: *const u8, n: usize| {
        if p.is_null() {
            return "";
        }
        std::str::from_utf8(unsafe { std::slice::from_raw_parts(p, n) }).unwrap_or("<not UTF-8>")
    };
    let (target, text) = (read(target, target_len), read(text, text_len));
    match level {
        1 => tracing::error!(plugin = %plugin, origin = %target, "{text}"),
        2 => tracing::warn!(plugin = %plugin, origin = %target, "{text}"),
        3 => tracing::info!(plugin = %plugin, origin = %target, "{text}"),
        4 => tracing::debug!(plugin = %plugin, origin = %target, "{text}"),
        _ => tracing::trace!(plugin = %plugin, origin = %target, "{text}"),
    }
}
