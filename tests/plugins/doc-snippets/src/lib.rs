//! The Rust snippets of the docs marked `<!-- doc-check: compiled NAME -->`
//! (docs/ARCHITECTURE.md, "Docs checked by tests"): build.rs puts each
//! doc's text into its template, `snippets/NAME.rs`, and they are compiled
//! here, and unit-tested. The library itself is docs/plugins.md's complete
//! `no-latest` guard plugin, which tests/e2e/docs.rs loads and runs with the
//! doc's definition.

include!(concat!(env!("OUT_DIR"), "/no_latest.rs"));

/// plugins.md's unit test of the `no-latest` guard.
#[cfg(test)]
mod tests {
    include!(concat!(env!("OUT_DIR"), "/no_latest_tests.rs"));
}

/// plugins.md's own runtime for async I/O: the factory's part and a stage
/// method's.
#[cfg(test)]
mod runtime_factory {
    include!(concat!(env!("OUT_DIR"), "/runtime_factory.rs"));
}

#[cfg(test)]
mod runtime_method {
    include!(concat!(env!("OUT_DIR"), "/runtime_method.rs"));
}

/// plugins.md's core of the tag-suffix transform.
#[cfg(test)]
mod tag_suffix_core {
    include!(concat!(env!("OUT_DIR"), "/tag_suffix_core.rs"));
}

/// Every `image_syncer_…::…` path the docs name resolves.
#[cfg(test)]
mod paths {
    include!(concat!(env!("OUT_DIR"), "/paths.rs"));
}
