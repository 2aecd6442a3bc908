//! The JSON Schema of the definition file (`--print-schema`).

use super::*;

/// The JSON Schema of the definition file, generated from the types above and
/// from the stage registry (shipped as `docs/definition.schema.json`, from the
/// built-in plugins). A stage entry of each kind (`$defs/SignerStage`, …) is
/// an `anyOf`: one branch per registered plugin of that kind with a config
/// schema (`plugin` is its name, `config` follows its schema or is empty), and
/// one for any other name with a free-form config, so that definitions using
/// plugins loaded from libraries still validate.
pub fn json_schema<'a>(
    stages: impl IntoIterator<Item = (StageKind, &'a str, Option<&'a serde_json::Value>)>,
) -> String {
    let stages: Vec<_> = stages.into_iter().collect();
    let schema = schemars::schema_for!(FileModel);
    let mut schema = serde_json::to_value(&schema).expect("the schema serializes");
    let defs = schema
        .get_mut("$defs")
        .and_then(|d| d.as_object_mut())
        .expect("the definition schema has $defs");
    for &kind in StageKind::ALL {
        // `$defs/SourceStage`, … (the file model's stage entry of each kind).
        let name = kind.name();
        let def = &format!("{}{}Stage", name[..1].to_uppercase(), &name[1..]);
        let mut branches = Vec::new();
        let mut typed = Vec::new();
        for (_, name, config) in stages.iter().filter(|(k, ..)| *k == kind) {
            let Some(config) = config.cloned() else {
                continue;
            };
            let Some(config) = embed_schema(config, defs) else {
                continue;
            };
            typed.push(serde_json::Value::String(name.to_string()));
            branches.push(serde_json::json!({
                "properties": {
                    "plugin": { "const": name },
                    "config": { "anyOf": [config, { "type": "null" }] }
                }
            }));
        }
        if typed.is_empty() {
            continue;
        }
        branches.push(serde_json::json!({
            "properties": { "plugin": { "not": { "enum": typed } } }
        }));
        let entry = defs
            .get_mut(def)
            .and_then(|d| d.as_object_mut())
            .expect("each stage kind has its $defs entry");
        entry.insert(
            "description".into(),
            format!(
                "A {kind} stage: `{{ plugin: NAME, config: {{...}} }}`; the config of a \
                 known plugin follows that plugin's schema (`image-syncer --list-stages`)."
            )
            .into(),
        );
        entry.insert("anyOf".into(), branches.into());
    }
    // An entry's `tags:` is the `tags` selector's config.
    let tags = stages
        .iter()
        .find(|(k, name, _)| *k == StageKind::Selector && *name == TAGS_SELECTOR)
        .and_then(|(_, _, config)| config.cloned());
    if let Some(rule) = tags.and_then(|c| embed_schema(c, defs)) {
        let mut rule = rule;
        if let Some(m) = rule.as_object_mut() {
            m.insert(
                "description".into(),
                "A rule selecting the repository's tags (the built-in `tags` selector's config; \
                 `image-syncer --list-stages`)."
                    .into(),
            );
        }
        defs.insert("TagsRule".into(), rule);
    }
    // Back to a `Schema`, which writes its keywords in their usual order.
    let schema = schemars::Schema::try_from(schema).expect("still a schema");
    let mut text = serde_json::to_string_pretty(&schema).expect("the schema serializes");
    text.push('\n');
    text
}

/// A plugin's config schema made ready to nest in the definition's: its own
/// `$defs` move to the definition's (`#/$defs/...` references stay right),
/// `$schema` goes. `None` (the config stays free-form) when it is not a
/// schema or one of its `$defs` names is taken by a different schema.
fn embed_schema(
    schema: serde_json::Value,
    defs: &mut serde_json::Map<String, serde_json::Value>,
) -> Option<serde_json::Value> {
    let mut schema = match schema {
        serde_json::Value::Object(m) => m,
        b @ serde_json::Value::Bool(_) => return Some(b),
        _ => return None,
    };
    schema.remove("$schema");
    if let Some(own) = schema.remove("$defs") {
        let own = own.as_object()?.clone();
        if own.iter().any(|(k, v)| defs.get(k).is_some_and(|d| d != v)) {
            return None;
        }
        defs.extend(own);
    }
    Some(serde_json::Value::Object(schema))
}
