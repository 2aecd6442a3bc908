//! Links the built-in plugins into the binary so that their `inventory`
//! registrations are present. Referencing each crate is what makes the linker
//! keep it.

use image_syncer_cosign as _;
use image_syncer_immutable as _;
use image_syncer_oci as _;
use image_syncer_oci_layout as _;
use image_syncer_retag as _;

#[cfg(test)]
mod tests {
    use image_syncer_core::context::StageContext;
    use image_syncer_core::definition::{config_to_yaml, parse_config_yaml};
    use image_syncer_core::registry::StageRegistry;

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
        let cx = StageContext {
            base_dir: dir.path().to_path_buf(),
            transports: vec!["oci".into()],
            key_ref: Some(key.display().to_string().parse().unwrap()),
            ..Default::default()
        };
        let registry = StageRegistry::builtin().unwrap();
        let mut built = 0;
        for s in registry.iter() {
            let value = parse_config_yaml(&s.example_config)
                .unwrap_or_else(|e| panic!("{} {}: example config: {e}", s.kind, s.name));
            let again = parse_config_yaml(&config_to_yaml(&value)).unwrap();
            assert_eq!(
                value, again,
                "{} {}: YAML round trip changed the config",
                s.kind, s.name
            );
            let stage = registry
                .build(s.kind, &s.name, &value, &cx)
                .unwrap_or_else(|e| {
                    panic!("{} {}: example config does not build: {e}", s.kind, s.name)
                });
            assert_eq!(stage.kind(), s.kind);
            // An unknown key is refused by every plugin's typed config.
            let mut bad = match value {
                serde_json::Value::Object(m) => m,
                _ => Default::default(),
            };
            bad.insert("noSuchSetting".into(), serde_json::Value::Bool(true));
            let err = registry
                .build(s.kind, &s.name, &serde_json::Value::Object(bad), &cx)
                .err()
                .unwrap_or_else(|| panic!("{} {} accepted an unknown key", s.kind, s.name));
            assert!(err.to_string().contains("noSuchSetting"), "{err}");
            built += 1;
        }
        assert_eq!(built, registry.iter().count());
        assert_eq!(
            built, 7,
            "oci, oci-layout (source and sink), retag, immutable, cosign"
        );
    }
}
