//! Manifests and descriptors. Manifests are kept as the exact bytes a registry
//! served, so that their digest is preserved bit for bit; the parsed view is only
//! used to walk to children and blobs.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The largest manifest a source may serve, unless it says otherwise
/// ([`crate::stage::Source::max_manifest_bytes`]): 4 MiB, what the
/// distribution registry accepts on push. Real manifests are kilobytes.
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 << 20;

/// How deep indexes may nest (an index whose child is an index, ...). Real
/// images nest one level, sometimes two; the image spec sets no bound.
pub const MAX_INDEX_DEPTH: usize = 8;

/// `4 MiB`, `512 KiB`, `1000 bytes`: a size limit for people.
pub fn size_for_people(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// The refusal of a manifest over `limit`: "manifest … is N bytes, over the
/// 4 MiB limit". `what` names it (a reference, a digest).
pub fn too_large(what: &str, size: u64, limit: usize) -> String {
    format!(
        "manifest {what} is {size} bytes, over the {} limit",
        size_for_people(limit)
    )
}

/// Media types of manifests a source is asked for, in preference order.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// Layer media types that are not distributable (Windows foreign layers): never copied.
const NON_DISTRIBUTABLE: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// An OCI descriptor: what a manifest says about one piece of content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// The artifact type of the manifest described (in a referrers index).
    #[serde(
        default,
        rename = "artifactType",
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor of `size` bytes of `media_type` at `digest`, nothing else.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            urls: Vec::new(),
            annotations: None,
            artifact_type: None,
        }
    }

    /// Whether the blob is hosted elsewhere by design (foreign/non-distributable layers).
    pub fn is_non_distributable(&self) -> bool {
        NON_DISTRIBUTABLE.contains(&self.media_type.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest as served: media type, exact bytes and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawManifest {
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: Digest,
}

/// The parsed view of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image: config plus layers.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    /// A multi-platform index / manifest list.
    Index { manifests: Vec<Descriptor> },
}

/// Why manifest bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("Docker schema 1 manifests are deprecated and not supported; push the image again with a current client")]
    Schema1,
    #[error("unsupported manifest media type `{0}`")]
    MediaType(String),
    #[error("manifest content does not match its digest: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

impl RawManifest {
    /// Wraps bytes, computing their digest in the algorithm of `expected` (when
    /// given) and failing if it differs.
    pub fn new(
        media_type: Option<&str>,
        bytes: Bytes,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, ManifestError> {
        let digest = match expected {
            Some(e) => {
                e.verify(&bytes).map_err(|actual| ManifestError::Digest {
                    expected: e.clone(),
                    actual,
                })?;
                e.clone()
            }
            None => Digest::sha256_of(&bytes),
        };
        let wire: Wire =
            serde_json::from_slice(&bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let media_type = match (media_type, &wire.media_type) {
            (_, Some(inner)) => inner.clone(),
            (Some(outer), None) if !outer.is_empty() => outer.to_string(),
            // OCI allows omitting mediaType; infer from the shape.
            _ if wire.manifests.is_some() => OCI_INDEX.to_string(),
            _ if wire.schema_version == Some(1) => DOCKER_SCHEMA1.to_string(),
            _ => OCI_MANIFEST.to_string(),
        };
        let raw = RawManifest {
            media_type,
            bytes,
            digest,
        };
        raw.parse()?;
        Ok(raw)
    }

    /// The parsed view.
    pub fn parse(&self) -> Result<Manifest, ManifestError> {
        let wire: Wire =
            serde_json::from_slice(&self.bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        match self.media_type.as_str() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Manifest::Index {
                manifests: wire.manifests.unwrap_or_default(),
            }),
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Manifest::Image {
                config: wire
                    .config
                    .ok_or_else(|| ManifestError::Json("image manifest without config".into()))?,
                layers: wire.layers.unwrap_or_default(),
            }),
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(ManifestError::Schema1),
            other => Err(ManifestError::MediaType(other.to_string())),
        }
    }

    pub fn is_index(&self) -> bool {
        matches!(self.media_type.as_str(), OCI_INDEX | DOCKER_MANIFEST_LIST)
    }

    /// The descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone(),
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// The referrers tag schema's index (`sha256-<hex>`) for a registry without
/// the referrers API: the descriptors `existing` lists, and those of `added`
/// it does not list yet, sorted by digest (as go-containerregistry writes
/// it). `None` when nothing is added: what is there is kept, nothing is
/// listed twice.
pub fn merged_referrers_index(
    existing: &[Descriptor],
    added: &[Descriptor],
) -> Option<RawManifest> {
    let mut all: Vec<Descriptor> = existing.to_vec();
    let before = all.len();
    for d in added {
        if !all.iter().any(|e| e.digest == d.digest) {
            all.push(d.clone());
        }
    }
    if all.len() == before {
        return None;
    }
    all.sort_by(|a, b| a.digest.cmp(&b.digest));
    let json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": all,
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&json).expect("an index serializes"));
    Some(RawManifest::new(Some(OCI_INDEX), bytes, None).expect("an index we wrote parses"))
}

/// What a platform filter makes of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Not an index, or nothing to filter: copied as it is.
    Unchanged,
    /// One platform asked for and present: that child manifest is the image.
    Single(Descriptor),
    /// A new index holding only the matching children (other fields kept).
    Index(RawManifest),
}

/// Whether a descriptor's platform is `os/arch[/variant]`.
fn platform_matches(d: &Descriptor, wanted: &str) -> bool {
    let Some(p) = &d.platform else { return false };
    let mut parts = wanted.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    Some(p.os.as_str()) == os
        && Some(p.architecture.as_str()) == arch
        && variant.is_none_or(|v| p.variant.as_deref() == Some(v))
}

/// Keeps only `platforms` of an index. The new index is serialized
/// deterministically (same input, same bytes, same digest), so that a later
/// run computes the same digest and the immutability guard can compare it.
pub fn filter_platforms(m: &RawManifest, platforms: &[String]) -> Result<Filtered, String> {
    if platforms.is_empty() || !m.is_index() {
        return Ok(Filtered::Unchanged);
    }
    let Manifest::Index { manifests } = m.parse().map_err(|e| e.to_string())? else {
        return Ok(Filtered::Unchanged);
    };
    let keep: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| platforms.iter().any(|p| platform_matches(d, p)))
        .collect();
    if keep.is_empty() {
        let available: Vec<String> = manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect();
        return Err(format!(
            "the index has none of the platforms asked for ({}); it has: {}",
            platforms.join(", "),
            available.join(", ")
        ));
    }
    if platforms.len() == 1 && keep.len() == 1 {
        return Ok(Filtered::Single(keep[0].clone()));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&m.bytes).map_err(|e| e.to_string())?;
    let digests: Vec<String> = keep.iter().map(|d| d.digest.to_string()).collect();
    if let Some(list) = value.get_mut("manifests").and_then(|l| l.as_array_mut()) {
        list.retain(|entry| {
            entry
                .get("digest")
                .and_then(|d| d.as_str())
                .is_some_and(|d| digests.iter().any(|k| k == d))
        });
    }
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    RawManifest::new(Some(&m.media_type), bytes, None)
        .map(Filtered::Index)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

    #[test]
    fn parses_image_and_keeps_bytes() {
        let m = RawManifest::new(None, Bytes::from_static(IMAGE.as_bytes()), None).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.digest, Digest::sha256_of(IMAGE.as_bytes()));
        assert!(matches!(m.parse().unwrap(), Manifest::Image { .. }));
    }

    #[test]
    fn rejects_wrong_digest() {
        let other = Digest::sha256_of(b"x");
        let err =
            RawManifest::new(None, Bytes::from_static(IMAGE.as_bytes()), Some(&other)).unwrap_err();
        assert!(matches!(err, ManifestError::Digest { .. }));
    }

    #[test]
    fn rejects_schema1() {
        let err = RawManifest::new(None, Bytes::from_static(br#"{"schemaVersion":1}"#), None)
            .unwrap_err();
        assert_eq!(err, ManifestError::Schema1);
    }

    fn index_of(platforms: &[(&str, &str, Option<&str>)]) -> RawManifest {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(&[i as u8]).to_string(), "size": 1, "platform": p})
            })
            .collect();
        let v = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, "annotations": {"keep": "me"}});
        RawManifest::new(None, Bytes::from(serde_json::to_vec(&v).unwrap()), None).unwrap()
    }

    #[test]
    fn platform_filters() {
        let idx = index_of(&[
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("linux", "s390x", None),
        ]);
        let want = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(filter_platforms(&idx, &[]).unwrap(), Filtered::Unchanged);
        match filter_platforms(&idx, &want(&["linux/amd64"])).unwrap() {
            Filtered::Single(d) => assert_eq!(d.platform.unwrap().architecture, "amd64"),
            other => panic!("{other:?}"),
        }
        let two = filter_platforms(&idx, &want(&["linux/amd64", "linux/arm64/v8"])).unwrap();
        let Filtered::Index(m) = two else {
            panic!("{two:?}")
        };
        let Manifest::Index { manifests } = m.parse().unwrap() else {
            panic!()
        };
        assert_eq!(manifests.len(), 2);
        assert!(String::from_utf8_lossy(&m.bytes).contains("\"keep\":\"me\""));
        // Deterministic: the same filter gives the same digest.
        let again = filter_platforms(&idx, &want(&["linux/amd64", "linux/arm64/v8"])).unwrap();
        assert_eq!(again, Filtered::Index(m));
        let err = filter_platforms(&idx, &want(&["windows/amd64"])).unwrap_err();
        insta::assert_snapshot!(err);
    }
}
