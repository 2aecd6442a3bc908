//! Small images built in memory and pushed with oci-client.

use bytes::Bytes;
use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

use crate::Registry;

/// One blob.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub data: Bytes,
}

/// An image or index with everything it references.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub media_type: String,
    pub manifest: Bytes,
    pub digest: Digest,
    pub blobs: Vec<Blob>,
    pub children: Vec<TestImage>,
}

impl TestImage {
    /// Every blob of the image and its children.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut v: Vec<&Blob> = self.blobs.iter().collect();
        for c in &self.children {
            v.extend(c.all_blobs());
        }
        v
    }
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures differ by seed.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0xcbf29ce484222325;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn blob(media_type: &str, data: Vec<u8>) -> Blob {
    Blob {
        media_type: media_type.to_string(),
        digest: Digest::sha256_of(&data),
        data: Bytes::from(data),
    }
}

fn desc(b: &Blob) -> serde_json::Value {
    serde_json::json!({"mediaType": b.media_type, "digest": b.digest.to_string(), "size": b.data.len()})
}

/// A single-platform OCI image with `layers` random layers of `layer_size` bytes.
pub fn image(seed: &str, layers: usize, layer_size: usize) -> TestImage {
    image_for(seed, layers, layer_size, "linux", "amd64", false)
}

/// Like [`image`], with Docker v2 schema 2 media types.
pub fn docker_image(seed: &str, layers: usize, layer_size: usize) -> TestImage {
    image_for(seed, layers, layer_size, "linux", "amd64", true)
}

fn image_for(
    seed: &str,
    layers: usize,
    layer_size: usize,
    os: &str,
    arch: &str,
    docker: bool,
) -> TestImage {
    let (m_type, c_type, l_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let layer_blobs: Vec<Blob> = (0..layers)
        .map(|i| {
            blob(
                l_type,
                random_bytes(&format!("{seed}/layer{i}"), layer_size),
            )
        })
        .collect();
    let config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {"Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": layer_blobs.iter().map(|b| b.digest.to_string()).collect::<Vec<_>>()},
    });
    let config = blob(c_type, serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": m_type,
        "config": desc(&config),
        "layers": layer_blobs.iter().map(desc).collect::<Vec<_>>(),
    });
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    let mut blobs = vec![config];
    blobs.extend(layer_blobs);
    TestImage {
        media_type: m_type.to_string(),
        digest: Digest::sha256_of(&manifest),
        manifest,
        blobs,
        children: vec![],
    }
}

/// Single-platform OCI images that share their first layer (a common base)
/// and each have one layer of their own.
pub fn images_sharing_a_layer(seeds: &[&str], layer_size: usize) -> Vec<TestImage> {
    let base = blob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        random_bytes(&format!("{}/shared-base", seeds.join("+")), layer_size),
    );
    seeds
        .iter()
        .map(|seed| {
            let own = blob("application/vnd.oci.image.layer.v1.tar+gzip", random_bytes(&format!("{seed}/own"), layer_size));
            let layers = vec![base.clone(), own];
            let config = serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"seed": seed}},
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|b| b.digest.to_string()).collect::<Vec<_>>()},
            });
            let config = blob("application/vnd.oci.image.config.v1+json", serde_json::to_vec(&config).unwrap());
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": desc(&config),
                "layers": layers.iter().map(desc).collect::<Vec<_>>(),
            });
            let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
            let mut blobs = vec![config];
            blobs.extend(layers);
            TestImage {
                media_type: OCI_MANIFEST.to_string(),
                digest: Digest::sha256_of(&manifest),
                manifest,
                blobs,
                children: vec![],
            }
        })
        .collect()
}

/// The media type of the empty config of artifacts: the 2-byte `{}`.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// An OCI 1.1 artifact referring to `subject`: an image manifest with
/// `artifactType` (when given), the empty config ([`EMPTY_CONFIG`], `{}`),
/// one small layer of `layer_media_type` (bytes from `seed`), `annotations`
/// (when any) and `subject` (the descriptor of `subject`). Its blobs are the
/// config and the layer; push them first, then the manifest (through
/// [`crate::faults::ReferrersApi`] to have it listed as a referrer).
pub fn referrer(
    seed: &str,
    subject: &TestImage,
    artifact_type: Option<&str>,
    layer_media_type: &str,
    annotations: &[(&str, &str)],
) -> TestImage {
    let config = blob(EMPTY_CONFIG, b"{}".to_vec());
    let layer = blob(
        layer_media_type,
        random_bytes(&format!("{seed}/referrer"), 64),
    );
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(&config),
        "layers": [desc(&layer)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest.to_string(),
            "size": subject.manifest.len(),
        },
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = t.into();
    }
    if !annotations.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        manifest["annotations"] = map.into();
    }
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    TestImage {
        media_type: OCI_MANIFEST.to_string(),
        digest: Digest::sha256_of(&manifest),
        manifest,
        blobs: vec![config, layer],
        children: vec![],
    }
}

/// A multi-platform OCI index over one image per platform (`os/arch`). Child
/// images share their first layer (a common base).
pub fn index(seed: &str, platforms: &[&str]) -> TestImage {
    let children: Vec<TestImage> = platforms
        .iter()
        .map(|p| {
            let (os, arch) = p.split_once('/').expect("os/arch");
            image_for(&format!("{seed}/{p}"), 2, 2048, os, arch, false)
        })
        .collect();
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .zip(platforms)
        .map(|(c, p)| {
            let (os, arch) = p.split_once('/').unwrap();
            serde_json::json!({
                "mediaType": c.media_type,
                "digest": c.digest.to_string(),
                "size": c.manifest.len(),
                "platform": {"os": os, "architecture": arch},
            })
        })
        .collect();
    let manifest =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    TestImage {
        media_type: OCI_INDEX.to_string(),
        digest: Digest::sha256_of(&manifest),
        manifest,
        blobs: vec![],
        children,
    }
}

impl Registry {
    /// Pushes the blobs of `image` (not its children's) to `repo`.
    pub async fn push_blobs(&self, repo: &str, image: &TestImage) {
        for b in &image.blobs {
            self.push_blob(repo, &b.data).await;
        }
    }

    /// Pushes `image` (children first) to `repo:tag` with oci-client.
    pub async fn push(&self, repo_and_tag: &str, image: &TestImage) {
        let (client, auth) = self.client();
        let r = self.reference(repo_and_tag);
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Push)
            .await
            .expect("auth to the test registry");
        self.push_inner(&client, &r, image, true).await;
    }

    async fn push_inner(
        &self,
        client: &oci_client::Client,
        r: &oci_client::Reference,
        image: &TestImage,
        tag: bool,
    ) {
        for c in &image.children {
            Box::pin(self.push_inner(client, r, c, false)).await;
        }
        for b in &image.blobs {
            client
                .push_blob(r, b.data.clone(), &b.digest.to_string())
                .await
                .expect("push blob");
        }
        let target = if tag {
            r.clone()
        } else {
            r.clone_with_digest(image.digest.to_string())
        };
        client
            .push_manifest_raw(
                &target,
                image.manifest.clone(),
                image.media_type.parse().unwrap(),
            )
            .await
            .expect("push manifest");
    }
}
