//! `oci-layout`: a source and a sink on an OCI image-layout directory, the format
//! written by `skopeo copy … oci:DIR`, crane, oras and umoci:
//!
//! ```text
//! DIR/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! DIR/index.json            an image index; tags are entries annotated with
//!                           org.opencontainers.image.ref.name
//! DIR/blobs/<alg>/<hex>     manifests, configs and layers, by digest
//! ```
//!
//! A reference `oci:PATH[:TAG][@DIGEST]` names the layout at PATH (relative paths
//! are resolved against the directory of the definition file) and the manifest
//! tagged TAG in its `index.json`, or the manifest DIGEST (an `index.json` entry
//! or any manifest blob of the layout). When a source reference names neither
//! and `index.json` holds exactly one manifest, that manifest is meant.
//!
//! Writes are crash-safe: every blob is streamed to a `.tmp-…` file next to its
//! final place, verified, synced and renamed into place only when complete;
//! `index.json` is replaced the same way. Within the process `index.json`
//! updates are serialized, so concurrent tags are never lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use image_syncer_core::catalogue::{
    typed_config, BuildError, ConfigDoc, ConfigValue, Factory, StagePlugin,
};
use image_syncer_core::context::{resolve_path, SinkContext, SourceContext};
use image_syncer_core::digest::{ByteStream, Digest, Verifier};
use image_syncer_core::manifest::{Descriptor, ManifestError, RawManifest, OCI_INDEX};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ManifestTarget, Sink, Source, StageError, StageKind};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::debug;

/// The annotation naming an `index.json` entry (its tag).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The image-layout version written to `oci-layout`.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The reference transport served: `oci:PATH[:TAG]`.
pub const TRANSPORT: &str = "oci";

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
/// Manifests are read into memory; a larger one is refused before it is read
/// (the core's limit for every source).
const MAX_MANIFEST_BYTES: usize = image_syncer_core::manifest::DEFAULT_MAX_MANIFEST_BYTES;
const READ_CHUNK: usize = 64 * 1024;

/// Serializes `index.json` read-modify-write cycles (and layout creation) in the process.
static INDEX_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `oci-layout` has no settings: `config:` is empty or absent (an unknown key is an error).
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OciLayoutConfig {}

/// Reads images from OCI image-layout directories.
pub struct OciLayoutSource {
    paths: Paths,
}

/// Writes images to OCI image-layout directories, creating them as needed.
pub struct OciLayoutSink {
    paths: Paths,
}

impl OciLayoutSource {
    /// A source resolving relative layout paths against `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>) -> OciLayoutSource {
        OciLayoutSource {
            paths: Paths::new(base_dir.into()),
        }
    }

    /// The tags of the layout `reference` names (its tag or digest, if any,
    /// is ignored): the `org.opencontainers.image.ref.name` annotations of
    /// the manifests in its `index.json`, in the file's order (a name given
    /// twice comes twice; entries without one are skipped). A missing layout
    /// directory or `index.json` is `NotFound`; an `index.json` that is not
    /// an image index is `Invalid`, naming the file.
    pub async fn list_tags(&self, reference: &ImageRef) -> Result<Vec<String>, StageError> {
        let layout = self.paths.layout(reference)?;
        match layout.read_index().await? {
            IndexState::NoDir => Err(StageError::not_found(
                layout.context("the layout directory does not exist"),
            )),
            IndexState::NoIndex => Err(StageError::not_found(
                layout.context(format!("has no {INDEX_FILE}")),
            )),
            IndexState::Index(index) => Ok(index
                .manifests
                .iter()
                .filter_map(|e| e.ref_name().map(str::to_string))
                .collect()),
        }
    }
}

impl OciLayoutSink {
    /// A sink resolving relative layout paths against `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>) -> OciLayoutSink {
        OciLayoutSink {
            paths: Paths::new(base_dir.into()),
        }
    }
}

/// Turns references into layout directories.
struct Paths {
    /// Relative layout paths are resolved against it
    /// ([`image_syncer_core::context::resolve_path`]).
    base_dir: PathBuf,
}

impl Paths {
    fn new(base_dir: PathBuf) -> Paths {
        Paths { base_dir }
    }

    fn layout(&self, reference: &ImageRef) -> Result<Layout, StageError> {
        if reference.transport() != Some(TRANSPORT) {
            return Err(StageError::config(format!(
                "the oci-layout plugin serves `{TRANSPORT}:PATH[:TAG]` references, not `{reference}`"
            )));
        }
        Ok(Layout {
            root: resolve_path(&self.base_dir, reference.repository_as_written()),
        })
    }
}

// ---------------------------------------------------------------------------
// index.json

/// `index.json`. Fields this plugin does not know are kept as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl IndexFile {
    fn empty() -> IndexFile {
        IndexFile {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
            other: serde_json::Map::new(),
        }
    }
}

/// One descriptor of `index.json`. The digest stays a string so that one entry
/// with an algorithm we cannot verify does not make the whole layout unreadable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl IndexEntry {
    fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

/// `index.json` as written: indented JSON and a final newline.
fn index_bytes(layout: &Layout, index: &IndexFile) -> Result<Vec<u8>, StageError> {
    let mut bytes = serde_json::to_vec_pretty(index).map_err(|e| {
        StageError::invalid(layout.context(format!("cannot serialize {INDEX_FILE}: {e}")))
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// What the layout directory holds, as far as `index.json` goes.
enum IndexState {
    NoDir,
    NoIndex,
    Index(IndexFile),
}

/// The manifest a reference names in a layout.
#[derive(Debug)]
struct Found {
    media_type: Option<String>,
    digest: Digest,
    /// From `index.json`; `None` for a blob found by digest alone.
    size: Option<u64>,
}

enum Lookup {
    Found(Found),
    /// Absent; the text says what is missing (for a source's NotFound).
    Missing(String),
}

// ---------------------------------------------------------------------------
// The layout directory

struct Layout {
    root: PathBuf,
}

impl Layout {
    fn context(&self, what: impl std::fmt::Display) -> String {
        format!("OCI layout {}: {what}", self.root.display())
    }

    fn io_error(&self, what: impl std::fmt::Display, err: &std::io::Error) -> StageError {
        StageError::from_io(&self.context(what), err)
    }

    fn blob_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_str())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(digest.hex())
    }

    fn manifest_error(&self, digest: &Digest, err: ManifestError) -> StageError {
        let message = self.context(format!("manifest {digest}: {err}"));
        match err {
            ManifestError::Digest { .. } => StageError::integrity(message),
            _ => StageError::invalid(message),
        }
    }

    /// Checks `oci-layout` when present: a layout of another major version is refused.
    async fn check_layout_file(&self) -> Result<(), StageError> {
        let path = self.root.join(LAYOUT_FILE);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(format_args!("reading {LAYOUT_FILE}"), &e)),
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LayoutFile {
            image_layout_version: String,
        }
        let file: LayoutFile = serde_json::from_slice(&bytes).map_err(|e| {
            StageError::invalid(self.context(format!("{LAYOUT_FILE} is not valid: {e}")))
        })?;
        if file.image_layout_version.split('.').next() != Some("1") {
            return Err(StageError::invalid(self.context(format!(
                "unsupported image layout version `{}` (supported: 1.x)",
                file.image_layout_version
            ))));
        }
        Ok(())
    }

    async fn read_index(&self) -> Result<IndexState, StageError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StageError::invalid(
                    self.context("exists but is not a directory"),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexState::NoDir),
            Err(e) => return Err(self.io_error("reading the layout directory", &e)),
        }
        self.check_layout_file().await?;
        let bytes = match tokio::fs::read(self.root.join(INDEX_FILE)).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexState::NoIndex),
            Err(e) => return Err(self.io_error(format_args!("reading {INDEX_FILE}"), &e)),
        };
        let index: IndexFile = serde_json::from_slice(&bytes).map_err(|e| {
            StageError::invalid(
                self.context(format!("{INDEX_FILE} is not a valid image index: {e}")),
            )
        })?;
        Ok(IndexState::Index(index))
    }

    /// Whether a regular file is stored for `digest`, and its size.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StageError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(StageError::invalid(
                self.context(format!("blob {digest} is not a regular file")),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(format_args!("blob {digest}"), &e)),
        }
    }

    /// Finds what `reference` names. `single_default`: a reference without tag
    /// or digest means the only manifest of `index.json`.
    async fn lookup(
        &self,
        reference: &ImageRef,
        single_default: bool,
    ) -> Result<Lookup, StageError> {
        let index = match self.read_index().await? {
            IndexState::NoDir => {
                return Ok(Lookup::Missing(
                    self.context("the layout directory does not exist"),
                ))
            }
            IndexState::NoIndex => None,
            IndexState::Index(i) => Some(i),
        };
        if let Some(digest) = reference.digest() {
            if self.blob_size(digest).await?.is_none() {
                return Ok(Lookup::Missing(
                    self.context(format!("holds no manifest {digest}")),
                ));
            }
            let wanted = digest.to_string();
            let entry = index
                .iter()
                .flat_map(|i| i.manifests.iter())
                .find(|e| e.digest == wanted);
            return Ok(Lookup::Found(Found {
                media_type: entry.and_then(|e| e.media_type.clone()),
                digest: digest.clone(),
                size: entry.map(|e| e.size),
            }));
        }
        let Some(index) = index else {
            return Ok(Lookup::Missing(
                self.context(format!("has no {INDEX_FILE}")),
            ));
        };
        let entry = match reference.tag() {
            Some(tag) => {
                let mut matching = index.manifests.iter().filter(|e| e.ref_name() == Some(tag));
                let Some(first) = matching.next() else {
                    return Ok(Lookup::Missing(
                        self.context(format!("{INDEX_FILE} has no manifest tagged `{tag}`")),
                    ));
                };
                if let Some(other) = matching.find(|e| e.digest != first.digest) {
                    return Err(StageError::invalid(self.context(format!(
                        "{INDEX_FILE} tags two different manifests `{tag}` ({} and {})",
                        first.digest, other.digest
                    ))));
                }
                first
            }
            None if single_default && index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(StageError::invalid(self.context(format!(
                    "the reference names no tag and {INDEX_FILE} holds {} manifests; write `oci:PATH:TAG`",
                    index.manifests.len()
                ))))
            }
        };
        let digest: Digest = entry
            .digest
            .parse()
            .map_err(|e| StageError::invalid(self.context(format!("{INDEX_FILE} entry: {e}"))))?;
        Ok(Lookup::Found(Found {
            media_type: entry.media_type.clone(),
            digest,
            size: Some(entry.size),
        }))
    }

    /// Reads and verifies the manifest `found` points at.
    async fn read_manifest(&self, found: &Found) -> Result<RawManifest, StageError> {
        let digest = &found.digest;
        let Some(on_disk) = self.blob_size(digest).await? else {
            return Err(StageError::not_found(
                self.context(format!("manifest blob {digest} is missing")),
            ));
        };
        if let Some(size) = found.size {
            if on_disk != size {
                return Err(StageError::integrity(self.context(format!(
                    "manifest {digest} is {on_disk} bytes on disk, its descriptor says {size}"
                ))));
            }
        }
        if on_disk > MAX_MANIFEST_BYTES as u64 {
            return Err(StageError::invalid(self.context(
                image_syncer_core::manifest::too_large(
                    &digest.to_string(),
                    on_disk,
                    MAX_MANIFEST_BYTES,
                ),
            )));
        }
        let bytes = tokio::fs::read(self.blob_path(digest))
            .await
            .map_err(|e| self.io_error(format_args!("reading manifest {digest}"), &e))?;
        RawManifest::new(
            found.media_type.as_deref(),
            Bytes::from(bytes),
            Some(digest),
        )
        .map_err(|e| self.manifest_error(digest, e))
    }

    /// Streams a blob from disk, checking its size first.
    async fn open_blob(&self, descriptor: &Descriptor) -> Result<ByteStream, StageError> {
        let digest = &descriptor.digest;
        let file = tokio::fs::File::open(self.blob_path(digest))
            .await
            .map_err(|e| self.io_error(format_args!("blob {digest}"), &e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.io_error(format_args!("blob {digest}"), &e))?;
        if meta.len() != descriptor.size {
            return Err(StageError::integrity(self.context(format!(
                "blob {digest} is {} bytes on disk, its descriptor says {}",
                meta.len(),
                descriptor.size
            ))));
        }
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file, READ_CHUNK,
        )))
    }

    /// Creates the layout directory, `oci-layout` and an empty `index.json` when missing.
    async fn ensure(&self) -> Result<(), StageError> {
        let _guard = INDEX_LOCK.lock().await;
        tokio::fs::create_dir_all(self.root.join("blobs"))
            .await
            .map_err(|e| self.io_error("creating the layout directory", &e))?;
        self.check_layout_file().await?;
        let layout = format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}");
        self.install_if_absent(LAYOUT_FILE, layout.as_bytes())
            .await?;
        let empty = index_bytes(self, &IndexFile::empty())?;
        self.install_if_absent(INDEX_FILE, &empty).await
    }

    /// Writes `root/name` atomically unless it exists (another writer's file is never replaced).
    async fn install_if_absent(&self, name: &str, content: &[u8]) -> Result<(), StageError> {
        let path = self.root.join(name);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error(format_args!("reading {name}"), &e)),
        }
        let tmp = self.write_temp(name, content).await?;
        // A hard link does not replace a file created meanwhile by another process.
        let result = match tokio::fs::hard_link(&tmp, &path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // Filesystems without hard links.
            Err(_) => tokio::fs::rename(&tmp, &path).await,
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result.map_err(|e| self.io_error(format_args!("writing {name}"), &e))
    }

    /// Writes `content` to a new temp file beside `root/name`, synced; removed again on failure.
    async fn write_temp(&self, name: &str, content: &[u8]) -> Result<PathBuf, StageError> {
        let (tmp, mut file) = self
            .create_temp(&self.root, &format!("{name}.tmp-"))
            .await?;
        let written = async {
            file.write_all(content).await?;
            file.sync_all().await
        }
        .await;
        drop(file);
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(self.io_error(format_args!("writing {name}"), &e))
            }
        }
    }

    /// Creates a new, uniquely named file `dir/<prefix>…`.
    async fn create_temp(
        &self,
        dir: &Path,
        prefix: &str,
    ) -> Result<(PathBuf, tokio::fs::File), StageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last_err = None;
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "{prefix}{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(self.io_error("creating a temporary file", &e)),
            }
        }
        let e = last_err.unwrap_or_else(|| std::io::Error::other("no unique name"));
        Err(self.io_error("creating a temporary file", &e))
    }

    /// Streams `content` into the blob store, verifying digest and size, and
    /// commits it (rename) only when the stream ended cleanly and matched.
    async fn write_blob(
        &self,
        digest: &Digest,
        size: u64,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let dir = self.blob_dir(digest);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.io_error("creating the blob directory", &e))?;
        let (tmp, file) = self.create_temp(&dir, ".tmp-").await?;
        let result = self
            .fill_and_commit(file, &tmp, digest, size, content)
            .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn fill_and_commit(
        &self,
        mut file: tokio::fs::File,
        tmp: &Path,
        digest: &Digest,
        size: u64,
        mut content: ByteStream,
    ) -> Result<(), StageError> {
        let mut verifier = Verifier::new(digest.algorithm());
        let mut seen: u64 = 0;
        while let Some(chunk) = content.next().await {
            let chunk =
                chunk.map_err(|e| self.io_error(format_args!("receiving blob {digest}"), &e))?;
            seen += chunk.len() as u64;
            if seen > size {
                return Err(StageError::integrity(self.context(format!(
                    "blob {digest}: received more than the {size} bytes announced"
                ))));
            }
            verifier.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| self.io_error(format_args!("writing blob {digest}"), &e))?;
        }
        if seen != size {
            return Err(StageError::integrity(self.context(format!(
                "blob {digest}: received {seen} bytes, {size} announced"
            ))));
        }
        let actual = verifier.finish();
        if &actual != digest {
            return Err(StageError::integrity(self.context(format!(
                "blob content does not match its digest: expected {digest}, got {actual}"
            ))));
        }
        let sync = async {
            file.flush().await?;
            file.sync_all().await
        };
        sync.await
            .map_err(|e| self.io_error(format_args!("writing blob {digest}"), &e))?;
        drop(file);
        tokio::fs::rename(tmp, self.blob_path(digest))
            .await
            .map_err(|e| self.io_error(format_args!("storing blob {digest}"), &e))
    }

    /// Points `tag` at `manifest` in `index.json`, replacing the tag's entry.
    async fn set_tag(&self, tag: &str, manifest: &RawManifest) -> Result<(), StageError> {
        let _guard = INDEX_LOCK.lock().await;
        let mut index = match self.read_index().await? {
            IndexState::Index(i) => i,
            IndexState::NoDir | IndexState::NoIndex => IndexFile::empty(),
        };
        let entry = IndexEntry {
            media_type: Some(manifest.media_type.clone()),
            digest: manifest.digest.to_string(),
            size: manifest.bytes.len() as u64,
            annotations: Some(BTreeMap::from([(
                REF_NAME_ANNOTATION.to_string(),
                tag.to_string(),
            )])),
            other: serde_json::Map::new(),
        };
        let mut placed = false;
        index.manifests.retain_mut(|e| {
            if e.ref_name() != Some(tag) {
                return true;
            }
            if placed {
                return false; // a duplicate entry for the tag
            }
            *e = entry.clone();
            placed = true;
            true
        });
        if !placed {
            index.manifests.push(entry);
        }
        let bytes = index_bytes(self, &index)?;
        self.replace_index(&bytes).await
    }

    /// Replaces `index.json` atomically.
    async fn replace_index(&self, bytes: &[u8]) -> Result<(), StageError> {
        let tmp = self.write_temp(INDEX_FILE, bytes).await?;
        let result = tokio::fs::rename(&tmp, self.root.join(INDEX_FILE)).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map_err(|e| self.io_error(format_args!("writing {INDEX_FILE}"), &e))
    }
}

// ---------------------------------------------------------------------------
// The stages

#[async_trait]
impl Source for OciLayoutSource {
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        OciLayoutSource::list_tags(self, repository).await
    }

    async fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        let layout = self.paths.layout(reference)?;
        match layout.lookup(reference, true).await? {
            Lookup::Found(found) => layout.read_manifest(&found).await,
            Lookup::Missing(why) => Err(StageError::not_found(why)),
        }
    }

    async fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        let layout = self.paths.layout(repository)?;
        let found = Found {
            media_type: Some(descriptor.media_type.clone()).filter(|m| !m.is_empty()),
            digest: descriptor.digest.clone(),
            size: Some(descriptor.size),
        };
        layout.read_manifest(&found).await
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.paths.layout(repository)?.open_blob(descriptor).await
    }
}

#[async_trait]
impl Sink for OciLayoutSink {
    async fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        let layout = self.paths.layout(target)?;
        Ok(match layout.lookup(target, false).await? {
            Lookup::Found(found) => Some(found.digest),
            Lookup::Missing(_) => None,
        })
    }

    async fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        let layout = self.paths.layout(target)?;
        match layout.lookup(target, false).await? {
            Lookup::Found(found) => layout.read_manifest(&found).await.map(Some),
            Lookup::Missing(_) => Ok(None),
        }
    }

    async fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<ByteStream, StageError> {
        self.paths.layout(repository)?.open_blob(descriptor).await
    }

    async fn has_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<bool, StageError> {
        let layout = self.paths.layout(repository)?;
        Ok(layout.blob_size(&descriptor.digest).await? == Some(descriptor.size))
    }

    async fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: ByteStream,
    ) -> Result<(), StageError> {
        let layout = self.paths.layout(repository)?;
        layout.ensure().await?;
        layout
            .write_blob(&descriptor.digest, descriptor.size, content)
            .await?;
        debug!(layout = %layout.root.display(), digest = %descriptor.digest, "blob stored");
        Ok(())
    }

    async fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        let layout = self.paths.layout(repository)?;
        if let Err(actual) = manifest.digest.verify(&manifest.bytes) {
            return Err(StageError::integrity(layout.context(format!(
                "manifest content does not match its digest: expected {}, got {actual}",
                manifest.digest
            ))));
        }
        layout.ensure().await?;
        let content: ByteStream = Box::pin(futures_util::stream::once(
            futures_util::future::ready(Ok(manifest.bytes.clone())),
        ));
        layout
            .write_blob(&manifest.digest, manifest.bytes.len() as u64, content)
            .await?;
        if let ManifestTarget::Tag(tag) = target {
            layout.set_tag(tag, manifest).await?;
        }
        debug!(layout = %layout.root.display(), digest = %manifest.digest, target = ?target, "manifest stored");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Registration

fn build_source(config: &ConfigValue, cx: &SourceContext) -> Result<Arc<dyn Source>, BuildError> {
    let _: OciLayoutConfig = typed_config(StageKind::Source, "oci-layout", config)?;
    Ok(Arc::new(OciLayoutSource::new(cx.base_dir.clone())))
}

fn build_sink(config: &ConfigValue, cx: &SinkContext) -> Result<Arc<dyn Sink>, BuildError> {
    let _: OciLayoutConfig = typed_config(StageKind::Sink, "oci-layout", config)?;
    Ok(Arc::new(OciLayoutSink::new(cx.base_dir.clone())))
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci-layout",
        description: "Reads images from an OCI image-layout directory: oci:PATH[:TAG] (PATH relative to the definition file)",
        config: ConfigDoc::of::<OciLayoutConfig>(),
        transport: Some(TRANSPORT),
        factory: || Factory::source(build_source),
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "oci-layout",
        description: "Writes images to an OCI image-layout directory, created if needed: oci:PATH:TAG (PATH relative to the definition file)",
        config: ConfigDoc::of::<OciLayoutConfig>(),
        transport: Some(TRANSPORT),
        factory: || Factory::sink(build_sink),
    }
}

#[cfg(test)]
mod tests;
