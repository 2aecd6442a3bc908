//! A renewed cloud login replaces the one the client holds (oci-client's
//! `Client::replace_auth`, third_party patch 0014), against the real
//! registry behind htpasswd. Without it a client keeps the credentials it
//! was first given, and the basic token it made of them, for ever: a
//! process in watch mode would be refused once ECR's 12-hour token ended.

use image_syncer_core::manifest::ACCEPTED_MANIFEST_TYPES;
use image_syncer_testkit::{block_on, fixtures, Registry, RegistryOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

#[test]
fn replaced_credentials_are_used_from_the_next_request_on() {
    let registry = Registry::start_with(RegistryOptions {
        htpasswd: Some(("AWS".into(), "renewed-token".into())),
        ..Default::default()
    });
    let image = fixtures::image("replaced-credentials", 1, 64);
    block_on(registry.push("app:1", &image));
    let host = registry.host();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference = Reference::with_tag(host.clone(), "app".into(), "1".into());
    let expired = RegistryAuth::Basic("AWS".into(), "expired-token".into());
    let renewed = RegistryAuth::Basic("AWS".into(), "renewed-token".into());
    let pull = |auth: &RegistryAuth| {
        block_on(client.pull_manifest_raw(&reference, auth, ACCEPTED_MANIFEST_TYPES))
    };

    assert!(pull(&expired).is_err(), "the registry took the old token");
    // Handing the new credentials to a call is not enough: the client
    // keeps what it was given first.
    assert!(
        pull(&renewed).is_err(),
        "the client used credentials it was not given first"
    );
    block_on(client.replace_auth(&host, renewed.clone()));
    let (bytes, digest) = pull(&renewed).expect("the replaced credentials are used");
    assert_eq!(digest, image.digest.to_string());
    assert_eq!(bytes, image.manifest);
}
