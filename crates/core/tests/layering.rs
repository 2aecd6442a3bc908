//! The core's module graph, checked from its sources (docs/ARCHITECTURE.md,
//! "Invariants"): no cycle between top-level modules, the stage API below
//! the definition and the engine, and no HTTP or registry protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its non-test code names as
/// `crate::<module>` (doc comments and `#[cfg(test)]` tails left out).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in sources(&src) {
        if rel == "lib.rs" || rel.ends_with("tests.rs") {
            continue;
        }
        let module = rel
            .trim_end_matches(".rs")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for name in crate_modules(code) {
            if name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// The top-level modules `code` names through `crate::`, comment lines
/// left out: `crate::flow::Gate` names `flow`, and a group names each of
/// its items, over several lines and nested
/// (`use crate::{flow, orchestrator::{copy, plan}}` names `flow` and
/// `orchestrator`).
fn crate_modules(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = code[i + 7..].trim_start();
        let Some(group) = rest.strip_prefix('{') else {
            names.insert(ident(rest));
            continue;
        };
        // The group's items: split at its own commas, not nested groups'.
        let (mut depth, mut start) = (0usize, 0usize);
        for (at, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.insert(ident(&group[start..at]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.insert(ident(&group[start..at]));
                    start = at + 1;
                }
                _ => {}
            }
        }
    }
    // `crate::{self}`, a trailing comma's empty item: not a module.
    names.remove("self");
    names.remove("");
    names
}

#[test]
fn grouped_and_nested_imports_name_each_module() {
    let code = "use crate::flow::Gate;\n\
                use crate::{definition, orchestrator::{copy, plan}};\n\
                use crate::{\n    context::Secret,\n    // crate::nothere\n    report,\n};\n\
                fn f() { crate::digest::Digest::sha256_of(b\"\"); }\n";
    let names: Vec<String> = crate_modules(code).into_iter().collect();
    assert_eq!(
        names,
        [
            "context",
            "definition",
            "digest",
            "flow",
            "orchestrator",
            "report"
        ]
    );
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = graph();
    assert!(graph.len() >= 10, "found {graph:?}");
    // Depth-first, each path bounded by the number of modules.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_stage_api_does_not_see_the_definition_or_the_engine() {
    let graph = graph();
    for module in [
        "stage",
        "context",
        "digest",
        "reference",
        "manifest",
        "flow",
    ] {
        let deps = &graph[module];
        for above in ["definition", "orchestrator", "retry", "catalogue", "report"] {
            assert!(
                !deps.contains(above),
                "`{module}` uses `{above}`: the stage API must not depend on it ({deps:?})"
            );
        }
    }
}

#[test]
fn core_speaks_no_http() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap();
    let deps = deps.split("\n[").next().unwrap();
    for http in ["reqwest", "hyper", "oci-client", "http ", "ureq"] {
        assert!(
            !deps.contains(http),
            "core depends on {http}: HTTP belongs in plugins"
        );
    }
}

/// Every `.rs` file under `dir`, with its path relative to `dir`.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: the source tree is small.
    for _ in 0..10_000 {
        let Some(d) = stack.pop() else { break };
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// YAML is read in one place: the definition module (`definition.rs` and
/// `definition/`); plugin configs are JSON trees. No other crate of the
/// workspace depends on serde_yaml.
#[test]
fn yaml_is_read_only_by_the_definition_module() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (rel, text) in sources(&core.join("src")) {
        if rel == "definition.rs" || rel.starts_with("definition/") || rel.ends_with("tests.rs") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap();
        assert!(
            !code.contains("serde_yaml"),
            "src/{rel} uses serde_yaml: YAML belongs to the definition module"
        );
    }
    let root = core.join("../..").canonicalize().unwrap();
    let core = core.canonicalize().unwrap();
    let mut checked = 0;
    for group in ["crates", "plugins", "examples/plugins"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap() {
            let manifest = entry.unwrap().path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            if manifest.starts_with(&core) {
                continue;
            }
            checked += 1;
            let deps = text.split("[dependencies]").nth(1).unwrap_or_default();
            let deps = deps.split("\n[").next().unwrap();
            assert!(
                !deps.contains("serde_yaml"),
                "{} depends on serde_yaml: YAML belongs to the core's definition module",
                manifest.display()
            );
        }
    }
    // The CLI, the plugin kit, cosign-format, the testkit, the built-in
    // plugins and the examples: the walk found them.
    assert!(checked >= 10, "only {checked} manifests checked");
}
