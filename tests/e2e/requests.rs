//! How many requests a sync sends, counted at proxies in front of both
//! registries: the figures docs/performance.md gives per image, pinned.

use image_syncer_testkit::faults::{FaultProxy, Faults};
use image_syncer_testkit::TokenServer;

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

/// The scopes a token server was asked for, each with how often, and
/// whether every request carried the expected user.
fn scopes(
    server: &TokenServer,
    from: usize,
    user: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for request in server.requests().into_iter().skip(from) {
        assert_eq!(request.user.as_deref(), Some(user), "{request:?}");
        for scope in request.scopes {
            *out.entry(scope).or_insert(0) += 1;
        }
    }
    out
}

/// Registries with token authentication (the Docker Hub and GAR flow), the
/// real registry checking the tokens: one `/v2/` probe per registry and one
/// token request per repository and operation, however many requests of an
/// image (its blobs, in parallel) need the same scope at once.
#[test]
fn one_probe_per_registry_and_one_token_per_scope() {
    let src_tokens = TokenServer::start("puller", "pull-pass-4r5t");
    let dst_tokens = TokenServer::start("pusher", "push-pass-6y7u");
    let source = Registry::start_with(RegistryOptions {
        token: Some(src_tokens.registry_auth()),
        ..Default::default()
    });
    let target = Registry::start_with(RegistryOptions {
        token: Some(dst_tokens.registry_auth()),
        ..Default::default()
    });
    let mut images = Vec::new();
    for i in 0..3 {
        // Three layers and a config: four blobs of one image start at once.
        let img = fixtures::image(&format!("tokens-{i}"), 3, 512);
        block_on(source.push(&format!("team/app{i}:1.0"), &img));
        images.push(img);
    }
    // Pushing the fixtures asked the source's token server too.
    let pushed = src_tokens.requests().len();
    let src = FaultProxy::start(&source.host(), Faults::default());
    let dst = FaultProxy::start(&target.host(), Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-docker");
    std::fs::create_dir(&empty).unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "targetRepoPrefix: \"{t}/mirror/\"\nregistries:\n  docker.io:\n    endpoint: \"{s}\"\n    insecure: true\n  \"{s}\":\n    username: puller\n    passwordEnv: SRC_PASSWORD\n  \"{t}\":\n    insecure: true\n    username: pusher\n    passwordEnv: DST_PASSWORD\nimages:\n- source: team/app0:1.0\n- source: team/app1:1.0\n- source: team/app2:1.0\n",
            s = src.host(),
            t = dst.host()
        ),
    );
    let env = [
        ("DOCKER_CONFIG", empty.to_str().unwrap()),
        ("SRC_PASSWORD", "pull-pass-4r5t"),
        ("DST_PASSWORD", "push-pass-6y7u"),
    ];
    let r = run_with(&["-i", def.to_str().unwrap()], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    let cold = (
        scopes(&src_tokens, pushed, "puller"),
        scopes(&dst_tokens, 0, "pusher"),
    );
    // (The harness's own reads ask the token server too: after counting.)
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            block_on(target.digest(&format!("mirror/team/app{i}:1.0"))),
            Some(img.digest.to_string())
        );
    }
    let probes = |proxy: &FaultProxy, from: usize| {
        proxy
            .injected
            .log()
            .into_iter()
            .skip(from)
            .filter(|(m, p)| m == "GET" && p == "/v2/")
            .count()
    };
    assert_eq!((probes(&src, 0), probes(&dst, 0)), (1, 1));
    let (s0, d0) = (src.injected.log().len(), dst.injected.log().len());
    let (t0, u0) = (src_tokens.requests().len(), dst_tokens.requests().len());
    let r = run_with(&["-i", def.to_str().unwrap()], &env);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.stdout);
    let warm = (
        scopes(&src_tokens, t0, "puller"),
        scopes(&dst_tokens, u0, "pusher"),
    );
    assert_eq!((probes(&src, s0), probes(&dst, d0)), (1, 1));
    // Each scope asked once: pull at the source; pull (planning) and
    // pull,push (copying) at the target when cold, pull only when warm.
    for side in [&cold.0, &cold.1, &warm.0, &warm.1] {
        assert!(side.values().all(|n| *n == 1), "{side:#?}");
    }
    let repos = |prefix: &str, actions: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = (0..3)
            .flat_map(|i| {
                actions
                    .iter()
                    .map(move |a| format!("repository:{prefix}team/app{i}:{a}"))
            })
            .collect();
        all.sort();
        all
    };
    let keys =
        |m: &std::collections::BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&cold.0), repos("", &["pull"]));
    assert_eq!(keys(&cold.1), repos("mirror/", &["pull", "pull,push"]));
    assert_eq!(keys(&warm.0), repos("", &["pull"]));
    assert_eq!(keys(&warm.1), repos("mirror/", &["pull"]));
}
