//! The stages of one run, each built once: kept by stage entry (plugin and
//! config) or by the transport served, and handed out again to every image
//! (and to the expansion of every repository entry) that asks for it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalogue::{BuildError, ConfigValue};
use crate::definition::{Definition, StageSpec};
use crate::stage::{Guard, Selector, Signer, Sink, Source, StageKind, Transform};

use super::{Orchestrator, PrepareError};

/// What a built stage is kept under, so that everything asking for the same
/// stage shares one: the stage entry (plugin and config, the config as its
/// canonical JSON text), or the transport served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Built {
    Spec { plugin: String, config: String },
    Transport(Option<String>),
}

impl Built {
    fn spec(spec: &StageSpec) -> Built {
        Built::Spec {
            plugin: spec.plugin.clone(),
            config: spec.config.to_string(),
        }
    }

    /// The entry chosen, else the transport.
    fn chosen(chosen: Option<&StageSpec>, transport: Option<&str>) -> Built {
        match chosen {
            Some(c) => Built::spec(c),
            None => Built::Transport(transport.map(str::to_string)),
        }
    }
}

/// Every stage built so far for one definition (and its expansion). A
/// stage that fails to build is not kept: its error is the run's.
#[derive(Default)]
pub(super) struct Stages {
    transforms: Option<Vec<Arc<dyn Transform>>>,
    selectors: HashMap<Built, Arc<dyn Selector>>,
    sources: HashMap<Built, Arc<dyn Source>>,
    guards: HashMap<Built, Arc<dyn Guard>>,
    sinks: HashMap<Built, Arc<dyn Sink>>,
    signers: HashMap<Built, Arc<dyn Signer>>,
}

/// The stage kept under `key` in `built`, built by `build` the first time.
fn once<T: ?Sized>(
    built: &mut HashMap<Built, Arc<T>>,
    key: Built,
    build: impl FnOnce() -> Result<Arc<T>, PrepareError>,
) -> Result<Arc<T>, PrepareError> {
    if let Some(stage) = built.get(&key) {
        return Ok(stage.clone());
    }
    let stage = build()?;
    built.insert(key, stage.clone());
    Ok(stage)
}

impl Stages {
    /// The pipeline's transforms, in order.
    pub(super) fn transforms(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
    ) -> Result<Vec<Arc<dyn Transform>>, PrepareError> {
        if let Some(built) = &self.transforms {
            return Ok(built.clone());
        }
        let (r, cx) = (&o.registry, o.context.transform());
        let mut transforms = Vec::with_capacity(def.pipeline.transforms.len());
        for t in &def.pipeline.transforms {
            transforms.push(build_at(def, t, |n, c| r.build_transform(n, c, &cx))?);
        }
        self.transforms = Some(transforms.clone());
        Ok(transforms)
    }

    /// The selector of a repository entry.
    pub(super) fn selector(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
        spec: &StageSpec,
    ) -> Result<Arc<dyn Selector>, PrepareError> {
        once(&mut self.selectors, Built::spec(spec), || {
            let (r, cx) = (&o.registry, o.context.selector());
            build_at(def, spec, |n, c| r.build_selector(n, c, &cx))
        })
    }

    /// The source of images of `transport`: the pipeline's, else the one
    /// serving the transport.
    pub(super) fn source(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
        transport: Option<&str>,
    ) -> Result<Arc<dyn Source>, PrepareError> {
        let chosen = def.pipeline.source.as_ref();
        once(&mut self.sources, Built::chosen(chosen, transport), || {
            let (r, cx) = (&o.registry, o.context.source());
            build_by_transport(o, def, StageKind::Source, chosen, transport, |n, c| {
                r.build_source(n, c, &cx)
            })
        })
    }

    /// A guard.
    pub(super) fn guard(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
        spec: &StageSpec,
    ) -> Result<Arc<dyn Guard>, PrepareError> {
        once(&mut self.guards, Built::spec(spec), || {
            let (r, cx) = (&o.registry, o.context.guard());
            build_at(def, spec, |n, c| r.build_guard(n, c, &cx))
        })
    }

    /// The sink writing targets of `transport`: the one `chosen`, else the
    /// one serving the transport.
    pub(super) fn sink(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
        chosen: Option<&StageSpec>,
        transport: Option<&str>,
    ) -> Result<Arc<dyn Sink>, PrepareError> {
        once(&mut self.sinks, Built::chosen(chosen, transport), || {
            let (r, cx) = (&o.registry, o.context.sink());
            build_by_transport(o, def, StageKind::Sink, chosen, transport, |n, c| {
                r.build_sink(n, c, &cx)
            })
        })
    }

    /// A signer (its errors as built: the caller says what they mean).
    pub(super) fn signer(
        &mut self,
        o: &Orchestrator,
        def: &Definition,
        spec: &StageSpec,
    ) -> Result<Arc<dyn Signer>, PrepareError> {
        once(&mut self.signers, Built::spec(spec), || {
            let (r, cx) = (&o.registry, o.context.signer());
            build_at(def, spec, |n, c| r.build_signer(n, c, &cx))
        })
    }
}

/// Builds a stage with `build`, naming where the definition chose it on error.
fn build_at<T>(
    def: &Definition,
    spec: &StageSpec,
    build: impl FnOnce(&str, &ConfigValue) -> Result<T, BuildError>,
) -> Result<T, PrepareError> {
    build(&spec.plugin, &spec.config).map_err(|source| match &spec.at {
        Some(at) => PrepareError::Stage {
            path: def.path.display().to_string(),
            line: spec.line,
            at: at.clone(),
            source,
        },
        None => PrepareError::Build(source),
    })
}

/// Builds the stage the definition chose, else the one serving `transport`.
fn build_by_transport<T>(
    o: &Orchestrator,
    def: &Definition,
    kind: StageKind,
    chosen: Option<&StageSpec>,
    transport: Option<&str>,
    build: impl FnOnce(&str, &ConfigValue) -> Result<T, BuildError>,
) -> Result<T, PrepareError> {
    if let Some(spec) = chosen {
        return build_at(def, spec, build);
    }
    match o.registry.for_transport(kind, transport) {
        Some(entry) => Ok(build(&entry.name, &ConfigValue::Null)?),
        None => Err(PrepareError::Build(BuildError::Unknown {
            kind,
            name: match transport {
                Some(t) => format!("<serving `{t}:` references>"),
                None => "<serving registry references>".into(),
            },
            known: o.registry.names(kind).join(", "),
        })),
    }
}
