//! Example dynamic plugin: images as directories in skopeo's `dir:` format
//! (containers/image "Directory Transport Version 1.1"), for air-gapped
//! transfers and for handing images to skopeo, podman or buildah.
//!
//! A directory holds one image: `manifest.json` (the tagged manifest), one
//! file per blob named by its hex digest, child manifests of an index as
//! `<hex>.manifest.json`, and a `version` file.
//!
//! References: `dir:PATH` is the image in PATH (what `skopeo copy … dir:PATH`
//! writes); `dir:PATH:TAG` is the image in PATH/TAG, so a target prefix
//! `dir:out/` stores `busybox:1.36` in `out/library/busybox/1.36/`. The tags
//! of `dir:PATH` (for an entry selecting tags, `tags:`) are the
//! subdirectories of PATH holding an image.
//!
//! Everything here is plain blocking `std::fs`: the plugin boundary is
//! blocking, and the host runs these calls on its blocking pool.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use image_syncer_plugin::core::catalogue::{typed_config, BuildError, ConfigValue};
use image_syncer_plugin::core::context::{SinkContext, SourceContext};
use image_syncer_plugin::core::digest::{Digest, Verifier};
use image_syncer_plugin::core::manifest::{Descriptor, RawManifest};
use image_syncer_plugin::core::reference::ImageRef;
use image_syncer_plugin::core::stage::{
    ErrorKind, ManifestTarget, RepositoryUse, StageError, StageKind,
};
use image_syncer_plugin::{
    BlockingSink, BlockingSource, PluginFactory, Registrar, StageDeclaration,
};
use serde::Deserialize;

const VERSION: &str = "Directory Transport Version: 1.1\n";

/// No settings; unknown keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirConfig {}

struct Dir {
    base: PathBuf,
}

fn io_err(what: &Path, e: std::io::Error) -> StageError {
    StageError::from_io(&what.display().to_string(), &e)
}

impl Dir {
    /// The directory of an image reference.
    fn path(&self, r: &ImageRef) -> Result<PathBuf, StageError> {
        if r.transport() != Some("dir") {
            return Err(StageError::config(format!("{r}: not a dir: reference")));
        }
        let mut p = self.base.join(r.repository_as_written());
        if let Some(tag) = r.tag() {
            p = p.join(tag);
        }
        Ok(p)
    }

    fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
        dir.join(d.hex())
    }

    fn read_manifest(
        &self,
        file: &Path,
        media: Option<&str>,
        expected: Option<&Digest>,
    ) -> Result<Option<RawManifest>, StageError> {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(file, e)),
        };
        RawManifest::new(media, Bytes::from(bytes), expected)
            .map(Some)
            .map_err(|e| {
                let kind = match e {
                    image_syncer_plugin::core::manifest::ManifestError::Digest { .. } => {
                        ErrorKind::Integrity
                    }
                    _ => ErrorKind::Invalid,
                };
                StageError::new(kind, format!("{}: {e}", file.display()))
            })
    }

    /// The manifest a reference names: by digest (child or top), else manifest.json.
    fn lookup(
        &self,
        r: &ImageRef,
        descriptor: Option<&Descriptor>,
    ) -> Result<Option<RawManifest>, StageError> {
        let dir = self.path(r)?;
        let digest = descriptor.map(|d| &d.digest).or(r.digest());
        let media = descriptor.map(|d| d.media_type.as_str());
        match digest {
            None => self.read_manifest(&dir.join("manifest.json"), None, None),
            Some(d) => {
                if let Some(m) = self.read_manifest(
                    &dir.join(format!("{}.manifest.json", d.hex())),
                    media,
                    Some(d),
                )? {
                    return Ok(Some(m));
                }
                match self.read_manifest(&dir.join("manifest.json"), media, None)? {
                    Some(m) if &m.digest == d => Ok(Some(m)),
                    _ => Ok(None),
                }
            }
        }
    }

    fn open_blob(&self, r: &ImageRef, d: &Descriptor) -> Result<Box<dyn Read + Send>, StageError> {
        let dir = self.path(r)?;
        let p = Self::blob_path(&dir, &d.digest);
        let f = File::open(&p).map_err(|e| io_err(&p, e))?;
        Ok(Box::new(f))
    }

    /// Writes `file` atomically: temp file in the same directory, then rename.
    fn write_atomic(
        file: &Path,
        content: &mut dyn Read,
        expected: Option<&Descriptor>,
    ) -> Result<(), StageError> {
        let dir = file.parent().expect("files live in a directory");
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let version = dir.join("version");
        if !version.exists() {
            std::fs::write(&version, VERSION).map_err(|e| io_err(&version, e))?;
        }
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            file.file_name().unwrap().to_string_lossy()
        ));
        let result = (|| {
            let mut out = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            let mut verifier = expected.map(|d| (Verifier::new(d.digest.algorithm()), d));
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = content.read(&mut buf).map_err(|e| io_err(file, e))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if let Some((v, _)) = verifier.as_mut() {
                    v.update(&buf[..n]);
                }
                out.write_all(&buf[..n]).map_err(|e| io_err(&tmp, e))?;
            }
            if let Some((v, d)) = verifier {
                let actual = v.finish();
                if actual != d.digest || total != d.size {
                    return Err(StageError::integrity(format!(
                        "{}: content is {actual} ({total} bytes), expected {} ({} bytes)",
                        file.display(),
                        d.digest,
                        d.size
                    )));
                }
            }
            out.sync_all().map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, file).map_err(|e| io_err(file, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

impl BlockingSource for Dir {
    /// The tags of `dir:PATH`: the subdirectories of PATH holding an image
    /// (`PATH/TAG/manifest.json`, what `dir:PATH:TAG` names), sorted.
    fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        let root = self.path(&repository.with_tag("x"))?;
        let root = root.parent().unwrap_or(&root).to_path_buf();
        let entries = std::fs::read_dir(&root)
            .map_err(|e| StageError::from_io(&format!("{repository}: {}", root.display()), &e))?;
        let mut tags = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                StageError::from_io(&format!("{repository}: {}", root.display()), &e)
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join("manifest.json").is_file() {
                tags.push(name);
            }
        }
        tags.sort();
        Ok(tags)
    }

    fn resolve(&self, reference: &ImageRef) -> Result<RawManifest, StageError> {
        self.lookup(reference, None)?.ok_or_else(|| {
            StageError::not_found(format!(
                "{reference}: no manifest.json in {}",
                self.path(reference)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        })
    }

    fn fetch_manifest(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<RawManifest, StageError> {
        self.lookup(repository, Some(descriptor))?.ok_or_else(|| {
            StageError::not_found(format!(
                "{repository}: manifest {} not in the directory",
                descriptor.digest
            ))
        })
    }

    fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, StageError> {
        self.open_blob(repository, descriptor)
    }
}

impl BlockingSink for Dir {
    fn manifest_digest(&self, target: &ImageRef) -> Result<Option<Digest>, StageError> {
        Ok(self.lookup(target, None)?.map(|m| m.digest))
    }

    fn fetch_manifest(&self, target: &ImageRef) -> Result<Option<RawManifest>, StageError> {
        self.lookup(target, None)
    }

    fn fetch_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, StageError> {
        self.open_blob(repository, descriptor)
    }

    fn has_blob(&self, repository: &ImageRef, descriptor: &Descriptor) -> Result<bool, StageError> {
        let p = Self::blob_path(&self.path(repository)?, &descriptor.digest);
        Ok(std::fs::metadata(&p).is_ok_and(|m| m.len() == descriptor.size))
    }

    fn put_blob(
        &self,
        repository: &ImageRef,
        descriptor: &Descriptor,
        content: &mut dyn Read,
    ) -> Result<(), StageError> {
        let p = Self::blob_path(&self.path(repository)?, &descriptor.digest);
        Self::write_atomic(&p, content, Some(descriptor))?;
        // Shown by the host under its own filter (`--debug`).
        image_syncer_plugin::tracing::debug!(digest = %descriptor.digest, path = %p.display(), "blob written");
        Ok(())
    }

    fn put_manifest(
        &self,
        repository: &ImageRef,
        target: &ManifestTarget,
        manifest: &RawManifest,
    ) -> Result<(), StageError> {
        let (dir, name) = match target {
            ManifestTarget::Tag(t) => (
                self.path(&repository.with_tag(t))?,
                "manifest.json".to_string(),
            ),
            ManifestTarget::Digest => (
                self.path(repository)?,
                format!("{}.manifest.json", manifest.digest.hex()),
            ),
        };
        let descriptor = manifest.descriptor();
        Self::write_atomic(
            &dir.join(name),
            &mut manifest.bytes.as_ref(),
            Some(&descriptor),
        )
    }

    /// The repository's directory (one subdirectory per tag), made before
    /// the first write into it; in a dry run, only said.
    fn prepare_repository(
        &self,
        repository: &ImageRef,
        how: &RepositoryUse,
    ) -> Result<Option<String>, StageError> {
        let dir = self.path(&repository.with_tag("_"))?;
        let dir = dir.parent().expect("a tag's directory has a parent");
        if dir.is_dir() {
            return Ok(None);
        }
        let name = format!("dir:{}", repository.repository_as_written());
        if how.dry_run {
            return Ok(Some(format!("would create directory {name}")));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(Some(format!("created directory {name}")))
    }
}

/// The layouts under `base_dir`, after checking the (empty) config.
fn dir(kind: StageKind, config: &ConfigValue, base_dir: &Path) -> Result<Dir, BuildError> {
    let _: DirConfig = typed_config(kind, "dir", config)?;
    Ok(Dir {
        base: base_dir.to_path_buf(),
    })
}

fn register(r: &mut Registrar) {
    let declare = |what: &str, factory: PluginFactory| {
        StageDeclaration {
        name: "dir".into(),
        description: format!("{what} images in skopeo's dir: format: dir:PATH, or dir:PATH:TAG for PATH/TAG (example plugin)"),
        example_config: "{}\n".into(),
        config_schema: None,
        transport: Some("dir".into()),
        factory,
    }
    };
    r.register(declare(
        "Reads",
        PluginFactory::source(|config: &ConfigValue, cx: &SourceContext| {
            Ok(Box::new(dir(StageKind::Source, config, &cx.base_dir)?) as Box<dyn BlockingSource>)
        }),
    ));
    r.register(declare(
        "Writes",
        PluginFactory::sink(|config: &ConfigValue, cx: &SinkContext| {
            Ok(Box::new(dir(StageKind::Sink, config, &cx.base_dir)?) as Box<dyn BlockingSink>)
        }),
    ));
}

image_syncer_plugin::declare_plugin!(register);
