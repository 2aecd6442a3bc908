//! Links the built-in plugins into the binary so that their `inventory`
//! registrations are present. Referencing each crate is what makes the linker
//! keep it.

use image_syncer_cosign as _;
use image_syncer_immutable as _;
use image_syncer_oci as _;
use image_syncer_oci_layout as _;
use image_syncer_retag as _;
use image_syncer_tags as _;

#[cfg(test)]
mod tests {
    use image_syncer_core::catalogue::{BuildError, ConfigValue, StageRegistry};
    use image_syncer_core::context::RunContext;
    use image_syncer_core::definition::{config_to_yaml, parse_config_yaml};
    use image_syncer_core::stage::StageKind;

    /// Builds the stage `name` of `kind` with its kind's part of `cx`.
    fn build(
        registry: &StageRegistry,
        kind: StageKind,
        name: &str,
        config: &ConfigValue,
        cx: &RunContext,
    ) -> Result<(), BuildError> {
        // One arm per kind of the core's `stage_kinds!`, each with its part of
        // the run context (`cx.source()`, …): a new kind cannot go unbuilt.
        macro_rules! by_kind {
            ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $context:ident, factory: $factory:ident })*) => {
                match kind {
                    $(StageKind::$variant => registry.$build(name, config, &cx.$ctor()).map(drop),)*
                }
            };
        }
        image_syncer_core::stage_kinds!(by_kind)
    }

    #[test]
    fn the_shipped_schema_is_current() {
        let shipped = include_str!("../../../docs/definition.schema.json");
        let registry = StageRegistry::builtin().unwrap();
        assert!(
            shipped == registry.definition_schema(),
            "docs/definition.schema.json is stale: run `image-syncer --print-schema > docs/definition.schema.json`"
        );
    }

    /// The shipped schema narrows each stage entry to the built-in plugins of
    /// its kind, each with its config schema, plus a branch for other names.
    #[test]
    fn the_schema_carries_every_builtin_config_schema() {
        let registry = StageRegistry::builtin().unwrap();
        let schema: serde_json::Value =
            serde_json::from_str(&registry.definition_schema()).unwrap();
        let mut seen = 0;
        for s in registry.iter() {
            let def = format!("{}Stage", {
                let k = s.kind().to_string();
                k[..1].to_uppercase() + &k[1..]
            });
            let branches = schema["$defs"][&def]["anyOf"]
                .as_array()
                .unwrap_or_else(|| panic!("{def} has no anyOf"));
            let branch = branches
                .iter()
                .find(|b| b["properties"]["plugin"]["const"] == s.name.as_str())
                .unwrap_or_else(|| panic!("{def} has no branch for {}", s.name));
            let mut own = s.config_schema.clone().unwrap();
            own.as_object_mut().unwrap().remove("$schema");
            // The config's own `$defs` move up to the definition's.
            if let Some(serde_json::Value::Object(defs)) =
                own.as_object_mut().unwrap().remove("$defs")
            {
                for (name, d) in defs {
                    assert_eq!(schema["$defs"][&name], d, "{def} {}: $defs/{name}", s.name);
                }
            }
            assert_eq!(
                branch["properties"]["config"]["anyOf"][0], own,
                "{def} {}",
                s.name
            );
            let others = &branches.last().unwrap()["properties"]["plugin"]["not"]["enum"];
            assert!(
                others.as_array().unwrap().contains(&s.name.as_str().into()),
                "{def}: the free-form branch does not exclude {}",
                s.name
            );
            seen += 1;
        }
        assert_eq!(seen, 9);
        let oci = &schema["$defs"]["SinkStage"]["anyOf"][0]["properties"]["config"]["anyOf"][0];
        assert_eq!(oci["additionalProperties"], false);
        assert!(oci["properties"]["readTimeoutSeconds"]["description"]
            .as_str()
            .unwrap()
            .starts_with("Seconds a registry may stay silent"));
    }

    #[test]
    fn stage_list_is_sorted_and_pinned() {
        let registry = StageRegistry::builtin().unwrap();
        insta::assert_snapshot!(crate::run::render_stages(&registry));
    }

    /// Every built-in plugin's example config parses, survives a YAML round
    /// trip unchanged, and builds a stage of its kind.
    #[test]
    fn example_configs_round_trip_and_build() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key)
            .status()
            .expect("openssl");
        assert!(status.success());
        // The cosign-verify example names `keys/vendor.pub`.
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let status = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.path().join("keys/vendor.pub"))
            .status()
            .expect("openssl");
        assert!(status.success());
        let mut cx = RunContext::default();
        cx.base_dir = dir.path().to_path_buf();
        cx.transports = vec!["oci".into()];
        cx.signing_key = Some(key.display().to_string());
        let registry = StageRegistry::builtin().unwrap();
        let mut built = 0;
        for s in registry.iter() {
            let value = parse_config_yaml(&s.example_config)
                .unwrap_or_else(|e| panic!("{} {}: example config: {e}", s.kind(), s.name));
            // The example is generated from the config type: every key it
            // shows is a property of the config's schema.
            let schema = s.config_schema.as_ref().expect("built-ins have a schema");
            for key in value.as_object().expect("an example is a map").keys() {
                assert!(
                    schema["properties"].get(key).is_some(),
                    "{} {}: example key {key} is not in the schema",
                    s.kind(),
                    s.name
                );
            }
            let again = parse_config_yaml(&config_to_yaml(&value)).unwrap();
            assert_eq!(
                value,
                again,
                "{} {}: YAML round trip changed the config",
                s.kind(),
                s.name
            );
            build(&registry, s.kind(), &s.name, &value, &cx).unwrap_or_else(|e| {
                panic!(
                    "{} {}: example config does not build: {e}",
                    s.kind(),
                    s.name
                )
            });
            // An unknown key is refused by every plugin's typed config.
            let mut bad = match value {
                serde_json::Value::Object(m) => m,
                _ => Default::default(),
            };
            bad.insert("noSuchSetting".into(), serde_json::Value::Bool(true));
            let err = build(
                &registry,
                s.kind(),
                &s.name,
                &serde_json::Value::Object(bad),
                &cx,
            )
            .err()
            .unwrap_or_else(|| panic!("{} {} accepted an unknown key", s.kind(), s.name));
            assert!(err.to_string().contains("noSuchSetting"), "{err}");
            built += 1;
        }
        assert_eq!(built, registry.iter().count());
        assert_eq!(
            built, 9,
            "oci, oci-layout (source and sink), tags, retag, immutable, cosign-verify, cosign"
        );
    }
}
