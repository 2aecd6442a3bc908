//! Carrying the source's signatures, attestations, SBOMs and referrers tag.

use super::*;
use crate::digest::AttachedTag;

impl Prepared {
    /// Copies the source's cosign artifacts for `digest` (`.sig`, `.att`,
    /// `.sbom`) and its referrers tag (`sha256-<hex>`, OCI 1.1's tag schema)
    /// that the target lacks, verbatim, before any signature of ours is added.
    /// A tag the target has is never overwritten. Returns the tags carried and
    /// the layers of the source's `.sig` (upstream signatures).
    pub(super) async fn carry(
        &self,
        item: &Item,
        digest: &Digest,
        run: &Run,
    ) -> Result<(Vec<String>, Vec<Descriptor>), StageError> {
        let mut carried = Vec::new();
        let mut upstream = Vec::new();
        for kind in AttachedTag::ALL {
            let tag = kind.of(digest);
            let from = item.spec.source.with_tag(&tag);
            let m = match self
                .retry()
                .at(&registry_of(&from), "carried artifact", || {
                    item.source.resolve(&from)
                })
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            check_manifest(&m, None, item.source.max_manifest_bytes())?;
            if kind == AttachedTag::Signature {
                if let Ok(Manifest::Image { layers, .. }) = m.parse() {
                    upstream = layers;
                }
            }
            let to = item.target.with_tag(&tag);
            let present = self
                .retry()
                .at(&registry_of(&to), "carried artifact", || {
                    item.sink.manifest_digest(&to)
                })
                .await?;
            if present.is_some() {
                continue;
            }
            if self.dry_run {
                carried.push(format!("{tag} (would carry)"));
                continue;
            }
            let bytes = AtomicU64::new(0);
            let copy = ImageCopy {
                item,
                repo: &item.target,
                run,
                jobs: self.jobs,
                retry: self.retry(),
                bytes: &bytes,
                progress: self.progress.as_ref(),
            };
            copy.children(&m, 0, Walk::Ledger).await?;
            copy.put_manifest(&ManifestTarget::Tag(tag.clone()), &m, 0, "carried artifact")
                .await?;
            carried.push(tag);
        }
        Ok((carried, upstream))
    }
}
