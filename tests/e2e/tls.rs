//! HTTPS registries: certificates verified by default, a CA given by
//! `--ca-file` or `SSL_CERT_FILE`, a wrong CA refused clearly.

use crate::support::*;

fn setup() -> (Registry, Registry, tempfile::TempDir, String) {
    let source = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    block_on(source.push("library/busybox:1.36", &fixtures::image("tls", 1, 300)));
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "{}images:\n- source: busybox:1.36\n",
            header(&source, &target)
        ),
    )
    .display()
    .to_string();
    (source, target, dir, def)
}

#[test]
fn https_target_needs_its_ca_and_gets_it_from_ca_file_or_ssl_cert_file() {
    let (_source, target, dir, def) = setup();
    let ca = target.ca_file().unwrap();
    // Verification is on by default: an unknown CA is refused, nothing written.
    let r = run(&["-i", &def]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.to_lowercase().contains("certificate"),
        "{}",
        r.stdout
    );
    assert_eq!(block_on(target.digest("mirror/library/busybox:1.36")), None);
    // A wrong CA is refused the same way.
    let other = Registry::start_with(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let wrong = other.ca_file().unwrap();
    let r = run(&["-i", &def, "--ca-file", wrong.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    // The right CA through --ca-file.
    let r = run(&["-i", &def, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(block_on(target.digest("mirror/library/busybox:1.36")).is_some());
    // And through the usual SSL_CERT_FILE: the next run finds it in sync.
    let r = run_with(&["-i", &def], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("already in sync"), "{}", r.stdout);
    // A CA file that is not one is an input error.
    let junk = write(dir.path(), "junk.pem", "not a certificate");
    let r = run(&["-i", &def, "--ca-file", junk.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("junk.pem: not a PEM certificate file"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_https_registry_is_reached_through_https_proxy() {
    // The proxy tunnels (CONNECT) to the HTTPS target and forwards the plain
    // HTTP source's requests; TLS runs end to end, verified with the CA.
    let (source, target, _dir, def) = setup();
    let proxy = image_syncer_testkit::faults::FaultProxy::start(
        &source.host(),
        image_syncer_testkit::faults::Faults::default(),
    );
    let ca = target.ca_file().unwrap();
    let url = format!("http://{}", proxy.host());
    let r = run_with(
        &["-i", &def, "--ca-file", ca.to_str().unwrap()],
        &[("HTTPS_PROXY", &url), ("HTTP_PROXY", &url)],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let seen = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen(&proxy.injected.tunnels) >= 1, "no CONNECT tunnel");
    assert!(
        seen(&proxy.injected.requests) >= 1,
        "no proxied HTTP request"
    );
    assert!(block_on(target.digest("mirror/library/busybox:1.36")).is_some());
}

/// Plain HTTP is used only for registries named insecure: a plain-HTTP
/// target that is not is spoken to in TLS, which fails (exit 1), and the
/// registry never sees a plain request.
#[test]
fn plain_http_only_for_registries_named_insecure() {
    let source = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        access_log: true,
        ..Default::default()
    });
    let img = fixtures::image("plain-http", 1, 100);
    block_on(source.push("library/busybox:1.36", &img));
    let dir = tempfile::tempdir().unwrap();
    let def = write(
        dir.path(),
        "images.yaml",
        &format!(
            "{}images:\n- source: busybox:1.36\n",
            header(&source, &target)
        ),
    );
    let before = target.storage_snapshot();
    // (The harness asked `/v2/` once, in plain HTTP, to see it started.)
    let seen = target.requests().len();
    let r = run(&["-i", def.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains(&format!("https://{}/v2/", target.host())),
        "{}",
        r.stdout
    );
    assert_eq!(target.requests().len(), seen, "{:?}", target.requests());
    assert_eq!(target.storage_snapshot(), before);
    // Named insecure, the same run goes through in plain HTTP.
    let r = run(&[
        "-i",
        def.to_str().unwrap(),
        "--insecure-registry",
        &target.host(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(target.requests().len() > seen);
}
