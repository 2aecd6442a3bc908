use super::*;

fn err(text: &str) -> String {
    parse(text, Path::new("images.yaml"), &["oci"])
        .unwrap_err()
        .to_string()
}

// The shipped schema's staleness is checked in the CLI's tests
// (`builtins::tests::the_shipped_schema_is_current`), where the built-in
// plugins are linked.

/// A stage entry narrows to the registered plugins of its kind: their
/// config schemas (with their own `$defs` moved up), and a free-form
/// branch for other names; kinds with no typed plugin stay free-form.
#[test]
fn stage_entries_follow_the_registered_config_schemas() {
    use crate::catalogue::{
        BuildError, ConfigValue, Factory, Origin, RegisteredStage, StageRegistry,
    };
    use crate::context::{GuardContext, SignerContext};
    // The schema builds no stage: these factories refuse.
    let never = |kind| BuildError::Setup {
        kind,
        plugin: "never".into(),
        message: "the schema builds no stage".into(),
    };
    let factory = |kind| match kind {
        StageKind::Signer => {
            Factory::signer(move |_: &ConfigValue, _: &SignerContext| Err(never(StageKind::Signer)))
        }
        _ => Factory::guard(move |_: &ConfigValue, _: &GuardContext| Err(never(StageKind::Guard))),
    };
    let mut registry = StageRegistry::default();
    let stage = |kind, name: &str, schema: Option<serde_json::Value>| RegisteredStage {
        name: name.into(),
        description: String::new(),
        example_config: String::new(),
        config_schema: schema,
        transport: None,
        origin: Origin::Builtin,
        factory: factory(kind),
    };
    let signer = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": { "key": { "$ref": "#/$defs/Key" } },
        "additionalProperties": false,
        "$defs": { "Key": { "type": "string" } }
    });
    registry
        .insert(stage(StageKind::Signer, "sig", Some(signer)))
        .unwrap();
    registry
        .insert(stage(StageKind::Guard, "free", None))
        .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&registry.definition_schema()).unwrap();
    let defs = &schema["$defs"];
    assert_eq!(defs["Key"], serde_json::json!({ "type": "string" }));
    let branches = defs["SignerStage"]["anyOf"].as_array().unwrap();
    assert_eq!(branches.len(), 2, "{branches:#?}");
    assert_eq!(branches[0]["properties"]["plugin"]["const"], "sig");
    let config = &branches[0]["properties"]["config"]["anyOf"];
    assert_eq!(config[0]["properties"]["key"]["$ref"], "#/$defs/Key");
    assert!(config[0].get("$schema").is_none());
    assert_eq!(config[1]["type"], "null");
    assert_eq!(
        branches[1]["properties"]["plugin"]["not"]["enum"],
        serde_json::json!(["sig"])
    );
    assert!(defs["GuardStage"].get("anyOf").is_none());
    assert_eq!(
        defs["GuardStage"]["required"],
        serde_json::json!(["plugin"])
    );
    assert_eq!(
        schema["$defs"]["PipelineModel"]["properties"]["signer"]["anyOf"][0]["$ref"],
        "#/$defs/SignerStage"
    );
    assert_eq!(
        schema["$defs"]["ImagePipelineModel"]["properties"]["signer"]["anyOf"][0]["$ref"],
        "#/$defs/SignerStage"
    );
    assert_eq!(
        schema["$defs"]["PipelineModel"]["properties"]["guards"]["items"]["$ref"],
        "#/$defs/GuardStage"
    );
}

#[test]
fn parses_original_format() {
    let d = parse(
        r#"targetRepoPrefix: "eu.gcr.io/kyma-project/external/"
sign: true # default for all images
images:
- source: "bitnami/keycloak-gatekeeper:9.0.3"
  sign: false
- source: "bitnami/postgres-exporter:0.8.0-debian-10-r28"
- source: "busybox@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
  tag: "1.32.0-v1"
registries:
  docker.io:
    endpoint: "127.0.0.1:5001"
  "127.0.0.1:5001":
    insecure: true
"#,
        Path::new("dir/images.yaml"),
        &["oci"],
    )
    .unwrap();
    assert_eq!(d.images.len(), 3);
    assert!(!d.images[0].sign);
    assert!(d.images[1].sign);
    assert_eq!(d.images[2].tag.as_deref(), Some("1.32.0-v1"));
    assert_eq!(d.images[0].line, Some(4));
    assert_eq!(d.images[2].line, Some(7));
    assert_eq!(d.base_dir(), PathBuf::from("dir"));
    assert_eq!(
        d.registries["docker.io"].endpoint.as_deref(),
        Some("127.0.0.1:5001")
    );
}

#[test]
fn error_messages() {
    let cases = [
            ("empty", ""),
            ("comments only", "# nothing\n"),
            ("flow sequence as prefix", "targetRepoPrefix: [\nimages: []\n"),
            ("malformed", "targetRepoPrefix: r.io/x/\nimages:\n  - source: a:1\n - source: b:1\n"),
            ("unterminated quote", "targetRepoPrefix: \"r.io/x/\nimages: []\n"),
            ("tab indentation", "targetRepoPrefix: r.io/x/\nimages:\n\t- source: a:1\n"),
            ("unknown key", "targetRepoPrefix: r.io/x/\nimages: []\nsigned: true\n"),
            ("unknown image key", "targetRepoPrefix: r.io/x/\nimages:\n- source: a:1\n  tagz: x\n"),
            ("tags on a tagged source", "targetRepoPrefix: r.io/x/\nimages:\n- source: quay.io/p/p:v1\n  tags: { newest: 3 }\n"),
            ("tags on a digest source", "targetRepoPrefix: r.io/x/\nimages:\n- source: \"quay.io/p/p@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab\"\n  tags: { newest: 3 }\n"),
            ("tags with tag", "targetRepoPrefix: r.io/x/\nimages:\n- source: quay.io/p/p\n  tag: v1\n  tags: { newest: 3 }\n"),
            ("tags with a selector", "targetRepoPrefix: r.io/x/\nimages:\n- source: quay.io/p/p\n  tags: { newest: 3 }\n  pipeline:\n    selector: { plugin: mine }\n"),
            ("wrong type", "targetRepoPrefix: r.io/x/\nsign: maybe\nimages: []\n"),
            ("missing images", "targetRepoPrefix: r.io/x/\n"),
            ("missing prefix", "images: []\n"),
            ("empty prefix", "targetRepoPrefix: \"\"\nimages: []\n"),
            ("digest without tag", "targetRepoPrefix: r.io/x/\nimages:\n- source: a:1\n- source: \"busybox@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab\"\n"),
            ("bad reference", "targetRepoPrefix: r.io/x/\nimages:\n- source: \"Busybox:1\"\n"),
            ("bad digest", "targetRepoPrefix: r.io/x/\nimages:\n- source: \"busybox@sha256:1234\"\n  tag: v1\n"),
            ("bad tag", "targetRepoPrefix: r.io/x/\nimages:\n- source: busybox:1\n  tag: \"-bad\"\n"),
            ("no tag", "targetRepoPrefix: r.io/x/\nimages:\n- source: busybox\n"),
            ("unknown registry setting", "targetRepoPrefix: r.io/x/\nimages: []\nregistries:\n  docker.io:\n    mirror: x\n"),
            ("bad endpoint", "targetRepoPrefix: r.io/x/\nimages: []\nregistries:\n  docker.io:\n    endpoint: \"http://127.0.0.1:5000\"\n"),
            ("images not a list", "targetRepoPrefix: r.io/x/\nimages: busybox\n"),
        ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(name, text)| format!("{name}: {}", err(text)))
        .collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

/// `registries:` resolved: credentials read from their file (relative to
/// the definition), found under the host and under its endpoint; a variable
/// that is not set and a half-given login are input errors naming the entry.
#[test]
fn registry_access_reads_credentials_and_names_the_entry_at_fault() {
    use crate::context::{Credentials, Registries};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("pass.txt"), "s3cret\n").unwrap();
    let def = |registries: &str| {
        parse(
            &format!("targetRepoPrefix: dst.io/m/\nregistries:\n{registries}images:\n- source: busybox:1.36\n"),
            &dir.join("images.yaml"),
            &[],
        )
        .unwrap()
    };
    let d = def("  docker.io:\n    endpoint: mirror.local:5000\n    insecure: true\n    username: bob\n    passwordFile: pass.txt\n");
    let registries = Registries {
        hosts: d.registry_access().unwrap(),
        ..Default::default()
    };
    let bob = Credentials::Basic {
        username: "bob".into(),
        password: crate::context::Secret::new("s3cret"),
    };
    assert_eq!(registries.configured_credentials("docker.io"), Some(&bob));
    // The mirror is reached with the credentials of the entry it serves.
    assert_eq!(
        registries.configured_credentials("mirror.local:5000"),
        Some(&bob)
    );
    assert_eq!(registries.configured_credentials("quay.io"), None);
    assert_eq!(
        registries.endpoint_for("docker.io"),
        ("mirror.local:5000".to_string(), true)
    );
    let mut messages = Vec::new();
    for (registries, says) in [
        (
            "  quay.io:\n    username: bob\n    passwordEnv: IMAGE_SYNCER_TEST_NEVER_SET\n",
            "registries.quay.io: the environment variable IMAGE_SYNCER_TEST_NEVER_SET is not set",
        ),
        (
            "  quay.io:\n    passwordFile: pass.txt\n",
            "registries.quay.io: give `username` with one of `passwordEnv`/`passwordFile`, or `tokenEnv` alone",
        ),
        (
            "  quay.io:\n    username: bob\n    passwordFile: missing.txt\n",
            "registries.quay.io: cannot read passwordFile",
        ),
    ] {
        let err = def(registries).registry_access().unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
        assert!(err.contains("images.yaml"), "{err}");
        messages.push(err.replace(&dir.display().to_string(), "[DIR]"));
    }
    // The whole messages, as docs/definition.md quotes them.
    insta::assert_snapshot!("registry_access_errors", messages.join("\n"));
}
