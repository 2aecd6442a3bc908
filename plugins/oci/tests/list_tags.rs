//! Listing a repository's tags (`OciRegistry::list_tags`) against the real
//! registry. Debian's distribution 2.8 answers `tags/list` in one piece (it
//! ignores `n` and `last`), so pages come from the fault proxy
//! (`Faults::tag_pages`), which pages the registry's own list as
//! distribution 3 does and logs every request.

use image_syncer_core::context::Registries;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{ErrorKind, StageError};
use image_syncer_oci::{OciConfig, OciRegistry};
use image_syncer_testkit::faults::{FaultProxy, Faults, TagPages};
use image_syncer_testkit::{block_on, fixtures, Registry};

fn client_for(host: &str) -> OciRegistry {
    let mut cx = Registries::default();
    cx.insecure = vec![host.to_string()];
    OciRegistry::new(&OciConfig::default(), &cx).expect("registry client")
}

/// `n` tags of one tiny image in `repo`: `t000`, `t001`, ...
fn push_tags(registry: &Registry, repo: &str, n: usize) -> Vec<String> {
    block_on(async {
        let image = fixtures::image("list-tags", 1, 16);
        registry.push(&format!("{repo}:t000"), &image).await;
        let tags: Vec<String> = (0..n).map(|i| format!("t{i:03}")).collect();
        for tag in &tags[1..] {
            registry
                .push_manifest(&format!("{repo}:{tag}"), &image.media_type, &image.manifest)
                .await;
        }
        tags
    })
}

fn paging_proxy(registry: &Registry, style: TagPages) -> FaultProxy {
    FaultProxy::start(
        &registry.host(),
        Faults {
            tag_pages: Some(style),
            ..Default::default()
        },
    )
}

/// `host/repo` as a repository reference (no tag).
fn repository(host: &str, repo: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{repo}")).expect("repository reference")
}

fn list(host: &str, repo: &str, page_size: usize) -> Result<Vec<String>, StageError> {
    block_on(client_for(host).list_tags_paged(&repository(host, repo), page_size))
}

/// The `tags/list` requests the proxy saw, as `GET /v2/...`.
fn tag_list_requests(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .injected
        .log()
        .into_iter()
        .filter(|(_, path)| path.contains("/tags/list"))
        .map(|(method, path)| format!("{method} {path}"))
        .collect()
}

#[test]
fn two_hundred_fifty_tags_come_in_three_pages_of_a_hundred() {
    let registry = Registry::start();
    let tags = push_tags(&registry, "team/app", 250);
    let proxy = paging_proxy(&registry, TagPages::Relative);
    let listed = list(&proxy.host(), "team/app", 100).expect("listing");
    // Every tag once, in the registry's (here: the proxy's sorted) order.
    assert_eq!(listed, tags);
    insta::assert_yaml_snapshot!(tag_list_requests(&proxy), @r#"
    - GET /v2/team/app/tags/list?n=100
    - GET /v2/team/app/tags/list?last=t099&n=100
    - GET /v2/team/app/tags/list?last=t199&n=100
    "#);
}

#[test]
fn an_absolute_link_is_followed_like_a_relative_one() {
    let registry = Registry::start();
    let tags = push_tags(&registry, "app", 7);
    let proxy = paging_proxy(&registry, TagPages::Absolute);
    assert_eq!(list(&proxy.host(), "app", 3).expect("listing"), tags);
    assert_eq!(tag_list_requests(&proxy).len(), 3);
}

#[test]
fn the_default_page_takes_a_thousand_tags() {
    let registry = Registry::start();
    let tags = push_tags(&registry, "app", 250);
    let proxy = paging_proxy(&registry, TagPages::Relative);
    let host = proxy.host();
    let listed = block_on(client_for(&host).list_tags(&repository(&host, "app"))).unwrap();
    assert_eq!(listed, tags);
    assert_eq!(tag_list_requests(&proxy), ["GET /v2/app/tags/list?n=1000"]);
}

#[test]
fn a_registry_that_ignores_n_answers_in_one_page() {
    // Debian's registry itself: no `Link`, every tag in its own order.
    let registry = Registry::start();
    let tags = push_tags(&registry, "app", 12);
    let mut listed = list(&registry.host(), "app", 5).expect("listing");
    listed.sort();
    assert_eq!(listed, tags);
}

#[test]
fn a_repository_that_does_not_exist_is_not_found() {
    let registry = Registry::start();
    push_tags(&registry, "app", 1);
    let proxy = paging_proxy(&registry, TagPages::Relative);
    for host in [registry.host(), proxy.host()] {
        let e = list(&host, "nothing/here", 100).expect_err("no such repository");
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    }
}

/// The message of `e`, with the proxy's host made stable.
fn message(e: &StageError, proxy: &FaultProxy) -> String {
    e.to_string().replace(&proxy.host(), "PROXY")
}

#[test]
fn a_link_to_another_host_is_refused_not_followed() {
    let registry = Registry::start();
    push_tags(&registry, "app", 5);
    let proxy = paging_proxy(&registry, TagPages::OtherHost("127.0.0.1:9".into()));
    let e = list(&proxy.host(), "app", 2).expect_err("a link away");
    assert_eq!(e.kind, ErrorKind::Invalid);
    insta::assert_snapshot!(message(&e, &proxy), @"PROXY/app: listing tags: the registry's next-page link `http://127.0.0.1:9/v2/app/tags/list?last=t001&n=2` leads away from PROXY; not followed");
    assert_eq!(tag_list_requests(&proxy).len(), 1);
}

#[test]
fn a_link_back_to_the_same_page_is_refused() {
    let registry = Registry::start();
    push_tags(&registry, "app", 5);
    let proxy = paging_proxy(&registry, TagPages::Loop);
    let e = list(&proxy.host(), "app", 2).expect_err("a loop");
    assert_eq!(e.kind, ErrorKind::Invalid);
    insta::assert_snapshot!(message(&e, &proxy), @"PROXY/app: listing tags: page 1 of the tag list names itself or an earlier page as next (`/v2/app/tags/list?n=2`); not followed");
    assert_eq!(tag_list_requests(&proxy).len(), 1);
}
