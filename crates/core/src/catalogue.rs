//! The stage catalogue: every stage plugin the process knows, by kind and
//! name (`StageRegistry`). Named so because "registry" means an OCI registry
//! everywhere else in the project.
//!
//! Built-in plugins register a [`StagePlugin`] with `inventory::submit!`; the
//! registry collects them at start-up. Other origins (dynamic libraries) add
//! [`RegisteredStage`]s through [`StageRegistry::insert`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{
    GuardContext, SelectorContext, SignerContext, SinkContext, SourceContext, TransformContext,
};
use crate::stage::{Guard, Selector, Signer, Sink, Source, StageKind, Transform};

/// A plugin config as found in the definition: a tree of plain values.
pub type ConfigValue = serde_json::Value;

macro_rules! factories {
    ($($variant:ident { ctor: $ctor:ident, build: $build:ident, position: $pos:literal, context: $context:ident, factory: $factory:ident })*) => {
        $(
            #[doc = concat!("Builds a ", stringify!($ctor), " from its config.")]
            pub trait $factory: Send + Sync {
                fn build(&self, config: &ConfigValue, cx: &$context)
                    -> Result<Arc<dyn $variant>, BuildError>;
            }

            impl<F> $factory for F
            where
                F: Fn(&ConfigValue, &$context) -> Result<Arc<dyn $variant>, BuildError> + Send + Sync,
            {
                fn build(&self, config: &ConfigValue, cx: &$context)
                    -> Result<Arc<dyn $variant>, BuildError> {
                    self(config, cx)
                }
            }
        )*

        /// A plugin's factory: one kind, its own context, its own stage type.
        #[derive(Clone)]
        pub enum Factory {
            $($variant(Arc<dyn $factory>),)*
        }

        impl Factory {
            /// The kind of stage this factory builds.
            pub fn kind(&self) -> StageKind {
                match self {
                    $(Factory::$variant(_) => StageKind::$variant,)*
                }
            }
            $(
                #[doc = concat!("A ", stringify!($ctor), " factory.")]
                pub fn $ctor(factory: impl $factory + 'static) -> Factory {
                    Factory::$variant(Arc::new(factory))
                }
            )*
        }

        impl StageRegistry {
            $(
                #[doc = concat!("Builds the ", stringify!($ctor), " plugin `name`.")]
                pub fn $build(
                    &self,
                    name: &str,
                    config: &ConfigValue,
                    cx: &$context,
                ) -> Result<Arc<dyn $variant>, BuildError> {
                    match &self.get(StageKind::$variant, name)?.factory {
                        Factory::$variant(f) => f.build(config, cx),
                        // Entries are keyed by their factory's kind, so this
                        // is not taken; it answers as for an unknown name.
                        _ => Err(self.unknown(StageKind::$variant, name)),
                    }
                }
            )*
        }
    };
}

crate::stage_kinds!(factories);

/// An input of a stage's context that the run was not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextInput {
    /// [`SignerContext::signing_key`].
    SigningKey,
}

impl std::fmt::Display for ContextInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContextInput::SigningKey => "a signing key",
        })
    }
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
    /// The stage needs an input of its context the run was not given (a
    /// signer's key). The orchestrator reports it naming the images that
    /// asked for the stage; the CLI names the flag that gives it.
    #[error("{kind} plugin `{plugin}` needs {input}, and none was given")]
    MissingInput {
        kind: StageKind,
        plugin: String,
        input: ContextInput,
    },
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
    pub name: &'static str,
    pub description: &'static str,
    /// The config type's JSON Schema and example, from the type
    /// ([`ConfigDoc::of`]).
    pub config: ConfigDoc,
    /// For sources and sinks: the reference transport served (`oci` for
    /// `oci:PATH`), `None` for registry references.
    pub transport: Option<&'static str>,
    /// Makes the factory (its kind is the plugin's kind).
    pub factory: fn() -> Factory,
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
    pub name: String,
    pub description: String,
    /// An example config, in YAML, as it would appear under `config:`.
    pub example_config: String,
    /// The JSON Schema of the config, when the plugin gives one (every
    /// built-in plugin does); `--print-schema` checks `config:` against it.
    pub config_schema: Option<ConfigValue>,
    pub transport: Option<String>,
    pub origin: Origin,
    pub factory: Factory,
}

impl RegisteredStage {
    /// A built-in stage named `name`, with no description, example, schema
    /// or transport: for tests that put prebuilt stages into a registry.
    pub fn new(name: impl Into<String>, factory: Factory) -> RegisteredStage {
        RegisteredStage {
            name: name.into(),
            description: String::new(),
            example_config: String::new(),
            config_schema: None,
            transport: None,
            origin: Origin::Builtin,
            factory,
        }
    }

    /// The kind of stage, from its factory.
    pub fn kind(&self) -> StageKind {
        self.factory.kind()
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
                name: p.name.to_string(),
                description: p.description.to_string(),
                example_config: (p.config.example)(),
                config_schema: Some((p.config.schema)()),
                transport: p.transport.map(str::to_string),
                origin: Origin::Builtin,
                factory: (p.factory)(),
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
                .find(|s| s.kind() == stage.kind() && s.transport.as_ref() == Some(t))
            {
                return Err(BuildError::TransportTaken {
                    kind: stage.kind(),
                    name: stage.name.clone(),
                    transport: t.clone(),
                    other: other.name.clone(),
                    first: other.origin.to_string(),
                    second: stage.origin.to_string(),
                });
            }
        }
        let key = (stage.kind(), stage.name.clone());
        if let Some(existing) = self.entries.get(&key) {
            return Err(BuildError::Duplicate {
                kind: stage.kind(),
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

    /// The JSON Schema of the definition file, each stage entry narrowed to
    /// the plugins registered here ([`crate::definition::json_schema`]).
    pub fn definition_schema(&self) -> String {
        crate::definition::json_schema(
            self.iter()
                .map(|s| (s.kind(), s.name.as_str(), s.config_schema.as_ref())),
        )
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
            .find(|s| s.kind() == kind && s.transport.as_deref() == transport)
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

    /// The error for a stage of `kind` named `name` that is not registered.
    fn unknown(&self, kind: StageKind, name: &str) -> BuildError {
        BuildError::Unknown {
            kind,
            name: name.to_string(),
            known: self.names(kind).join(", "),
        }
    }
}
