//! Reading referrers through the OCI 1.1 referrers API
//! (`OciRegistry::referrers`, the `Source` and `Sink` method) against the
//! real registry. Debian's distribution 2.8 has no referrers API (it answers
//! 404, as to any route it does not know), so the API comes from the fault
//! proxy's stand-in (`Faults::referrers_api`), which records the manifests
//! with a `subject` pushed through it and serves
//! `GET /v2/<name>/referrers/<digest>` in front of the registry.

use std::collections::BTreeMap;
use std::time::Duration;

use image_syncer_core::context::Registries;
use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{Descriptor, OCI_MANIFEST};
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ErrorKind, Pushback, Sink, Source, StageError};
use image_syncer_oci::{OciConfig, OciRegistry};
use image_syncer_testkit::faults::{FaultProxy, Faults, ProxyAnswer, RateLimit, ReferrersApi};
use image_syncer_testkit::fixtures::{self, TestImage};
use image_syncer_testkit::{block_on, Registry};

const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SIGNATURE_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SBOM: &str = "application/spdx+json";

fn client_for(host: &str) -> OciRegistry {
    let mut cx = Registries::default();
    cx.insecure = vec![host.to_string()];
    OciRegistry::new(&OciConfig::default(), &cx).expect("registry client")
}

/// `host/repo` as a repository reference (no tag).
fn repository(host: &str, repo: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{repo}")).expect("repository reference")
}

fn referrers(
    host: &str,
    repo: &str,
    digest: &Digest,
) -> Result<Option<Vec<Descriptor>>, StageError> {
    block_on(client_for(host).referrers(&repository(host, repo), digest))
}

fn stand_in(registry: &Registry, api: ReferrersApi) -> FaultProxy {
    FaultProxy::start(
        &registry.host(),
        Faults {
            referrers_api: Some(api),
            ..Default::default()
        },
    )
}

/// An image pushed to `repo:1` directly.
fn subject(registry: &Registry, repo: &str, seed: &str) -> TestImage {
    let image = fixtures::image(seed, 1, 32);
    block_on(registry.push(&format!("{repo}:1"), &image));
    image
}

/// A signature and an SBOM of `image`, as OCI 1.1 artifacts.
fn two_referrers(image: &TestImage) -> [TestImage; 2] {
    [
        fixtures::referrer(
            "signature",
            image,
            Some(SIGNATURE),
            SIGNATURE_LAYER,
            &[("dev.cosignproject.cosign/signature", "MEUCIQ...")],
        ),
        fixtures::referrer(
            "sbom",
            image,
            Some(SBOM),
            SBOM,
            &[("org.opencontainers.image.created", "2024-01-01T00:00:00Z")],
        ),
    ]
}

/// Pushes `referrer`'s blobs directly and its manifest (by digest) through
/// `proxy`; the proxy's answer.
fn push_through(
    registry: &Registry,
    proxy: &FaultProxy,
    repo: &str,
    referrer: &TestImage,
) -> ProxyAnswer {
    block_on(async {
        registry.push_blobs(repo, referrer).await;
        proxy
            .put_manifest(
                &format!("{repo}@{}", referrer.digest),
                &referrer.media_type,
                &referrer.manifest,
            )
            .await
    })
}

/// What a referrers answer should list for `referrer`.
fn listed(
    referrer: &TestImage,
    artifact_type: Option<&str>,
    annotations: &[(&str, &str)],
) -> Descriptor {
    let mut d = Descriptor::new(
        OCI_MANIFEST,
        referrer.digest.clone(),
        referrer.manifest.len() as u64,
    );
    d.artifact_type = artifact_type.map(str::to_string);
    d.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    d
}

/// The referrers requests the proxy saw, as `GET /v2/...`.
fn referrers_requests(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .injected
        .log()
        .into_iter()
        .filter(|(_, path)| path.contains("/referrers/"))
        .map(|(method, path)| format!("{method} {path}"))
        .collect()
}

#[test]
fn referrers_pushed_through_the_stand_in_are_listed_with_their_types_and_annotations() {
    let registry = Registry::start();
    let image = subject(&registry, "team/app", "subject");
    let proxy = stand_in(&registry, ReferrersApi::default());
    let [signature, sbom] = two_referrers(&image);
    for r in [&signature, &sbom, &signature] {
        // The second push of the signature is listed once.
        assert_eq!(push_through(&registry, &proxy, "team/app", r).status, 201);
    }
    let found = referrers(&proxy.host(), "team/app", &image.digest)
        .expect("the API answers")
        .expect("the stand-in has the API");
    assert_eq!(
        found,
        [
            listed(
                &signature,
                Some(SIGNATURE),
                &[("dev.cosignproject.cosign/signature", "MEUCIQ...")]
            ),
            listed(
                &sbom,
                Some(SBOM),
                &[("org.opencontainers.image.created", "2024-01-01T00:00:00Z")]
            ),
        ]
    );
    assert_eq!(
        referrers_requests(&proxy),
        [format!("GET /v2/team/app/referrers/{}", image.digest)]
    );
    // The sink reads them alike; the source trait too.
    let host = proxy.host();
    let client = client_for(&host);
    let repo = repository(&host, "team/app");
    let through_sink = block_on(Sink::referrers(&client, &repo, &image.digest)).unwrap();
    let through_source = block_on(Source::referrers(&client, &repo, &image.digest)).unwrap();
    assert_eq!(through_sink.as_ref(), Some(&found));
    assert_eq!(through_source.as_ref(), Some(&found));
}

#[test]
fn a_push_with_a_subject_is_answered_with_oci_subject() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = stand_in(&registry, ReferrersApi::default());
    let [signature, _] = two_referrers(&image);
    let answer = push_through(&registry, &proxy, "app", &signature);
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        answer.header("oci-subject"),
        Some(image.digest.to_string().as_str())
    );
    // The registry's own answer is passed on.
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(signature.digest.to_string().as_str())
    );
    // A manifest without a subject: no header, not listed.
    let other = fixtures::image("other", 1, 16);
    block_on(registry.push_blobs("app", &other));
    let answer = block_on(proxy.put_manifest("app:2", &other.media_type, &other.manifest));
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.header("oci-subject"), None);
    assert_eq!(
        referrers(&proxy.host(), "app", &other.digest).unwrap(),
        Some(vec![])
    );
}

#[test]
fn with_an_empty_artifact_type_the_type_is_absent() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = stand_in(
        &registry,
        ReferrersApi {
            empty_artifact_type: true,
            ..Default::default()
        },
    );
    let [signature, sbom] = two_referrers(&image);
    for r in [&signature, &sbom] {
        assert_eq!(push_through(&registry, &proxy, "app", r).status, 201);
    }
    let found = referrers(&proxy.host(), "app", &image.digest)
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        [
            listed(
                &signature,
                None,
                &[("dev.cosignproject.cosign/signature", "MEUCIQ...")]
            ),
            listed(
                &sbom,
                None,
                &[("org.opencontainers.image.created", "2024-01-01T00:00:00Z")]
            ),
        ]
    );
}

#[test]
fn a_referrer_without_artifact_type_is_listed_with_its_config_media_type() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = stand_in(&registry, ReferrersApi::default());
    let untyped = fixtures::referrer("untyped", &image, None, SIGNATURE_LAYER, &[]);
    assert_eq!(push_through(&registry, &proxy, "app", &untyped).status, 201);
    let found = referrers(&proxy.host(), "app", &image.digest)
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].artifact_type.as_deref(),
        Some(fixtures::EMPTY_CONFIG)
    );
    assert_eq!(found[0].annotations, None);
}

#[test]
fn a_digest_without_referrers_has_an_empty_list() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let lonely = subject(&registry, "lonely", "lonely");
    let proxy = stand_in(&registry, ReferrersApi::default());
    let [signature, _] = two_referrers(&image);
    push_through(&registry, &proxy, "app", &signature);
    let host = proxy.host();
    assert_eq!(
        referrers(&host, "lonely", &lonely.digest).unwrap(),
        Some(vec![])
    );
    // Referrers are per repository: the same digest elsewhere has none.
    assert_eq!(
        referrers(&host, "lonely", &image.digest).unwrap(),
        Some(vec![])
    );
    assert_eq!(
        referrers(&host, "app", &image.digest)
            .unwrap()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_registry_without_the_api_answers_none() {
    // Debian's registry itself, and through a proxy that only forwards.
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = FaultProxy::start(&registry.host(), Faults::default());
    for host in [registry.host(), proxy.host()] {
        assert_eq!(
            referrers(&host, "app", &image.digest).unwrap(),
            None,
            "{host}"
        );
        let client = client_for(&host);
        let repo = repository(&host, "app");
        assert_eq!(
            block_on(Sink::referrers(&client, &repo, &image.digest)).unwrap(),
            None
        );
    }
    // Asked once per call, no fallback to the tag schema here.
    assert_eq!(
        proxy
            .injected
            .log()
            .into_iter()
            .filter(|(_, p)| p.contains("/referrers/") || p.contains("/manifests/sha256-"))
            .count(),
        2
    );
}

/// The message of `e`, with the proxy's host made stable.
fn message(e: &StageError, proxy: &FaultProxy) -> String {
    e.to_string().replace(&proxy.host(), "PROXY")
}

#[test]
fn a_referrers_answer_that_is_not_an_index_is_invalid() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = stand_in(
        &registry,
        ReferrersApi {
            not_an_index: true,
            ..Default::default()
        },
    );
    let e = referrers(&proxy.host(), "app", &image.digest).expect_err("not an index");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    let text = message(&e, &proxy).replace(&image.digest.to_string(), "DIGEST");
    insta::assert_snapshot!(text, @"PROXY/app@DIGEST: listing referrers: registry PROXY answered something other than an OCI image index: media type `application/vnd.oci.image.manifest.v1+json`, not `application/vnd.oci.image.index.v1+json`");
}

#[test]
fn a_referrers_answer_over_max_manifest_bytes_is_refused() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = stand_in(&registry, ReferrersApi::default());
    for r in two_referrers(&image) {
        push_through(&registry, &proxy, "app", &r);
    }
    let host = proxy.host();
    let mut cx = Registries::default();
    cx.insecure = vec![host.clone()];
    let config = OciConfig {
        max_manifest_bytes: 300,
        ..Default::default()
    };
    let client = OciRegistry::new(&config, &cx).expect("registry client");
    let e = block_on(client.referrers(&repository(&host, "app"), &image.digest))
        .expect_err("too large");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    let text = message(&e, &proxy).replace(&image.digest.to_string(), "DIGEST");
    insta::assert_snapshot!(text, @"PROXY/app@DIGEST: listing referrers: registry PROXY answered a referrers index of 636 bytes, over the 300 bytes limit (maxManifestBytes)");
    // Within the default limit, it is read.
    assert_eq!(
        referrers(&host, "app", &image.digest)
            .unwrap()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_busy_referrers_api_is_retried_after_the_wait_it_asks() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            referrers_api: Some(ReferrersApi::default()),
            rate_limit: Some(RateLimit {
                method: Some("GET"),
                path: "/referrers/".into(),
                times: 1,
                status: 429,
                retry_after: "3".into(),
            }),
            ..Default::default()
        },
    );
    let e = referrers(&proxy.host(), "app", &image.digest).expect_err("rate limited");
    assert_eq!(
        (e.kind, e.pushback, e.retry_after),
        (
            ErrorKind::Transient,
            Some(Pushback::Busy),
            Some(Duration::from_secs(3))
        ),
        "{e}"
    );
    // Once the limit is past, the API answers.
    assert_eq!(
        referrers(&proxy.host(), "app", &image.digest).unwrap(),
        Some(vec![])
    );
}

#[test]
fn a_refused_referrers_request_is_unauthorized() {
    let registry = Registry::start();
    let image = subject(&registry, "app", "subject");
    let proxy = FaultProxy::start(
        &registry.host(),
        Faults {
            referrers_api: Some(ReferrersApi::default()),
            require_bearer: Some("secret".into()),
            ..Default::default()
        },
    );
    let e = referrers(&proxy.host(), "app", &image.digest).expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
}
