//! The stage registry: every stage plugin the process knows, by kind and name.
//!
//! Built-in plugins register a [`StagePlugin`] with `inventory::submit!`; the
//! registry collects them at start-up. Other origins (dynamic libraries) add
//! [`RegisteredStage`]s through [`StageRegistry::insert`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::StageContext;
use crate::stage::{Stage, StageKind};

/// A plugin config as found in the definition: a tree of plain values.
pub type ConfigValue = serde_json::Value;

/// Builds a running stage from its config and the context.
pub trait StageFactory: Send + Sync {
    fn build(&self, config: &ConfigValue, cx: &StageContext) -> Result<Stage, BuildError>;
}

/// A stage cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{kind} plugin `{plugin}`: invalid config: {message}")]
    Config {
        kind: StageKind,
        plugin: String,
        message: String,
    },
    #[error("{kind} plugin `{plugin}`: {message}")]
    Setup {
        kind: StageKind,
        plugin: String,
        message: String,
    },
    /// The stage signs, and no signing key (`--kms-key`) was given. The
    /// orchestrator reports it naming the images that asked for signing.
    #[error("{kind} plugin `{plugin}` needs a signing key, and none was given")]
    MissingKey { kind: StageKind, plugin: String },
    #[error("no {kind} plugin named `{name}` (known: {known})")]
    Unknown {
        kind: StageKind,
        name: String,
        known: String,
    },
    #[error("{kind} plugin `{name}` ({second}) serves `{transport}:` references, already served by `{other}` ({first})")]
    TransportTaken {
        kind: StageKind,
        name: String,
        transport: String,
        other: String,
        first: String,
        second: String,
    },
    #[error("{kind} plugin `{name}` is registered twice ({first} and {second})")]
    Duplicate {
        kind: StageKind,
        name: String,
        first: String,
        second: String,
    },
}

/// A built-in stage plugin's declaration, submitted with `inventory::submit!`.
pub struct StagePlugin {
    pub kind: StageKind,
    pub name: &'static str,
    pub description: &'static str,
    /// The config type's JSON Schema and example, from the type
    /// ([`ConfigDoc::of`]).
    pub config: ConfigDoc,
    /// For sources and sinks: the reference transport served (`oci` for
    /// `oci:PATH`), `None` for registry references.
    pub transport: Option<&'static str>,
    pub factory: &'static (dyn StageFactory + 'static),
}

inventory::collect!(StagePlugin);

/// What `--list-stages` and `--print-schema` show of a plugin's config type:
/// its JSON Schema and an example, both generated from the type.
#[derive(Clone, Copy)]
pub struct ConfigDoc {
    /// The JSON Schema of the config (doc comments become descriptions).
    pub schema: fn() -> ConfigValue,
    /// An example config: the type's default, serialized as YAML (fields in
    /// declaration order), as it would appear under `config:`.
    pub example: fn() -> String,
}

impl ConfigDoc {
    /// The schema and example of config type `C`: the schema derived with
    /// `schemars::JsonSchema`, the example `C::default()` serialized.
    pub const fn of<C: schemars::JsonSchema + Serialize + Default>() -> ConfigDoc {
        ConfigDoc {
            schema: config_schema::<C>,
            example: config_example::<C>,
        }
    }
}

/// The JSON Schema of config type `C`, as a value.
pub fn config_schema<C: schemars::JsonSchema>() -> ConfigValue {
    serde_json::to_value(schemars::schema_for!(C)).expect("a JSON Schema serializes")
}

/// `C::default()` serialized as YAML: the example config of type `C`.
pub fn config_example<C: Serialize + Default>() -> String {
    crate::definition::config_to_yaml(&C::default())
}

/// Deserializes a plugin's typed config, naming kind and plugin on error.
/// `null` (no config given) deserializes as an empty map.
pub fn typed_config<T: DeserializeOwned>(
    kind: StageKind,
    plugin: &str,
    value: &ConfigValue,
) -> Result<T, BuildError> {
    let value = if value.is_null() {
        ConfigValue::Object(Default::default())
    } else {
        value.clone()
    };
    serde_json::from_value(value).map_err(|e| BuildError::Config {
        kind,
        plugin: plugin.to_string(),
        message: e.to_string(),
    })
}

/// Where a registered stage comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    /// Loaded from a shared library at this path.
    Library(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Library(p) => write!(f, "library {p}"),
        }
    }
}

/// One entry of the registry.
#[derive(Clone)]
pub struct RegisteredStage {
    pub kind: StageKind,
    pub name: String,
    pub description: String,
    /// An example config, in YAML, as it would appear under `config:`.
    pub example_config: String,
    /// The JSON Schema of the config, when the plugin gives one (every
    /// built-in plugin does); `--print-schema` checks `config:` against it.
    pub config_schema: Option<ConfigValue>,
    pub transport: Option<String>,
    pub origin: Origin,
    pub factory: Arc<dyn StageFactory>,
}

struct StaticFactory(&'static (dyn StageFactory + 'static));

impl StageFactory for StaticFactory {
    fn build(&self, config: &ConfigValue, cx: &StageContext) -> Result<Stage, BuildError> {
        self.0.build(config, cx)
    }
}

/// All known stages, sorted by kind then name.
#[derive(Clone, Default)]
pub struct StageRegistry {
    entries: BTreeMap<(StageKind, String), RegisteredStage>,
}

impl StageRegistry {
    /// The registry of the built-in plugins linked into this binary.
    pub fn builtin() -> Result<StageRegistry, BuildError> {
        let mut r = StageRegistry::default();
        for p in inventory::iter::<StagePlugin> {
            r.insert(RegisteredStage {
                kind: p.kind,
                name: p.name.to_string(),
                description: p.description.to_string(),
                example_config: (p.config.example)(),
                config_schema: Some((p.config.schema)()),
                transport: p.transport.map(str::to_string),
                origin: Origin::Builtin,
                factory: Arc::new(StaticFactory(p.factory)),
            })?;
        }
        Ok(r)
    }

    /// Adds a stage; a second stage of the same kind and name, or a second
    /// source (or sink) for the same transport, is refused.
    pub fn insert(&mut self, stage: RegisteredStage) -> Result<(), BuildError> {
        if let Some(t) = &stage.transport {
            if let Some(other) = self
                .entries
                .values()
                .find(|s| s.kind == stage.kind && s.transport.as_ref() == Some(t))
            {
                return Err(BuildError::TransportTaken {
                    kind: stage.kind,
                    name: stage.name.clone(),
                    transport: t.clone(),
                    other: other.name.clone(),
                    first: other.origin.to_string(),
                    second: stage.origin.to_string(),
                });
            }
        }
        let key = (stage.kind, stage.name.clone());
        if let Some(existing) = self.entries.get(&key) {
            return Err(BuildError::Duplicate {
                kind: stage.kind,
                name: stage.name,
                first: existing.origin.to_string(),
                second: stage.origin.to_string(),
            });
        }
        self.entries.insert(key, stage);
        Ok(())
    }

    pub fn get(&self, kind: StageKind, name: &str) -> Result<&RegisteredStage, BuildError> {
        self.entries
            .get(&(kind, name.to_string()))
            .ok_or_else(|| BuildError::Unknown {
                kind,
                name: name.to_string(),
                known: self.names(kind).join(", "),
            })
    }

    /// Names of the stages of one kind, sorted.
    pub fn names(&self, kind: StageKind) -> Vec<String> {
        self.entries
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Every stage, sorted by kind then name.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredStage> {
        self.entries.values()
    }

    /// The source or sink plugin serving references of `transport`.
    pub fn for_transport(
        &self,
        kind: StageKind,
        transport: Option<&str>,
    ) -> Option<&RegisteredStage> {
        self.entries
            .values()
            .find(|s| s.kind == kind && s.transport.as_deref() == transport)
    }

    /// Transports served by some source or sink, for reference parsing.
    pub fn transports(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .entries
            .values()
            .filter_map(|s| s.transport.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Builds one stage, checking it is of the kind asked for.
    pub fn build(
        &self,
        kind: StageKind,
        name: &str,
        config: &ConfigValue,
        cx: &StageContext,
    ) -> Result<Stage, BuildError> {
        let entry = self.get(kind, name)?;
        let stage = entry.factory.build(config, cx)?;
        if stage.kind() != kind {
            return Err(BuildError::Setup {
                kind,
                plugin: name.to_string(),
                message: format!("factory built a {} stage", stage.kind()),
            });
        }
        Ok(stage)
    }
}
