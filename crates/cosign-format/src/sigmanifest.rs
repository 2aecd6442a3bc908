//! cosign's classic signature storage: an OCI manifest under the tag
//! `sha256-<hex>.sig` whose layers are simple-signing payloads, each carrying
//! its signature in the `dev.cosignproject.cosign/signature` annotation.

use std::collections::BTreeMap;

use bytes::Bytes;
use image_syncer_core::digest::{AttachedTag, Digest};
use image_syncer_core::manifest::{Descriptor, RawManifest, OCI_MANIFEST};
use serde::Serialize;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The tag holding the signatures of `digest`: `sha256-<hex>.sig` (the
/// rule is the core's [`AttachedTag`], shared with carrying).
pub fn signature_tag(digest: &Digest) -> String {
    AttachedTag::Signature.of(digest)
}

/// One signature layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLayer {
    pub descriptor: Descriptor,
    /// The base64 signature from the annotation, when present.
    pub signature: Option<String>,
}

impl SignatureLayer {
    /// The layer's annotation `key` (a keyless signature's certificate,
    /// chain and Rekor bundle are annotations of its layer).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

/// The layers of a signature manifest (all layers, signatures or not).
pub fn layers(manifest: &RawManifest) -> Result<Vec<SignatureLayer>, String> {
    match manifest.parse().map_err(|e| e.to_string())? {
        image_syncer_core::manifest::Manifest::Image { layers, .. } => Ok(layers
            .into_iter()
            .map(|d| SignatureLayer {
                signature: d
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SIGNATURE_ANNOTATION))
                    .cloned(),
                descriptor: d,
            })
            .collect()),
        _ => Err("the signature tag holds an index, not a signature manifest".into()),
    }
}

// Field order follows go-containerregistry's structs, as cosign writes them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDescriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: WireDescriptor<'a>,
    layers: Vec<WireDescriptor<'a>>,
}

/// The config blob cosign writes for a signature image with these layers.
pub fn config_blob(layers: &[Descriptor]) -> Bytes {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", l.digest)).collect();
    let history: Vec<&str> = layers
        .iter()
        .map(|_| "{\"created\":\"0001-01-01T00:00:00Z\"}")
        .collect();
    Bytes::from(format!(
        "{{\"architecture\":\"\",\"created\":\"0001-01-01T00:00:00Z\",\"history\":[{}],\"os\":\"\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}},\"config\":{{}}}}",
        history.join(","),
        diff_ids.join(",")
    ))
}

/// A new signature layer descriptor for `payload` signed with `signature_b64`.
pub fn signature_layer(payload: &[u8], signature_b64: &str) -> Descriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(SIGNATURE_ANNOTATION.to_string(), signature_b64.to_string());
    Descriptor {
        annotations: Some(annotations),
        ..Descriptor::new(
            SIMPLE_SIGNING,
            Digest::sha256_of(payload),
            payload.len() as u64,
        )
    }
}

/// The signature manifest with `existing` layers kept (in order) and `new`
/// appended unless an identical layer is already there. Returns the manifest
/// and its config blob.
pub fn build(existing: &[Descriptor], new: &Descriptor) -> (RawManifest, Bytes) {
    let mut all: Vec<Descriptor> = existing.to_vec();
    if !all.iter().any(|d| d == new) {
        all.push(new.clone());
    }
    let config = config_blob(&all);
    let wire = WireManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: WireDescriptor {
            media_type: CONFIG_MEDIA_TYPE,
            size: config.len() as u64,
            digest: Digest::sha256_of(&config).to_string(),
            annotations: None,
        },
        layers: all
            .iter()
            .map(|d| WireDescriptor {
                media_type: &d.media_type,
                size: d.size,
                digest: d.digest.to_string(),
                annotations: d.annotations.as_ref(),
            })
            .collect(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&wire).expect("manifest serializes"));
    let manifest =
        RawManifest::new(Some(OCI_MANIFEST), bytes, None).expect("a manifest we build is valid");
    (manifest, config)
}

/// The config descriptor of a signature manifest built by [`build`].
pub fn config_descriptor(config: &Bytes) -> Descriptor {
    Descriptor::new(
        CONFIG_MEDIA_TYPE,
        Digest::sha256_of(config),
        config.len() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_appends() {
        let a = signature_layer(b"payload-a", "c2lnLWE=");
        let (m1, c1) = build(&[], &a);
        insta::assert_snapshot!(
            "one_layer_manifest",
            String::from_utf8(m1.bytes.to_vec()).unwrap()
        );
        insta::assert_snapshot!("one_layer_config", String::from_utf8(c1.to_vec()).unwrap());
        let l1 = layers(&m1).unwrap();
        assert_eq!(l1.len(), 1);
        assert_eq!(l1[0].signature.as_deref(), Some("c2lnLWE="));
        // Appending keeps the existing layer first; identical layers are not duplicated.
        let b = signature_layer(b"payload-b", "c2lnLWI=");
        let existing: Vec<Descriptor> = l1.iter().map(|l| l.descriptor.clone()).collect();
        let (m2, _) = build(&existing, &b);
        let l2 = layers(&m2).unwrap();
        assert_eq!(l2.len(), 2);
        assert_eq!(l2[0].descriptor, a);
        assert_eq!(l2[1].descriptor, b);
        let (m3, _) = build(&existing, &a);
        assert_eq!(layers(&m3).unwrap().len(), 1);
        assert_eq!(
            signature_tag(
                &"sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
                    .parse()
                    .unwrap()
            ),
            "sha256-31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab.sig"
        );
    }
}
