//! Writes the Rust snippets of the docs marked `<!-- doc-check: compiled
//! NAME -->` into their templates (`snippets/NAME.rs`, the line
//! `// {snippet}` replaced by the doc's text) under OUT_DIR, for src/lib.rs to
//! include; and `paths.rs`, a `use` of every `image_syncer_…::…` path the
//! docs name, so a path that no longer resolves fails the build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

// Shared with tests/e2e/docs.rs, which uses all of it.
#[allow(dead_code)]
#[path = "../../e2e/doc_blocks.rs"]
mod doc_blocks;

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=snippets");
    println!("cargo:rerun-if-changed=../../e2e/doc_blocks.rs");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("README.md").display()
    );
    println!("cargo:rerun-if-changed={}", root.join("docs").display());
    let mut compiled = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for file in doc_blocks::doc_files(&root) {
        let text = std::fs::read_to_string(root.join(&file)).unwrap();
        paths.extend(named_paths(&text));
        for b in doc_blocks::blocks_of(&file, &text) {
            let Some(Ok(doc_blocks::Check::Compiled(name))) = &b.check else {
                continue;
            };
            let template = here.join(format!("snippets/{name}.rs"));
            let template = std::fs::read_to_string(&template).unwrap_or_else(|e| {
                panic!("{}: `compiled {name}`: {}: {e}", b.at(), template.display())
            });
            assert!(
                template.contains("\n// {snippet}\n"),
                "snippets/{name}.rs has no line `// {{snippet}}`"
            );
            let code = template.replacen(
                "\n// {snippet}\n",
                &format!("\n// From {} (generated).\n{}", b.at(), b.text),
                1,
            );
            assert!(
                compiled.insert(name.clone()),
                "{}: `compiled {name}` twice",
                b.at()
            );
            std::fs::write(out.join(format!("{name}.rs")), code).unwrap();
        }
    }
    for entry in std::fs::read_dir(here.join("snippets")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = name.trim_end_matches(".rs");
        assert!(
            compiled.contains(name),
            "snippets/{name}.rs: no block of the docs is marked `<!-- doc-check: compiled {name} -->`"
        );
    }
    let uses: String = paths
        .iter()
        .map(|p| format!("#[allow(unused_imports)]\nuse {p} as _;\n"))
        .collect();
    std::fs::write(out.join("paths.rs"), uses).unwrap();
}

/// Every `image_syncer_…::…` path in `text` (not part of a longer word or a
/// file name), cut after its first CamelCase segment (a type, not its
/// associated items).
fn named_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("image_syncer_") {
        let start = from + i;
        from = start + 1;
        if start > 0 {
            let before = bytes[start - 1];
            if before.is_ascii_alphanumeric() || b"_:/.-".contains(&before) {
                continue;
            }
        }
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(text.len(), |e| start + e);
        let path = text[start..end].trim_end_matches(':');
        if !path.contains("::") {
            continue;
        }
        let mut kept = Vec::new();
        for segment in path.split("::") {
            kept.push(segment);
            if segment.starts_with(|c: char| c.is_ascii_uppercase()) {
                break;
            }
        }
        paths.insert(kept.join("::"));
    }
    paths
}
