//! Manifests: pulled (and checked against their digest), looked up by
//! `HEAD`, and the registry's `ratelimit-remaining` passed on to the flow
//! control. Pushed in `transfer.rs`.

use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{RawManifest, ACCEPTED_MANIFEST_TYPES};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ErrorKind, StageError};
use oci_client::errors::OciDistributionError;
use oci_client::Reference;

use crate::errors::classify;
use crate::OciRegistry;

impl OciRegistry {
    /// Passes the registry's count of requests left (Docker Hub's
    /// `ratelimit-remaining: 76;w=21600`), when it sent one, on to the run's
    /// flow control, which then runs at most that many requests at once.
    pub(crate) fn pass_on_ratelimit(&self, r: &ImageRef, reference: &Reference) {
        let value = self
            .client
            .ratelimit_remaining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference.resolve_registry())
            .cloned();
        if let Some(n) = value.as_deref().and_then(parse_ratelimit_remaining) {
            self.registries.flow.remaining(r.registry(), n);
        }
    }

    /// Pulls manifest `r` (of `media_type`, when known), checked against
    /// `expected`, else the digest `r` names.
    pub(crate) async fn pull_manifest(
        &self,
        r: &ImageRef,
        media_type: Option<&str>,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, StageError> {
        let what = || format!("{r}: fetching manifest");
        let (bytes, _digest) = self
            .answered(what, async {
                let (reference, auth) = self.prepare_authed(r).await?;
                let pulled = self
                    .client
                    .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFEST_TYPES)
                    .await;
                self.pass_on_ratelimit(r, &reference);
                pulled.map_err(|e| match e {
                    OciDistributionError::ManifestTooLarge { size, limit } => {
                        StageError::invalid(too_large(r, size, limit))
                    }
                    e => classify(&what(), e, r),
                })
            })
            .await?;
        RawManifest::new(media_type, bytes, expected.or(r.digest())).map_err(|e| {
            let kind = match e {
                image_syncer_core::manifest::ManifestError::Digest { .. } => ErrorKind::Integrity,
                _ => ErrorKind::Invalid,
            };
            StageError::new(kind, format!("{r}: {e}"))
        })
    }

    /// The digest tag or digest `r` names in the registry (`HEAD`); `None`
    /// when the registry does not know it.
    pub(crate) async fn head_manifest(&self, r: &ImageRef) -> Result<Option<Digest>, StageError> {
        let what = || format!("{r}: looking up manifest");
        let found = self
            .answered(what, async {
                let (reference, auth) = self.prepare_authed(r).await?;
                let found = match self.client.fetch_manifest_digest(&reference, &auth).await {
                    Err(OciDistributionError::ManifestTooLarge { size, limit }) => {
                        return Err(StageError::invalid(too_large(r, size, limit)))
                    }
                    found => found,
                };
                self.pass_on_ratelimit(r, &reference);
                Ok(found)
            })
            .await?;
        match found {
            Ok(d) => d.parse().map(Some).map_err(|e| {
                StageError::invalid(format!("{r}: registry answered an invalid digest: {e}"))
            }),
            Err(e) => {
                let e = classify(&what(), e, r);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// "manifest REF is N bytes, over the 4 MiB limit" (or "more than" when the
/// registry declared no size and the body ran past the limit).
fn too_large(r: &ImageRef, size: Option<u64>, limit: usize) -> String {
    match size {
        Some(n) => {
            image_syncer_core::manifest::too_large(&r.to_string(), n, limit) + " (maxManifestBytes)"
        }
        None => format!(
            "manifest {r} is larger than the {} limit (maxManifestBytes)",
            image_syncer_core::manifest::size_for_people(limit)
        ),
    }
}

/// The count in a `ratelimit-remaining` value (`76;w=21600`, or `76`).
fn parse_ratelimit_remaining(value: &str) -> Option<u64> {
    value.split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_remaining_reads_the_count() {
        assert_eq!(parse_ratelimit_remaining("76;w=21600"), Some(76));
        assert_eq!(parse_ratelimit_remaining(" 0 "), Some(0));
        assert_eq!(parse_ratelimit_remaining("lots"), None);
    }
}
