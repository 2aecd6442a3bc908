//! Carrying the source's signatures, attestations, SBOMs and referrers.

use std::sync::atomic::AtomicU64;

use super::copy::{check_manifest, ImageCopy, Walk};
use super::execute::Run;
use super::prepare::Item;
use super::registry_of;
use crate::digest::{AttachedTag, Digest};
use crate::manifest::{merged_referrers_index, Descriptor, Manifest, RawManifest};
use crate::reference::ImageRef;
use crate::stage::{ErrorKind, ManifestTarget, StageError};

/// At most this many referrers of one digest are carried.
const MAX_REFERRERS: usize = 256;

impl Run<'_> {
    /// Copies the source's cosign artifacts for `digest` (`.sig`, `.att`,
    /// `.sbom` tags) that the target lacks, verbatim, and its referrers,
    /// before any signature of ours is added. A cosign tag the target has is
    /// never overwritten. Returns what was carried and the layers of the
    /// source's `.sig` (upstream signatures).
    pub(super) async fn carry(
        &self,
        item: &Item,
        digest: &Digest,
    ) -> Result<(Vec<String>, Vec<Descriptor>), StageError> {
        let mut carried = Vec::new();
        let mut upstream = Vec::new();
        for kind in [
            AttachedTag::Signature,
            AttachedTag::Attestation,
            AttachedTag::Sbom,
        ] {
            let tag = kind.of(digest);
            let Some(m) = self.source_tag(item, &tag).await? else {
                continue;
            };
            if kind == AttachedTag::Signature {
                if let Ok(Manifest::Image { layers, .. }) = m.parse() {
                    upstream = layers;
                }
            }
            let to = item.target.with_tag(&tag);
            let present = self
                .settings
                .retry()
                .at(&registry_of(&to), "carried artifact", || {
                    item.sink.manifest_digest(&to)
                })
                .await?;
            if present.is_some() {
                continue;
            }
            if self.settings.dry_run {
                carried.push(format!("{tag} (would carry)"));
                continue;
            }
            let bytes = AtomicU64::new(0);
            let copy = self.copier(item, &bytes);
            copy.children(&m, 0, Walk::Ledger).await?;
            copy.put_manifest(&ManifestTarget::Tag(tag.clone()), &m, 0, "carried artifact")
                .await?;
            carried.push(tag);
        }
        let (mut referred, referrers) = self.carry_referrers(item, digest).await?;
        carried.append(&mut referred);
        // Referrers carried from the source are upstream provenance too.
        upstream.extend(referrers);
        Ok((carried, upstream))
    }

    /// The manifest under `tag` in the source, `None` when absent.
    async fn source_tag(&self, item: &Item, tag: &str) -> Result<Option<RawManifest>, StageError> {
        let from = item.spec.source.with_tag(tag);
        match self
            .settings
            .retry()
            .at(&registry_of(&from), "carried artifact", || {
                item.source.resolve(&from)
            })
            .await
        {
            Ok(m) => {
                check_manifest(&m, None, item.source.max_manifest_bytes())?;
                Ok(Some(m))
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn copier<'a>(&'a self, item: &'a Item, bytes: &'a AtomicU64) -> ImageCopy<'a> {
        ImageCopy {
            item,
            repo: &item.target,
            run: self,
            jobs: self.settings.jobs,
            retry: self.settings.retry(),
            bytes,
            progress: self.settings.progress.as_ref(),
        }
    }

    /// Carries the referrers of `digest`: read through the source's OCI 1.1
    /// referrers API when it has one, else from its referrers tag
    /// (`sha256-<hex>`). Each referrer manifest (with its blobs) is put by
    /// digest; a target with the API indexes them by their `subject`, one
    /// without gets them merged into its referrers tag's index: what is
    /// there is kept, what is missing added, nothing listed twice (a re-run
    /// adds nothing). Returns what was carried, and the source's referrers.
    async fn carry_referrers(
        &self,
        item: &Item,
        digest: &Digest,
    ) -> Result<(Vec<String>, Vec<Descriptor>), StageError> {
        let tag = AttachedTag::Referrers.of(digest);
        let source_ref = &item.spec.source;
        let api = self
            .settings
            .retry()
            .at(&registry_of(source_ref), "referrers", || {
                item.source.referrers(source_ref, digest)
            })
            .await?;
        let (listed, source_index) = match api {
            Some(list) => (list, None),
            None => match self.source_tag(item, &tag).await? {
                Some(index) => match index.parse() {
                    Ok(Manifest::Index { manifests }) => (manifests, Some(index)),
                    // Not an index: carried as the tag it is (as before).
                    _ => (Vec::new(), Some(index)),
                },
                None => return Ok((Vec::new(), Vec::new())),
            },
        };
        // The source's own index is carried verbatim only when none of it was cut.
        let whole = listed.len() <= MAX_REFERRERS;
        let listed: Vec<Descriptor> = listed.into_iter().take(MAX_REFERRERS).collect();
        let target_ref = &item.target;
        let target_api = self
            .settings
            .retry()
            .at(&registry_of(target_ref), "referrers", || {
                item.sink.referrers(target_ref, digest)
            })
            .await?;
        let to = target_ref.with_tag(&tag);
        let existing = match &target_api {
            Some(list) => list.clone(),
            None => match self
                .settings
                .retry()
                .at(&registry_of(&to), "referrers tag", || {
                    item.sink.fetch_manifest(&to)
                })
                .await?
            {
                Some(index) => match index.parse() {
                    Ok(Manifest::Index { manifests }) => manifests,
                    _ => Vec::new(),
                },
                None => Vec::new(),
            },
        };
        let tag_present = target_api.is_none() && !existing.is_empty();
        let missing: Vec<&Descriptor> = listed
            .iter()
            .filter(|d| !existing.iter().any(|e| e.digest == d.digest))
            .collect();
        // A source index that is not a list of referrers (or lists none):
        // carried verbatim when the target lacks the tag, as any tag.
        if missing.is_empty() {
            if let (Some(index), None, false) = (&source_index, &target_api, tag_present) {
                if listed.is_empty() && !self.target_has(item, &to).await? {
                    return Ok((self.put_index(item, &tag, index).await?, listed));
                }
            }
            return Ok((Vec::new(), listed));
        }
        if self.settings.dry_run {
            let would = missing
                .iter()
                .map(|d| format!("referrer {} (would carry)", d.digest))
                .collect();
            return Ok((would, listed));
        }
        let bytes = AtomicU64::new(0);
        let copy = self.copier(item, &bytes);
        let mut carried = Vec::new();
        for d in &missing {
            let m = self
                .settings
                .retry()
                .at(&registry_of(source_ref), "referrer", || {
                    item.source.fetch_manifest(source_ref, d)
                })
                .await?;
            check_manifest(&m, Some(&d.digest), item.source.max_manifest_bytes())?;
            copy.children(&m, 0, Walk::Ledger).await?;
            copy.put_manifest(&ManifestTarget::Digest, &m, 0, "referrer")
                .await?;
            carried.push(format!("referrer {}", d.digest));
        }
        if target_api.is_some() {
            return Ok((carried, listed));
        }
        // The target has no referrers API: its referrers tag lists them.
        // The source's own index, verbatim, when the target has none and
        // it lists exactly these; else the target's, with the missing added.
        let index = match (&source_index, tag_present) {
            (Some(index), false) if whole && missing.len() == listed.len() => Some(index.clone()),
            _ => {
                let added: Vec<Descriptor> = missing.iter().map(|d| (*d).clone()).collect();
                merged_referrers_index(&existing, &added)
            }
        };
        if let Some(index) = index {
            let mut tagged = self.put_index(item, &tag, &index).await?;
            carried.append(&mut tagged);
        }
        Ok((carried, listed))
    }

    async fn target_has(&self, item: &Item, to: &ImageRef) -> Result<bool, StageError> {
        Ok(self
            .settings
            .retry()
            .at(&registry_of(to), "referrers tag", || {
                item.sink.manifest_digest(to)
            })
            .await?
            .is_some())
    }

    /// Puts `index` under `tag` in the target (its children are present).
    async fn put_index(
        &self,
        item: &Item,
        tag: &str,
        index: &RawManifest,
    ) -> Result<Vec<String>, StageError> {
        if self.settings.dry_run {
            return Ok(vec![format!("{tag} (would carry)")]);
        }
        let bytes = AtomicU64::new(0);
        let copy = self.copier(item, &bytes);
        copy.children(index, 0, Walk::Ledger).await?;
        copy.put_manifest(
            &ManifestTarget::Tag(tag.to_string()),
            index,
            0,
            "referrers tag",
        )
        .await?;
        Ok(vec![tag.to_string()])
    }
}
