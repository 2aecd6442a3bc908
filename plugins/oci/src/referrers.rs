//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), as
//! answered: `None` on 404 (no such API: the engine reads the referrers tag
//! schema itself).

use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::Descriptor;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::StageError;
use oci_client::errors::OciDistributionError;
use serde::Deserialize;
use tracing::debug;

use crate::errors::classify;
use crate::OciRegistry;

impl OciRegistry {
    /// The referrers of `digest` in `repository` (its tag or digest, if any,
    /// is ignored) through the OCI 1.1 referrers API,
    /// `GET /v2/<name>/referrers/<digest>`: the `manifests` of the image
    /// index it answers, as served (`artifactType`, `annotations`), in its
    /// order. `None` when the registry answered 404: it has no referrers API
    /// (one that has it answers an empty index for a digest without
    /// referrers); the referrers tag schema then applies. Never falls back
    /// by itself.
    ///
    /// Bounded like manifests: an answer over `maxManifestBytes` is refused
    /// before it is read whole, and it must come in full within
    /// `readTimeoutSeconds`. An answer that is not an OCI image index is
    /// `Invalid`; refusals and failures are classified as for manifests
    /// (401/403 `Unauthorized`, 429/5xx transient with pushback and
    /// `Retry-After`).
    pub async fn referrers(
        &self,
        repository: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StageError> {
        let r = repository.with_digest(digest.clone());
        let what = || format!("{r}: listing referrers");
        let answer = self
            .answered(what, async {
                let (reference, auth) = self.prepare_authed(&r).await?;
                self.client
                    .pull_referrers_raw(&reference, &auth, self.max_manifest)
                    .await
                    .map_err(|e| match e {
                        OciDistributionError::ManifestTooLarge { size, limit } => {
                            StageError::invalid(format!(
                                "{}: {}",
                                what(),
                                referrers_too_large(r.registry(), size, limit)
                            ))
                        }
                        e => classify(&what(), e, &r),
                    })
            })
            .await?;
        let Some((body, content_type)) = answer else {
            debug!(%r, "no referrers API (404)");
            return Ok(None);
        };
        parse_referrers(&body, content_type.as_deref())
            .map(Some)
            .map_err(|why| {
                StageError::invalid(format!(
                    "{}: registry {} answered something other than an OCI image index: {why}",
                    what(),
                    r.registry()
                ))
            })
    }
}

/// "registry R answered a referrers index of N bytes, over the 4 MiB limit".
fn referrers_too_large(registry: &str, size: Option<u64>, limit: usize) -> String {
    let limit_text = image_syncer_core::manifest::size_for_people(limit);
    match size {
        Some(n) => format!(
            "registry {registry} answered a referrers index of {n} bytes, over the {limit_text} limit (maxManifestBytes)"
        ),
        None => format!(
            "registry {registry} answered a referrers index larger than the {limit_text} limit (maxManifestBytes)"
        ),
    }
}

/// The descriptors of a referrers API answer: an OCI image index
/// (`schemaVersion` 2, media type `application/vnd.oci.image.index.v1+json`
/// in the body or, when the body names none, in `Content-Type`), its
/// `manifests` as served. Why not, otherwise.
fn parse_referrers(body: &[u8], content_type: Option<&str>) -> Result<Vec<Descriptor>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Index {
        schema_version: u32,
        media_type: Option<String>,
        manifests: Option<Vec<Descriptor>>,
    }
    let index: Index = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if index.schema_version != 2 {
        return Err(format!("schemaVersion {}, not 2", index.schema_version));
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or_default().trim());
    let Some(media_type) = index.media_type.as_deref().or(header) else {
        return Err("no media type, in the body or in `Content-Type`".into());
    };
    if media_type != image_syncer_core::manifest::OCI_INDEX {
        return Err(format!(
            "media type `{media_type}`, not `{}`",
            image_syncer_core::manifest::OCI_INDEX
        ));
    }
    index
        .manifests
        .ok_or_else(|| "no `manifests` list".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_referrers_answer_must_be_an_oci_index() {
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
        let listed = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"artifactType":"application/example","annotations":{{"a":"b"}}}}]}}"#
        );
        let found = parse_referrers(listed.as_bytes(), None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].artifact_type.as_deref(),
            Some("application/example")
        );
        assert_eq!(found[0].annotations.as_ref().unwrap()["a"], "b");
        // No media type in the body: the header's, parameters aside.
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        let index = "application/vnd.oci.image.index.v1+json; charset=utf-8";
        assert_eq!(parse_referrers(bare.as_bytes(), Some(index)), Ok(vec![]));
        let refused: Vec<String> = [
            (bare, None),
            (bare, Some("application/json")),
            (r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#, Some(index)),
            (r#"{"schemaVersion":1,"manifests":[]}"#, Some(index)),
            (r#"{"schemaVersion":2}"#, Some(index)),
            ("404 page not found", Some(index)),
        ]
        .iter()
        .map(|(body, ct)| parse_referrers(body.as_bytes(), *ct).unwrap_err())
        .collect();
        insta::assert_snapshot!(refused.join("\n"), @r"
        no media type, in the body or in `Content-Type`
        media type `application/json`, not `application/vnd.oci.image.index.v1+json`
        media type `application/vnd.oci.image.manifest.v1+json`, not `application/vnd.oci.image.index.v1+json`
        schemaVersion 1, not 2
        no `manifests` list
        invalid type: integer `404`, expected struct Index at line 1 column 3
        ");
    }
}
