use std::path::Path;

use image_syncer_core::catalogue::StageRegistry;
use image_syncer_core::context::RunContext;
use image_syncer_core::digest::VerifyingStream;
use image_syncer_core::manifest::{Manifest, OCI_MANIFEST};
use image_syncer_core::stage::ErrorKind;

use super::*;

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A small image with fixed bytes: deterministic digests.
struct TestImage {
    blobs: Vec<(Descriptor, Bytes)>,
    manifest: RawManifest,
}

fn descriptor(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor::new(media_type, Digest::sha256_of(data), data.len() as u64)
}

fn image(arch: &str) -> TestImage {
    let config = Bytes::from(format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    ));
    let layer = Bytes::from(format!("layer for {arch}: not really a tarball"));
    let c = descriptor(CONFIG_TYPE, &config);
    let l = descriptor(LAYER_TYPE, &layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG_TYPE}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{LAYER_TYPE}","digest":"{}","size":{}}}]}}"#,
        c.digest, c.size, l.digest, l.size
    );
    TestImage {
        blobs: vec![(c, config), (l, layer)],
        manifest: RawManifest::new(None, Bytes::from(manifest), None).unwrap(),
    }
}

fn index_of(children: &[&RawManifest]) -> RawManifest {
    let entries: Vec<String> = children
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(m, arch)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                m.media_type,
                m.digest,
                m.bytes.len()
            )
        })
        .collect();
    let json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    RawManifest::new(None, Bytes::from(json), None).unwrap()
}

fn oci(dir: &Path, suffix: &str) -> ImageRef {
    ImageRef::parse_with_transports(&format!("oci:{}{suffix}", dir.display()), &["oci"]).unwrap()
}

fn stream_of(items: Vec<std::io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(items))
}

async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// Copies an image's blobs (each through a verifying stream, as the orchestrator
/// does) and its manifest.
async fn push(sink: &OciLayoutSink, repo: &ImageRef, img: &TestImage, target: ManifestTarget) {
    for (d, data) in &img.blobs {
        let s = VerifyingStream::new(
            stream_of(vec![Ok(data.clone())]),
            d.digest.clone(),
            Some(d.size),
        );
        sink.put_blob(repo, d, Box::pin(s)).await.unwrap();
    }
    sink.put_manifest(repo, &target, &img.manifest)
        .await
        .unwrap();
}

fn tag(t: &str) -> ManifestTarget {
    ManifestTarget::Tag(t.to_string())
}

fn temp_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("blobs/sha256")] {
        if let Ok(rd) = std::fs::read_dir(sub) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp-") {
                    out.push(name);
                }
            }
        }
    }
    out
}

fn index_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn round_trip_through_sink_and_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let repo = oci(&dir, ":1.0");
    let img = image("amd64");
    let sink = OciLayoutSink::new(tmp.path());
    push(&sink, &repo, &img, tag("1.0")).await;

    let source = OciLayoutSource::new(tmp.path());
    let m = source.resolve(&repo).await.unwrap();
    assert_eq!(m, img.manifest);
    let again = source
        .fetch_manifest(&repo, &img.manifest.descriptor())
        .await
        .unwrap();
    assert_eq!(again.bytes, img.manifest.bytes);
    for (d, data) in &img.blobs {
        let got = collect(source.fetch_blob(&repo, d).await.unwrap())
            .await
            .unwrap();
        assert_eq!(&got[..], &data[..]);
        let got = collect(sink.fetch_blob(&repo, d).await.unwrap())
            .await
            .unwrap();
        assert_eq!(&got[..], &data[..]);
        assert!(sink.has_blob(&repo, d).await.unwrap());
        let mut wrong_size = d.clone();
        wrong_size.size += 1;
        assert!(!sink.has_blob(&repo, &wrong_size).await.unwrap());
    }
    assert_eq!(
        sink.manifest_digest(&repo).await.unwrap(),
        Some(img.manifest.digest.clone())
    );
    assert_eq!(
        sink.fetch_manifest(&repo).await.unwrap(),
        Some(img.manifest.clone())
    );
    // By digest too, through the source and the sink.
    let pinned = repo.with_digest(img.manifest.digest.clone());
    assert_eq!(source.resolve(&pinned).await.unwrap(), img.manifest);
    assert_eq!(
        sink.manifest_digest(&pinned).await.unwrap(),
        Some(img.manifest.digest.clone())
    );
    // A reference without tag means the only manifest of the layout.
    assert_eq!(source.resolve(&oci(&dir, "")).await.unwrap(), img.manifest);
    assert!(temp_files(&dir).is_empty());
}

#[tokio::test]
async fn image_index_with_two_children() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("multi");
    let repo = oci(&dir, ":multi");
    let amd = image("amd64");
    let arm = image("arm64");
    let index = index_of(&[&amd.manifest, &arm.manifest]);
    let sink = OciLayoutSink::new(tmp.path());
    push(&sink, &repo, &amd, ManifestTarget::Digest).await;
    push(&sink, &repo, &arm, ManifestTarget::Digest).await;
    sink.put_manifest(&repo, &tag("multi"), &index)
        .await
        .unwrap();

    // Only the tag is listed in index.json; the children are blobs.
    let json = index_json(&dir);
    let entries = json["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["mediaType"], OCI_INDEX);
    assert_eq!(entries[0]["digest"], index.digest.to_string());

    let source = OciLayoutSource::new(tmp.path());
    let got = source.resolve(&repo).await.unwrap();
    assert_eq!(got, index);
    let Manifest::Index { manifests } = got.parse().unwrap() else {
        panic!("not an index");
    };
    assert_eq!(manifests.len(), 2);
    for (child, img) in manifests.iter().zip([&amd, &arm]) {
        let m = source.fetch_manifest(&repo, child).await.unwrap();
        assert_eq!(m, img.manifest);
        let child_ref = repo.with_digest(child.digest.clone());
        assert_eq!(
            sink.manifest_digest(&child_ref).await.unwrap(),
            Some(child.digest.clone())
        );
        // A child found by digest alone: its media type comes from its content.
        assert_eq!(source.resolve(&child_ref).await.unwrap(), img.manifest);
        assert_eq!(
            sink.fetch_manifest(&child_ref).await.unwrap(),
            Some(img.manifest.clone())
        );
    }
}

#[tokio::test]
async fn absent_layout_tag_or_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nowhere");
    let sink = OciLayoutSink::new(tmp.path());
    let source = OciLayoutSource::new(tmp.path());
    let img = image("amd64");

    assert_eq!(
        sink.manifest_digest(&oci(&dir, ":1.0")).await.unwrap(),
        None
    );
    assert_eq!(sink.fetch_manifest(&oci(&dir, ":1.0")).await.unwrap(), None);
    let err = source.resolve(&oci(&dir, ":1.0")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
    assert!(err.message.contains("does not exist"), "{err}");

    // A directory without index.json.
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        sink.manifest_digest(&oci(&dir, ":1.0")).await.unwrap(),
        None
    );
    let err = source.resolve(&oci(&dir, ":1.0")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("index.json"), "{err}");

    push(&sink, &oci(&dir, ":1.0"), &img, tag("1.0")).await;
    assert_eq!(
        sink.manifest_digest(&oci(&dir, ":2.0")).await.unwrap(),
        None
    );
    assert_eq!(sink.fetch_manifest(&oci(&dir, ":2.0")).await.unwrap(), None);
    let err = source.resolve(&oci(&dir, ":2.0")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
    assert!(err.message.contains("`2.0`"), "{err}");

    let other = Digest::sha256_of(b"not stored");
    let pinned = oci(&dir, "").with_digest(other.clone());
    assert_eq!(sink.manifest_digest(&pinned).await.unwrap(), None);
    let err = source.resolve(&pinned).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains(&other.to_string()), "{err}");
    let err = source
        .fetch_blob(&oci(&dir, ""), &descriptor(LAYER_TYPE, b"not stored"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
}

#[tokio::test]
async fn failed_streams_leave_no_blob_and_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let repo = oci(&dir, ":1.0");
    let sink = OciLayoutSink::new(tmp.path());
    let d = descriptor(LAYER_TYPE, b"the right content");
    let blob = dir.join("blobs/sha256").join(d.digest.hex());

    // Wrong bytes of the right size, caught by the caller's verifying stream.
    let wrong = VerifyingStream::new(
        stream_of(vec![
            Ok(Bytes::from_static(b"the wrong")),
            Ok(Bytes::from_static(b" content")),
        ]),
        d.digest.clone(),
        Some(d.size),
    );
    let err = sink.put_blob(&repo, &d, Box::pin(wrong)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
    assert!(!blob.exists());
    assert_eq!(temp_files(&dir), Vec::<String>::new());

    // The same bytes without a verifying stream: the sink's own check stops them.
    let raw = stream_of(vec![Ok(Bytes::from_static(b"the wrong content"))]);
    let err = sink.put_blob(&repo, &d, raw).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    assert!(!blob.exists());
    assert_eq!(temp_files(&dir), Vec::<String>::new());

    // Too many bytes.
    let raw = stream_of(vec![Ok(Bytes::from_static(b"the right content, and more"))]);
    let err = sink.put_blob(&repo, &d, raw).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    assert!(!blob.exists());

    // A transport failure half-way.
    let broken = stream_of(vec![
        Ok(Bytes::from_static(b"the right")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )),
    ]);
    let err = sink.put_blob(&repo, &d, broken).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    assert!(!blob.exists());
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    assert!(!sink.has_blob(&repo, &d).await.unwrap());

    // And then the right content goes in.
    let good = stream_of(vec![Ok(Bytes::from_static(b"the right content"))]);
    sink.put_blob(&repo, &d, good).await.unwrap();
    assert!(sink.has_blob(&repo, &d).await.unwrap());
}

#[tokio::test]
async fn corrupted_blobs_are_integrity_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let repo = oci(&dir, ":1.0");
    let img = image("amd64");
    let sink = OciLayoutSink::new(tmp.path());
    let source = OciLayoutSource::new(tmp.path());
    push(&sink, &repo, &img, tag("1.0")).await;

    // Same size, one byte changed.
    let path = dir.join("blobs/sha256").join(img.manifest.digest.hex());
    let tampered = String::from_utf8(img.manifest.bytes.to_vec())
        .unwrap()
        .replace("\"schemaVersion\":2", "\"schemaVersion\":3");
    assert_eq!(tampered.len(), img.manifest.bytes.len());
    std::fs::write(&path, tampered).unwrap();

    let err = source.resolve(&repo).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
    let err = source
        .fetch_manifest(&repo, &img.manifest.descriptor())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    let err = sink.fetch_manifest(&repo).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    let err = source
        .resolve(&repo.with_digest(img.manifest.digest.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");

    // Another size: caught before reading.
    std::fs::write(&path, b"{}").unwrap();
    let err = source.resolve(&repo).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");

    // A layer of the wrong size on disk.
    let (layer, _) = &img.blobs[1];
    std::fs::write(dir.join("blobs/sha256").join(layer.digest.hex()), b"short").unwrap();
    let err = source.fetch_blob(&repo, layer).await.err().unwrap();
    assert_eq!(err.kind, ErrorKind::Integrity, "{err}");
    assert!(!sink.has_blob(&repo, layer).await.unwrap());
}

#[tokio::test]
async fn relative_paths_use_the_context_base_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = StageRegistry::builtin().unwrap();
    let mut cx = RunContext::default();
    cx.base_dir = tmp.path().to_path_buf();
    cx.transports = registry.transports();
    assert_eq!(cx.transports, vec!["oci".to_string()]);
    let sink = registry
        .build_sink("oci-layout", &ConfigValue::Null, &cx.sink())
        .unwrap();
    let source = registry
        .build_source("oci-layout", &serde_json::json!({}), &cx.source())
        .unwrap();

    let repo = cx.parse_ref("oci:out/busybox:1.36").unwrap();
    let img = image("amd64");
    for (d, data) in &img.blobs {
        sink.put_blob(&repo, d, stream_of(vec![Ok(data.clone())]))
            .await
            .unwrap();
    }
    sink.put_manifest(&repo, &tag("1.36"), &img.manifest)
        .await
        .unwrap();
    let root = tmp.path().join("out/busybox");
    assert!(root.join("index.json").is_file());
    assert!(root
        .join("blobs/sha256")
        .join(img.manifest.digest.hex())
        .is_file());
    assert_eq!(source.resolve(&repo).await.unwrap(), img.manifest);

    // An absolute path is taken as it is.
    let abs = oci(&root, ":1.36");
    assert_eq!(source.resolve(&abs).await.unwrap(), img.manifest);
}

#[test]
fn plugins_are_registered() {
    let registry = StageRegistry::builtin().unwrap();
    for kind in [StageKind::Source, StageKind::Sink] {
        let s = registry.for_transport(kind, Some("oci")).unwrap();
        assert_eq!(s.name, "oci-layout");
        assert_eq!(s.example_config, "{}\n");
        assert_eq!(
            s.config_schema.as_ref().unwrap()["additionalProperties"],
            serde_json::json!(false)
        );
        let config = serde_json::json!({"compress": true});
        let cx = RunContext::default();
        let err = match kind {
            StageKind::Source => registry
                .build_source("oci-layout", &config, &cx.source())
                .err(),
            _ => registry.build_sink("oci-layout", &config, &cx.sink()).err(),
        }
        .unwrap();
        assert!(matches!(err, BuildError::Config { .. }), "{err}");
    }
}

#[tokio::test]
async fn registry_references_are_refused() {
    let source = OciLayoutSource::new("/");
    let err = source
        .resolve(&ImageRef::parse("busybox:1.36").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err}");
}

#[tokio::test]
async fn written_layout_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh");
    let sink = OciLayoutSink::new(tmp.path());
    push(&sink, &oci(&dir, ":1.0"), &image("amd64"), tag("1.0")).await;

    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout, serde_json::json!({"imageLayoutVersion": "1.0.0"}));
    let index = index_json(&dir);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "one tagged image: {index}");
    for entry in entries {
        let d: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
        let blob = std::fs::read(dir.join("blobs/sha256").join(d.hex())).unwrap();
        assert_eq!(entry["size"].as_u64(), Some(blob.len() as u64));
        assert_eq!(d.verify(&blob), Ok(()));
        assert!(entry["mediaType"].is_string());
    }
}

#[tokio::test]
async fn index_json_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let repo = oci(&dir, "");
    let sink = OciLayoutSink::new(tmp.path());
    let amd = image("amd64");
    let arm = image("arm64");
    push(&sink, &repo, &amd, tag("1.0")).await;
    push(&sink, &repo, &arm, tag("2.0")).await;
    // Moving a tag replaces its entry in place.
    sink.put_manifest(&repo, &tag("1.0"), &arm.manifest)
        .await
        .unwrap();
    // Children are not listed.
    sink.put_manifest(&repo, &ManifestTarget::Digest, &amd.manifest)
        .await
        .unwrap();
    let text = std::fs::read_to_string(dir.join("index.json")).unwrap();
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn unknown_index_fields_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sink = OciLayoutSink::new(tmp.path());
    let img = image("amd64");
    // A layout another tool wrote, with an entry this plugin knows nothing about.
    push(&sink, &oci(&dir, ""), &img, ManifestTarget::Digest).await;
    let foreign = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": img.manifest.digest.to_string(),
            "size": img.manifest.bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": "docker.io/library/x:old"}
        }],
        "annotations": {"com.example.owner": "someone"}
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&foreign).unwrap(),
    )
    .unwrap();

    sink.put_manifest(&oci(&dir, ""), &tag("new"), &img.manifest)
        .await
        .unwrap();
    let index = index_json(&dir);
    assert_eq!(index["annotations"], foreign["annotations"]);
    assert_eq!(index["manifests"][0], foreign["manifests"][0]);
    assert_eq!(
        index["manifests"][1]["annotations"][REF_NAME_ANNOTATION],
        "new"
    );

    // The untagged entry makes `oci:DIR` ambiguous for the source.
    let source = OciLayoutSource::new(tmp.path());
    let err = source.resolve(&oci(&dir, "")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("2 manifests"), "{err}");
}

#[tokio::test]
async fn other_layout_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    let sink = OciLayoutSink::new(tmp.path());
    let err = sink.manifest_digest(&oci(&dir, ":1.0")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    let d = descriptor(LAYER_TYPE, b"x");
    let err = sink
        .put_blob(
            &oci(&dir, ""),
            &d,
            stream_of(vec![Ok(Bytes::from_static(b"x"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("2.0.0"), "{err}");

    std::fs::write(dir.join("oci-layout"), b"{}").unwrap();
    std::fs::write(dir.join("index.json"), b"[not json").unwrap();
    let err = sink.manifest_digest(&oci(&dir, ":1.0")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains(&dir.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tags_are_all_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sink = Arc::new(OciLayoutSink::new(tmp.path()));
    let img = Arc::new(image("amd64"));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (sink, img, dir) = (sink.clone(), img.clone(), dir.clone());
        tasks.push(tokio::spawn(async move {
            let t = format!("t{i}");
            push(&sink, &oci(&dir, &format!(":{t}")), &img, tag(&t)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let index = index_json(&dir);
    let mut names: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["annotations"][REF_NAME_ANNOTATION]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..24).map(|i| format!("t{i}")).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(temp_files(&dir).is_empty());
}

#[tokio::test]
async fn list_tags_reads_the_ref_names_of_index_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sink = OciLayoutSink::new(tmp.path());
    let source = OciLayoutSource::new(tmp.path());

    // No directory, then a directory without index.json: not found.
    let err = source.list_tags(&oci(&dir, "")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("does not exist"), "{err}");
    std::fs::create_dir_all(&dir).unwrap();
    let err = source.list_tags(&oci(&dir, "")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("index.json"), "{err}");

    // Written by the sink: one tag per entry, in index.json's order; an
    // entry pushed by digest has no name and is not a tag.
    let (amd, arm) = (image("amd64"), image("arm64"));
    push(&sink, &oci(&dir, ":1.0"), &amd, tag("1.0")).await;
    push(&sink, &oci(&dir, ":2.0"), &arm, tag("2.0")).await;
    push(&sink, &oci(&dir, ":latest"), &arm, tag("latest")).await;
    let child = image("s390x");
    push(&sink, &oci(&dir, ""), &child, ManifestTarget::Digest).await;
    let in_file: Vec<String> = index_json(&dir)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"][REF_NAME_ANNOTATION].as_str())
        .map(str::to_string)
        .collect();
    // The reference's own tag does not narrow the list.
    let listed = source.list_tags(&oci(&dir, ":1.0")).await.unwrap();
    assert_eq!(listed, in_file);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, ["1.0", "2.0", "latest"]);

    // A malformed index.json is invalid, and the message names the file.
    std::fs::write(
        dir.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": 7}",
    )
    .unwrap();
    let err = source.list_tags(&oci(&dir, "")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    insta::assert_snapshot!(
        err.to_string().replace(&dir.display().to_string(), "DIR"),
        @"OCI layout DIR: index.json is not a valid image index: invalid type: integer `7`, expected a sequence at line 1 column 35"
    );

    // A registry reference is not this plugin's.
    let err = source
        .list_tags(&ImageRef::parse("example.com/app").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err}");
}
