//! A hostile or broken source registry (the testkit's `HostileRegistry`,
//! serving crafted answers) cannot exhaust memory or stall a run: each case
//! ends in a clear error for that image, nothing is written outside the
//! target, no tag appears. Against a registry target and an OCI-layout target.

use std::collections::HashMap;

use image_syncer_core::digest::Digest;
use image_syncer_core::manifest::{OCI_INDEX, OCI_MANIFEST};
use image_syncer_testkit::hostile::{Answer, Body, HostileRegistry};

use crate::support::*;

const MIB: usize = 1 << 20;

/// A small valid image manifest (its config and layer are served too).
fn image_manifest(
    routes: &mut HashMap<String, Answer>,
    repo: &str,
    seed: &str,
    pad: usize,
) -> Vec<u8> {
    let config =
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let (cd, ld) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
    routes.insert(
        format!("/v2/{repo}/blobs/{cd}"),
        Answer::blob(Body::Bytes(config.clone())),
    );
    routes.insert(
        format!("/v2/{repo}/blobs/{ld}"),
        Answer::blob(Body::Bytes(layer.clone())),
    );
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cd}\",\"size\":{}}},\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{ld}\",\"size\":{}}}],\"annotations\":{{\"pad\":\"{}\"}}}}",
        config.len(),
        layer.len(),
        "x".repeat(pad)
    )
    .into_bytes()
}

fn index_of(child: &Digest, size: usize, media_type: &str) -> Vec<u8> {
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{{\"mediaType\":\"{media_type}\",\"digest\":\"{child}\",\"size\":{size},\"platform\":{{\"os\":\"linux\",\"architecture\":\"amd64\"}}}}]}}"
    )
    .into_bytes()
}

/// Serves `bytes` as `repo`'s manifest under `tag` and under its digest.
fn serve_manifest(
    routes: &mut HashMap<String, Answer>,
    repo: &str,
    tag: &str,
    media_type: &str,
    bytes: Vec<u8>,
) -> Digest {
    let d = Digest::sha256_of(&bytes);
    routes.insert(
        format!("/v2/{repo}/manifests/{d}"),
        Answer::manifest(media_type, bytes.clone(), None),
    );
    routes.insert(
        format!("/v2/{repo}/manifests/{tag}"),
        Answer::manifest(media_type, bytes, None),
    );
    d
}

/// The crafted cases, each a repository `evil/<name>` tagged `1`.
fn cases() -> (Vec<&'static str>, HashMap<String, Answer>) {
    let mut routes = HashMap::new();
    let mut names = Vec::new();
    // A manifest of 5 MiB (valid JSON, a padded annotation).
    let big = image_manifest(&mut routes, "evil/huge", "huge", 5 * MIB);
    serve_manifest(&mut routes, "evil/huge", "1", OCI_MANIFEST, big);
    names.push("huge");
    // Content-Length: 1 GiB, a few bytes sent, the connection held open: a
    // reader that waited for the rest would stall; refusing on the header
    // ends at once.
    let small = image_manifest(&mut routes, "evil/liar", "liar", 0);
    let d = Digest::sha256_of(&small);
    let lie = Answer {
        body: Body::Lying {
            declared: 1 << 30,
            sent: small[..20].to_vec(),
        },
        ..Answer::manifest(OCI_MANIFEST, small.clone(), Some(&d.to_string()))
    };
    routes.insert("/v2/evil/liar/manifests/1".into(), lie.clone());
    routes.insert(format!("/v2/evil/liar/manifests/{d}"), lie);
    names.push("liar");
    // 5 MiB sent chunked, with no Content-Length: counted as read.
    let big = image_manifest(&mut routes, "evil/chunked", "chunked", 5 * MIB);
    let d = Digest::sha256_of(&big);
    let chunked = Answer {
        body: Body::Chunked(big.clone()),
        ..Answer::manifest(OCI_MANIFEST, big, None)
    };
    routes.insert("/v2/evil/chunked/manifests/1".into(), chunked.clone());
    routes.insert(format!("/v2/evil/chunked/manifests/{d}"), chunked);
    names.push("chunked");
    // An index nested 3,000 levels deep, each level one child.
    let leaf = image_manifest(&mut routes, "evil/deep", "deep", 0);
    let mut child = (Digest::sha256_of(&leaf), leaf.len(), OCI_MANIFEST);
    serve_manifest(
        &mut routes,
        "evil/deep",
        &child.0.to_string(),
        OCI_MANIFEST,
        leaf,
    );
    for level in 0..3000 {
        let idx = index_of(&child.0, child.1, child.2);
        let tag = if level == 2999 {
            "1".to_string()
        } else {
            format!("level{level}")
        };
        let d = serve_manifest(&mut routes, "evil/deep", &tag, OCI_INDEX, idx.clone());
        child = (d, idx.len(), OCI_INDEX);
    }
    names.push("deep");
    // A child digest that climbs out of the repository, and one not in hex.
    for (name, digest) in [
        ("traversal", "sha256:../../../../etc/passwd"),
        (
            "nonhex",
            "sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ),
    ] {
        let idx = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{digest}\",\"size\":100}}]}}"
        )
        .into_bytes();
        serve_manifest(&mut routes, &format!("evil/{name}"), "1", OCI_INDEX, idx);
        names.push(name);
    }
    // A layer whose descriptor says 10 bytes while the registry sends 1 MiB.
    let repo = "evil/longblob";
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let cd = Digest::sha256_of(&config);
    routes.insert(
        format!("/v2/{repo}/blobs/{cd}"),
        Answer::blob(Body::Bytes(config.clone())),
    );
    let claimed = b"ten bytes!".to_vec();
    let ld = Digest::sha256_of(&claimed);
    routes.insert(
        format!("/v2/{repo}/blobs/{ld}"),
        Answer::blob(Body::Bytes(vec![b'A'; MIB])),
    );
    let m = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cd}\",\"size\":{}}},\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{ld}\",\"size\":10}}]}}",
        config.len()
    )
    .into_bytes();
    serve_manifest(&mut routes, repo, "1", OCI_MANIFEST, m);
    names.push("longblob");
    // An index whose child is served with the index's own bytes: a digest
    // its content cannot have.
    let repo = "evil/selfref";
    let fake_child = Digest::sha256_of(b"a child that is not there");
    let idx = index_of(&fake_child, 300, OCI_INDEX);
    serve_manifest(&mut routes, repo, "1", OCI_INDEX, idx.clone());
    routes.insert(
        format!("/v2/{repo}/manifests/{fake_child}"),
        Answer::manifest(OCI_INDEX, idx, Some(&fake_child.to_string())),
    );
    names.push("selfref");
    (names, routes)
}

/// Runs every case into `target_prefix` (one run per case); returns the
/// pinned text: per case the exit code and the summary's message lines.
fn run_cases(
    evil: &HostileRegistry,
    dir: &std::path::Path,
    target_prefix: &str,
    extra: &[&str],
    names: &[&str],
) -> String {
    let mut out = String::new();
    for name in names {
        let def = write(
            dir,
            &format!("{name}.yaml"),
            &format!(
                "targetRepoPrefix: \"{target_prefix}\"\nregistries:\n  \"{h}\":\n    insecure: true\nimages:\n- source: \"{h}/evil/{name}:1\"\n",
                h = evil.host()
            ),
        );
        let mut args = vec!["-i", def.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = run(&args);
        let report: String = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("Summary:"))
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        out.push_str(&format!("## {name}: exit {}\n{report}\n", r.code));
        assert_ne!(r.code, 0, "{name} was copied: {}", r.all());
        assert_ne!(r.code, 2, "{name}: {}", r.all());
    }
    let out = out
        .replace(&evil.host(), "[EVIL]")
        .replace(&evil.host().replace(':', "_"), "[EVIL]")
        .replace(&dir.display().to_string(), "[DIR]");
    bytes_seen_redacted(&out)
}

/// "got at least 8090" → "got at least [N]": how much of an over-long blob
/// was read before the refusal depends on how the bytes were chunked.
fn bytes_seen_redacted(text: &str) -> String {
    let marker = "got at least ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        out.push_str("[N]");
        rest = rest[after..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[test]
fn a_hostile_registry_into_a_registry_target() {
    let (names, routes) = cases();
    let evil = HostileRegistry::start(routes);
    let target = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = run_cases(
        &evil,
        dir.path(),
        &format!("{}/mirror/", target.host()),
        &["--insecure-registry", &target.host()],
        &names,
    );
    // Bounded: the deep index and the lying length do not hold the run
    // (a walk of 3,000 levels, or a wait for 1 GiB, would).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "{out}"
    );
    // No tag anywhere, no manifest of a refused image.
    let tags = block_on(async {
        let mut all = Vec::new();
        for name in &names {
            all.extend(
                target
                    .tags(&format!(
                        "mirror/{}/evil/{name}",
                        evil.host().replace(':', "_")
                    ))
                    .await,
            );
        }
        all
    });
    assert!(tags.is_empty(), "{tags:?}");
    insta::assert_snapshot!(out.replace(&target.host(), "[TARGET]"));
}

#[test]
fn a_hostile_registry_into_a_layout_target() {
    let (names, routes) = cases();
    let evil = HostileRegistry::start(routes);
    let dir = tempfile::tempdir().unwrap();
    let out = run_cases(&evil, dir.path(), "oci:out/", &[], &names);
    // Nothing outside the target folder; no tag in any layout written.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml") || name == "out",
            "written outside the target: {name}"
        );
    }
    let out_dir = dir.path().join("out");
    if out_dir.exists() {
        for index in walk_files(&out_dir)
            .into_iter()
            .filter(|p| p.ends_with("index.json"))
        {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
            assert_eq!(
                json["manifests"].as_array().map(Vec::len),
                Some(0),
                "{}: {json}",
                index.display()
            );
        }
    }
    insta::assert_snapshot!(out);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
