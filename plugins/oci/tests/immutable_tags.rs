//! An immutable repository (ECR's `IMMUTABLE`, played by the fault proxy's
//! `Faults::immutable_tags` in front of the real registry) refuses a
//! manifest put onto a tag it has. What the tag holds decides: the same
//! manifest is in sync; another under an image tag is a tag that changed
//! under us (a safety stop); another under a signature or referrers tag,
//! which is meant to move as signatures are added, is the repository's
//! setting (a failure of the image that says how to allow it).

use image_syncer_core::context::{Credentials, Registries, RegistryAccess, Secret};
use image_syncer_core::digest::{AttachedTag, Digest};
use image_syncer_core::manifest::RawManifest;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ErrorKind, ManifestTarget, Sink};
use image_syncer_oci::{OciConfig, OciRegistry};
use image_syncer_testkit::faults::{FaultProxy, Faults};
use image_syncer_testkit::fixtures::{self, TestImage};
use image_syncer_testkit::{block_on, Registry};

const ECR: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

/// The sink for the ECR host, reached through `proxy`; credentials given
/// (the registry asks for none), so no cloud login is tried.
fn ecr_sink(proxy: &FaultProxy) -> OciRegistry {
    let mut cx = Registries::default();
    cx.hosts.insert(
        ECR.to_string(),
        RegistryAccess::new()
            .with_endpoint(proxy.host())
            .with_insecure(true)
            .with_credentials(Credentials::Basic {
                username: "AWS".into(),
                password: Secret::new("unused"),
            }),
    );
    OciRegistry::new(&OciConfig::default(), &cx).expect("registry client")
}

fn raw(image: &TestImage) -> RawManifest {
    RawManifest::new(
        Some(&image.media_type),
        image.manifest.clone(),
        Some(&image.digest),
    )
    .unwrap()
}

/// Puts `image`'s manifest under `tag` of `mirror/app` on the ECR host.
fn put(sink: &OciRegistry, tag: &str, image: &TestImage) -> Result<(), (ErrorKind, String)> {
    let repository = ImageRef::parse(&format!("{ECR}/mirror/app")).unwrap();
    block_on(sink.put_manifest(&repository, &ManifestTarget::Tag(tag.into()), &raw(image)))
        .map_err(|e| (e.kind, e.message))
}

#[test]
fn a_refused_tag_is_in_sync_a_stop_or_a_setting_by_what_it_is_and_holds() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            immutable_tags: true,
            ..Default::default()
        },
    );
    let sink = ecr_sink(&proxy);
    let held = fixtures::image("immutable-held", 1, 64);
    let other = fixtures::image("immutable-other", 1, 64);
    block_on(registry.push("mirror/app:1", &held));
    block_on(registry.push("mirror/app:other", &other));
    let subject: Digest = held.digest.clone();
    let sig = AttachedTag::Signature.of(&subject);
    block_on(registry.push(&format!("mirror/app:{sig}"), &held));

    // The same manifest: in sync.
    assert_eq!(put(&sink, "1", &held), Ok(()));
    // Another under an image tag: a safety stop.
    let (kind, message) = put(&sink, "1", &other).unwrap_err();
    assert_eq!(kind, ErrorKind::Integrity, "{message}");
    assert!(message.contains("an immutable tag"), "{message}");
    // Another under a signature tag: the repository's setting, not a stop.
    let (kind, message) = put(&sink, &sig, &other).unwrap_err();
    assert_eq!(kind, ErrorKind::Config, "{message}");
    assert!(message.contains("exclude `sha256-*`"), "{message}");
    // Nothing moved.
    assert_eq!(
        block_on(registry.digest("mirror/app:1")),
        Some(held.digest.to_string())
    );
    assert_eq!(
        block_on(registry.digest(&format!("mirror/app:{sig}"))),
        Some(held.digest.to_string())
    );
}
