//! The simple-signing payload cosign signs, byte for byte as cosign writes it.

use image_syncer_core::digest::Digest;
use image_syncer_core::reference::{is_docker_hub, ImageRef};
use serde::Deserialize;

/// `registry/repository` of the target as cosign names it (`index.docker.io`
/// for Docker Hub), without tag or digest.
pub fn docker_reference(target: &ImageRef) -> String {
    let registry = if is_docker_hub(target.registry()) {
        "index.docker.io"
    } else {
        target.registry()
    };
    format!("{registry}/{}", target.repository())
}

/// The payload for `digest` in repository `docker_reference`:
/// `{"critical":{"identity":{"docker-reference":"…"},"image":{"docker-manifest-digest":"sha256:…"},"type":"cosign container image signature"},"optional":null}`
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    // JSON-escape the reference (references never need it, but be exact).
    let reference = serde_json::to_string(docker_reference).expect("string serializes");
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{reference}}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
    )
    .into_bytes()
}

#[derive(Deserialize)]
struct Simple {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// The `optional` map of a payload (annotations given at signing time, as
/// `cosign sign -a k=v` writes them); string values only, empty when absent.
pub fn optional(payload: &[u8]) -> std::collections::BTreeMap<String, String> {
    #[derive(Deserialize)]
    struct Optional {
        #[serde(default)]
        optional: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    }
    serde_json::from_slice::<Optional>(payload)
        .ok()
        .and_then(|o| o.optional)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
        .collect()
}

/// The image digest a payload claims, if it is a cosign simple-signing payload.
pub fn signed_digest(payload: &[u8]) -> Option<String> {
    let s: Simple = serde_json::from_slice(payload).ok()?;
    (s.critical.kind == "cosign container image signature").then_some(s.critical.image.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_byte_exact() {
        let d: Digest = "sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
            .parse()
            .unwrap();
        let target =
            ImageRef::parse("eu.gcr.io/kyma-project/external/library/busybox:1.36").unwrap();
        let p = payload(&docker_reference(&target), &d);
        insta::assert_snapshot!(String::from_utf8(p.clone()).unwrap());
        assert_eq!(signed_digest(&p).as_deref(), Some(d.to_string().as_str()));
        let hub = ImageRef::parse("busybox:1").unwrap();
        assert_eq!(docker_reference(&hub), "index.docker.io/library/busybox");
    }
}
