//! How many requests a sync sends, counted at proxies in front of both
//! registries: the figures docs/performance.md gives per image, pinned.

use image_syncer_testkit::faults::{FaultProxy, Faults};

use crate::support::*;

/// The requests a proxy saw, as `METHOD PATH-SHAPE` with digests, tags
/// and upload ids replaced, counted.
fn shapes(proxy: &FaultProxy, from: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (method, path) in proxy.injected.log().into_iter().skip(from) {
        let path = path.split('?').next().unwrap_or_default();
        let shape: Vec<String> = path
            .split('/')
            .enumerate()
            .map(|(i, seg)| {
                if seg.starts_with("sha256:") {
                    "<digest>".to_string()
                } else if i >= 2 && seg.len() >= 32 && seg.contains('-') {
                    "<upload>".to_string()
                } else {
                    seg.to_string()
                }
            })
            .collect();
        let mut shape = shape.join("/");
        // The image's name and tag are not the point.
        for repo in ["app0", "app1", "app2"] {
            shape = shape.replace(repo, "<repo>");
        }
        shape = shape.replace("/manifests/1.0", "/manifests/<tag>");
        *out.entry(format!("{method} {shape}")).or_insert(0) += 1;
    }
    out
}

#[test]
fn requests_per_image_cold_and_warm_are_pinned() {
    let (source, target) = (Registry::start(), Registry::start());
    for i in 0..3 {
        let img = fixtures::image(&format!("requests-{i}"), 1, 512);
        block_on(source.push(&format!("team/app{i}:1.0"), &img));
    }
    let src = FaultProxy::start(&source.host(), Faults::default());
    let dst = FaultProxy::start(&target.host(), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  \"{t}\":\n    insecure: true\nimages:\n- source: team/app0:1.0\n- source: team/app1:1.0\n- source: team/app2:1.0\n",
            s = src.host(),
            t = dst.host()
        ),
    );
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    let cold = (shapes(&src, 0), shapes(&dst, 0));
    let (s0, d0) = (src.injected.log().len(), dst.injected.log().len());
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    let warm = (shapes(&src, s0), shapes(&dst, d0));
    // Warm: one HEAD per image at each registry, and one `/v2/` probe per
    // registry for the whole run (not one per image, however many start
    // at once).
    for (side, head) in [
        (&warm.0, "HEAD /v2/team/<repo>/manifests/<tag>"),
        (&warm.1, "HEAD /v2/mirror/team/<repo>/manifests/<tag>"),
    ] {
        assert_eq!(side.get(head), Some(&3), "{side:#?}");
        assert_eq!(side.get("GET /v2/"), Some(&1), "{side:#?}");
        assert_eq!(side.values().sum::<usize>(), 4, "{side:#?}");
    }
    assert_eq!(cold.0.get("GET /v2/"), Some(&1), "{:#?}", cold.0);
    assert_eq!(cold.1.get("GET /v2/"), Some(&1), "{:#?}", cold.1);
    // The whole picture, cold and warm, pinned (docs/performance.md).
    insta::assert_debug_snapshot!((cold, warm));
}
