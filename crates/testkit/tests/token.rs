//! The stand-in token issuer against the real registry (distribution 2.8
//! with `auth.token`): tokens it signs are accepted for what they grant, and
//! only for that.

use base64::Engine as _;
use image_syncer_testkit::{
    block_on, fixtures, Registry, RegistryOptions, TokenAuth, TokenRequest, TokenServer,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

const USER: &str = "pusher";
const PASSWORD: &str = "t0ken-pass";

fn token_registry(auth: TokenAuth) -> Registry {
    Registry::start_with(RegistryOptions {
        token: Some(auth),
        ..Default::default()
    })
}

/// A fresh oci-client (no cached tokens) for plain HTTP.
fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Whether the registry refused the request for want of authorization (a
/// 401, not any other failure).
fn refused<T: std::fmt::Debug>(r: Result<T, OciDistributionError>) -> bool {
    match r {
        Err(OciDistributionError::UnauthorizedError { .. }) => true,
        Err(OciDistributionError::ServerError { code: 401, .. }) => true,
        Err(OciDistributionError::RegistryError { envelope, .. }) => envelope
            .errors
            .iter()
            .all(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The claims of a JWT, unverified.
fn claims(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// GETs a token: (status, JSON body).
fn get_token(
    ts: &TokenServer,
    query: &str,
    basic: Option<(&str, &str)>,
) -> (u16, serde_json::Value) {
    block_on(async {
        let mut req = reqwest::Client::new().get(format!("{}?{query}", ts.url()));
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.expect("token request");
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("token answer");
        (status, serde_json::from_str(&body).expect("JSON answer"))
    })
}

#[test]
fn a_push_and_a_pull_go_through_the_token_flow() {
    let ts = TokenServer::start(USER, PASSWORD);
    let registry = token_registry(ts.registry_auth());
    let image = fixtures::image("token-flow", 2, 300);
    block_on(registry.push("team/app:1", &image));

    assert_eq!(
        block_on(registry.digest("team/app:1")),
        Some(image.digest.to_string())
    );
    for b in &image.blobs {
        assert_eq!(
            block_on(registry.blob("team/app", &b.digest.to_string())).as_deref(),
            Some(&b.data[..]),
            "blob {}",
            b.digest
        );
    }

    let requests = ts.requests();
    let push = TokenRequest {
        user: Some(USER.into()),
        scopes: vec!["repository:team/app:pull,push".into()],
        service: Some(TokenServer::SERVICE.into()),
    };
    let pull = TokenRequest {
        scopes: vec!["repository:team/app:pull".into()],
        ..push.clone()
    };
    assert!(requests.contains(&push), "{requests:#?}");
    assert!(requests.contains(&pull), "{requests:#?}");
    assert!(
        requests.iter().all(|r| r.user.as_deref() == Some(USER)),
        "{requests:#?}"
    );
}

#[test]
fn an_anonymous_pull_is_refused_unless_anonymous_pull_is_allowed() {
    let ts = TokenServer::start(USER, PASSWORD);
    let registry = token_registry(ts.registry_auth());
    let image = fixtures::image("token-anonymous", 1, 200);
    block_on(registry.push("team/private:1", &image));
    let reference = registry.reference("team/private:1");
    let pull = |c: &Client| {
        block_on(c.pull_manifest_raw(
            &reference,
            &RegistryAuth::Anonymous,
            &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE],
        ))
    };

    // A token granting nothing: the registry refuses.
    let before = ts.requests().len();
    assert!(
        refused(pull(&client())),
        "an anonymous pull of a private repository"
    );
    let anonymous = &ts.requests()[before..];
    assert!(
        anonymous.contains(&TokenRequest {
            user: None,
            scopes: vec!["repository:team/private:pull".into()],
            service: Some(TokenServer::SERVICE.into()),
        }),
        "{anonymous:#?}"
    );
    let (status, body) = get_token(
        &ts,
        "service=image-syncer-test-registry&scope=repository:team/private:pull",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        claims(body["token"].as_str().unwrap())["access"],
        serde_json::json!([{"type": "repository", "name": "team/private", "actions": []}])
    );

    // Allowed: anonymous requests get `pull`, and only that.
    ts.allow_anonymous_pull(true);
    let (bytes, digest) = pull(&client()).expect("an anonymous pull, allowed");
    assert_eq!(digest, image.digest.to_string());
    assert_eq!(bytes, image.manifest);
    let anonymous_push = block_on(client().auth(
        &reference,
        &RegistryAuth::Anonymous,
        RegistryOperation::Push,
    ))
    .expect("a token, granting pull only");
    let jwt = anonymous_push.expect("a bearer token");
    assert_eq!(
        claims(&jwt)["access"],
        serde_json::json!([{"type": "repository", "name": "team/private", "actions": ["pull"]}])
    );
    let c = client();
    block_on(c.store_auth_if_needed(reference.resolve_registry(), &RegistryAuth::Anonymous));
    let other = fixtures::image("token-anonymous-push", 1, 100);
    let pushed = block_on(c.push_blob(
        &reference,
        other.blobs[0].data.clone(),
        &other.blobs[0].digest.to_string(),
    ));
    assert!(refused(pushed), "an anonymous push");
    assert!(!block_on(
        registry.has_blob("team/private", &other.blobs[0].digest.to_string())
    ));
}

#[test]
fn a_wrong_password_gets_no_token_and_pushes_nothing() {
    let ts = TokenServer::start(USER, PASSWORD);
    let registry = token_registry(ts.registry_auth());

    let (status, body) = get_token(
        &ts,
        "service=image-syncer-test-registry&scope=repository:team/app:pull,push",
        Some((USER, "wrong")),
    );
    assert_eq!(status, 401);
    assert!(body.get("token").is_none(), "{body}");

    let wrong = RegistryAuth::Basic(USER.into(), "wrong".into());
    let reference = registry.reference("team/app:1");
    let c = client();
    match block_on(c.auth(&reference, &wrong, RegistryOperation::Push)) {
        Err(OciDistributionError::AuthenticationFailure(_)) => {}
        other => panic!("expected the token server's refusal, got {other:?}"),
    }
    let image = fixtures::image("token-wrong", 1, 100);
    let blob = &image.blobs[0];
    let pushed = block_on(c.push_blob(&reference, blob.data.clone(), &blob.digest.to_string()));
    assert!(refused(pushed), "a push with a wrong password");
    let pulled = block_on(c.pull_manifest_raw(
        &reference,
        &wrong,
        &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE],
    ));
    assert!(refused(pulled), "a pull with a wrong password");

    let requests = ts.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.user.as_deref() == Some(USER)),
        "{requests:#?}"
    );
    // With the right password, nothing is there.
    assert!(!block_on(
        registry.has_blob("team/app", &blob.digest.to_string())
    ));
    assert_eq!(block_on(registry.tags("team/app")), Vec::<String>::new());
}

#[test]
fn tokens_carry_what_distribution_checks() {
    let ts = TokenServer::start(USER, PASSWORD);
    let (status, body) = get_token(
        &ts,
        "service=image-syncer-test-registry&scope=repository:a/b:pull,push&scope=repository:c:pull",
        Some((USER, PASSWORD)),
    );
    assert_eq!(status, 200, "{body}");
    let jwt = body["token"].as_str().expect("token");
    assert_eq!(body["access_token"].as_str(), Some(jwt));
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z') && issued_at.as_bytes()[10] == b'T',
        "{issued_at}"
    );

    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));

    let c = claims(jwt);
    assert_eq!(c["iss"], TokenServer::ISSUER);
    assert_eq!(c["aud"], TokenServer::SERVICE);
    assert_eq!(c["sub"], USER);
    let (iat, nbf, exp) = (
        c["iat"].as_u64().unwrap(),
        c["nbf"].as_u64().unwrap(),
        c["exp"].as_u64().unwrap(),
    );
    assert_eq!((iat - nbf, exp - iat), (10, 300));
    assert_eq!(
        c["access"],
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull", "push"]},
            {"type": "repository", "name": "c", "actions": ["pull"]},
        ])
    );
    // Each token its own id.
    let (_, again) = get_token(
        &ts,
        "service=x&scope=repository:c:pull",
        Some((USER, PASSWORD)),
    );
    let again = claims(again["token"].as_str().unwrap());
    assert_ne!(again["jti"], c["jti"]);
    assert_eq!(again["aud"], "x");
    assert_eq!(
        ts.requests().last(),
        Some(&TokenRequest {
            user: Some(USER.into()),
            scopes: vec!["repository:c:pull".into()],
            service: Some("x".into()),
        })
    );
}

#[test]
fn a_registry_trusting_another_issuers_certificate_refuses_the_tokens() {
    let ts = TokenServer::start(USER, PASSWORD);
    let other = TokenServer::start(USER, PASSWORD);
    let registry = token_registry(TokenAuth {
        root_certificates: other.certificate(),
        ..ts.registry_auth()
    });
    let reference = registry.reference("team/app:1");
    let c = client();
    let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
    // The token server grants the push; the registry does not take its word.
    assert!(block_on(c.auth(&reference, &auth, RegistryOperation::Push))
        .expect("a token")
        .is_some());
    let image = fixtures::image("token-untrusted", 1, 100);
    let blob = &image.blobs[0];
    let pushed = block_on(c.push_blob(&reference, blob.data.clone(), &blob.digest.to_string()));
    assert!(refused(pushed), "a token signed by an untrusted key");
    // The same with a registry trusting the issuer: the push goes through.
    let trusting = token_registry(ts.registry_auth());
    let c = client();
    block_on(c.store_auth_if_needed(&trusting.host(), &auth));
    block_on(c.push_blob(
        &trusting.reference("team/app:1"),
        blob.data.clone(),
        &blob.digest.to_string(),
    ))
    .expect("a push with a trusted token");
    assert!(block_on(
        trusting.has_blob("team/app", &blob.digest.to_string())
    ));
}

#[test]
#[should_panic(expected = "htpasswd and token auth cannot be used together")]
fn htpasswd_and_token_auth_together_are_refused() {
    let ts = TokenServer::start(USER, PASSWORD);
    Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        token: Some(ts.registry_auth()),
        ..Default::default()
    });
}
