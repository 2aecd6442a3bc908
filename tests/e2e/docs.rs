//! The docs cannot drift from the code. Every fenced block of README.md and
//! docs/*.md is checked as its `<!-- doc-check: … -->` marker says (the
//! convention is in docs/ARCHITECTURE.md, "Docs checked by tests"); the
//! tables of built-in stages and plugin settings are checked against the
//! binary; the example plugins and definitions the docs name and count are
//! checked against the tree. Quoted outputs that no snapshot pins are run
//! here, as the docs say, and compared with the real output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::doc_blocks::{blocks, doc_files, Block, Check};
use crate::plugins::{build_plugin, workspace};
use crate::support::*;

/// Every `run NAME` a doc may carry, each used by one scenario below.
const SCENARIOS: &[&str] = &[
    "quickstart-first",
    "quickstart-again",
    "mirror-definition",
    "mirror-output",
    "no-latest-definition",
    "no-latest-output",
];

/// The transports the doc definitions use: the built-ins' and the example
/// `dir` plugin's.
const TRANSPORTS: &[&str] = &["dir", "oci"];

fn root() -> PathBuf {
    workspace().canonicalize().unwrap()
}

fn all_blocks() -> Vec<Block> {
    let root = root();
    doc_files(&root)
        .iter()
        .flat_map(|f| blocks(&root, f))
        .collect()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The block marked `run name`, the one there is.
fn scenario_block(name: &str) -> Block {
    let mut found: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| matches!(&b.check, Some(Ok(Check::Run(n))) if n == name))
        .collect();
    assert_eq!(found.len(), 1, "blocks marked `run {name}`: {found:?}");
    found.remove(0)
}

/// Text blocks (quoted outputs) and Rust blocks must say how they are
/// checked; every marker must parse, suit its block, name files that exist
/// and scenarios that exist; every scenario is used once.
#[test]
fn every_block_says_how_it_is_checked() {
    let root = root();
    let mut problems = Vec::new();
    let mut runs = BTreeMap::<String, usize>::new();
    let mut checked = 0;
    for b in all_blocks() {
        let check = match &b.check {
            Some(Ok(c)) => Some(c.clone()),
            Some(Err(e)) => {
                problems.push(format!("{}: {e}", b.at()));
                continue;
            }
            None => None,
        };
        checked += 1;
        match (b.info.as_str(), &check) {
            ("text", None) => problems.push(format!(
                "{}: a quoted output needs `<!-- doc-check: excerpt|lines-of SNAPSHOT -->` or `run NAME` (or `unchecked REASON` for a diagram)",
                b.at()
            )),
            ("rust", None) => problems.push(format!(
                "{}: a Rust snippet needs `<!-- doc-check: excerpt FILE -->` or `compiled NAME`",
                b.at()
            )),
            ("rust", Some(Check::Excerpt(_) | Check::Compiled(_))) => {}
            ("rust", Some(c)) => problems.push(format!("{}: a Rust snippet cannot be `{c:?}`", b.at())),
            (info, Some(Check::Fragment)) if info != "yaml" => {
                problems.push(format!("{}: only YAML is a `fragment`", b.at()))
            }
            (info, Some(Check::Compiled(_))) if info != "rust" => {
                problems.push(format!("{}: only Rust is `compiled`", b.at()))
            }
            _ => {}
        }
        match &check {
            Some(Check::Excerpt(f)) if !root.join(f).is_file() => {
                problems.push(format!("{}: {f} does not exist", b.at()));
            }
            Some(Check::LinesOf(fs)) => {
                for f in fs.iter().filter(|f| !root.join(f).is_file()) {
                    problems.push(format!("{}: {f} does not exist", b.at()));
                }
            }
            Some(Check::Run(n)) => {
                if !SCENARIOS.contains(&n.as_str()) {
                    problems.push(format!(
                        "{}: no scenario `{n}` in tests/e2e/docs.rs",
                        b.at()
                    ));
                }
                *runs.entry(n.clone()).or_default() += 1;
            }
            Some(Check::Compiled(n)) => {
                let template = format!("tests/plugins/doc-snippets/snippets/{n}.rs");
                if !root.join(&template).is_file() {
                    problems.push(format!("{}: {template} does not exist", b.at()));
                }
            }
            _ => {}
        }
    }
    for s in SCENARIOS {
        if runs.get(*s) != Some(&1) {
            problems.push(format!(
                "scenario `{s}` is marked on {} blocks, not one",
                runs.get(*s).copied().unwrap_or(0)
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(checked >= 60, "only {checked} blocks found");
}

/// `text` with each run of lines shifted left by their common indentation.
fn dedent(lines: &[&str]) -> Vec<String> {
    let cut = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(cut..).unwrap_or("").trim_end().to_string())
        .collect()
}

/// Whether `block` is a run of lines of `file` (both dedented).
fn is_excerpt(block: &str, file: &str) -> bool {
    let want = dedent(&block.lines().collect::<Vec<_>>());
    let lines: Vec<&str> = file.lines().collect();
    (0..lines.len().saturating_sub(want.len() - 1))
        .any(|i| dedent(&lines[i..i + want.len()]) == want)
}

/// A doc line as a pattern over a file's lines: the whole line, or its end
/// after a `label: `; `…` stands for any text.
fn line_pattern(line: &str) -> regex::Regex {
    let body: Vec<String> = line.split('…').map(regex::escape).collect();
    regex::Regex::new(&format!("^(?:[^:]*: )?{}$", body.join(".*"))).unwrap()
}

/// Every `excerpt` and `lines-of` block is found in the files it names:
/// snapshots, so the quoted outputs are the pinned ones, and sources.
#[test]
fn quoted_blocks_match_the_files_they_quote() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for b in all_blocks() {
        match &b.check {
            Some(Ok(Check::Excerpt(f))) => {
                checked += 1;
                let Ok(text) = std::fs::read_to_string(root.join(f)) else {
                    continue;
                };
                if !is_excerpt(&b.text, &text) {
                    problems.push(format!(
                        "{}: the block is not (or no longer) a verbatim excerpt of {f}:\n{}",
                        b.at(),
                        b.text
                    ));
                }
            }
            Some(Ok(Check::LinesOf(fs))) => {
                checked += 1;
                let files: Vec<String> = fs
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(root.join(f)).ok())
                    .collect();
                for line in b.text.lines().filter(|l| !l.trim().is_empty()) {
                    let p = line_pattern(line);
                    if !files.iter().flat_map(|t| t.lines()).any(|l| p.is_match(l)) {
                        problems.push(format!("{}: not in {}: {line}", b.at(), fs.join(", ")));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
    assert!(checked >= 20, "only {checked} quoted blocks found");
}

/// A fragment made a whole definition: a list of entries becomes `images:`;
/// a map gets the `targetRepoPrefix` and `images` it lacks.
fn completed(fragment: &str) -> String {
    let top = |key: &str| {
        fragment
            .lines()
            .any(|l| l.starts_with(&format!("{key}:")) || l.starts_with(&format!("\"{key}\":")))
    };
    let first = fragment
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or("");
    if first.starts_with("- ") {
        return format!("targetRepoPrefix: \"registry.example.com/mirror/\"\nimages:\n{fragment}");
    }
    let mut whole = String::new();
    if !top("targetRepoPrefix") {
        whole.push_str("targetRepoPrefix: \"registry.example.com/mirror/\"\n");
    }
    whole.push_str(fragment);
    if !top("images") {
        whole.push_str("images: []\n");
    }
    whole
}

pub fn schema() -> (boon::Schemas, boon::SchemaIndex) {
    let json: serde_json::Value =
        serde_json::from_str(&read("docs/definition.schema.json")).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("file:///definition.schema.json", json)
        .unwrap();
    let index = compiler
        .compile("file:///definition.schema.json", &mut schemas)
        .unwrap();
    (schemas, index)
}

/// `text` parsed by the definition parser and validated against the shipped
/// JSON Schema; the problems found.
pub fn check_definition(
    text: &str,
    name: &str,
    schema: &(boon::Schemas, boon::SchemaIndex),
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = image_syncer_core::definition::parse(text, Path::new(name), TRANSPORTS) {
        problems.push(format!("the parser refuses it: {e}"));
    }
    match image_syncer_core::definition::parse_config_yaml(text) {
        Ok(json) => {
            if let Err(e) = schema.0.validate(&json, schema.1) {
                problems.push(format!("the schema refuses it: {e:#}"));
            }
        }
        Err(e) => problems.push(format!("not YAML: {e}")),
    }
    problems
}

/// Every YAML block of the docs is a definition, or a `fragment` of one:
/// the real parser accepts it and so does docs/definition.schema.json. So
/// are examples/*.yaml.
#[test]
fn yaml_definitions_parse_and_validate() {
    let schema = schema();
    let mut problems = Vec::new();
    let mut checked = 0;
    for b in all_blocks().into_iter().filter(|b| b.info == "yaml") {
        let text = match &b.check {
            Some(Ok(Check::Unchecked(_))) => continue,
            // A quoted Kubernetes manifest: the file is checked against the
            // Kubernetes schemas (`service::kubernetes_manifests_*`).
            Some(Ok(Check::Excerpt(f))) if f.starts_with("deploy/") => continue,
            Some(Ok(Check::Fragment)) => {
                if completed(&b.text) == b.text {
                    problems.push(format!(
                        "{}: a whole definition is not a `fragment`",
                        b.at()
                    ));
                }
                completed(&b.text)
            }
            _ => b.text.clone(),
        };
        checked += 1;
        for p in check_definition(&text, &b.file, &schema) {
            problems.push(format!(
                "{}: {p} (a part of a definition is marked `<!-- doc-check: fragment -->`)\n{}",
                b.at(),
                text
            ));
        }
    }
    let examples = root().join("examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            checked += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for p in check_definition(&text, &path.display().to_string(), &schema) {
                problems.push(format!("{}: {p}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
    assert!(checked >= 25, "only {checked} definitions found");
}

/// `(kind, name)` of every stage `image-syncer --list-stages` lists.
fn listed_stages() -> BTreeSet<(String, String)> {
    let r = run(&["--list-stages"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let stages: BTreeSet<(String, String)> = r
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .map(|l| {
            let (kind, name) = l.split_once(' ').unwrap();
            (kind.to_string(), name.to_string())
        })
        .collect();
    assert!(stages.len() >= 9, "{}", r.stdout);
    stages
}

/// The backticked names of a table cell, outside parentheses.
fn names_in(cell: &str) -> Vec<String> {
    let mut outside = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The rows of the table whose header starts with `header`, as cells; the
/// one table there must be.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let text = read(doc);
    let tables: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(header))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(tables.len(), 1, "{doc}: tables headed `{header}`");
    text.lines()
        .skip(tables[0] + 2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The README's and plugins.md's tables of built-in stages list exactly
/// what `--list-stages` lists, by kind.
#[test]
fn built_in_stage_tables_match_list_stages() {
    let listed = listed_stages();
    for doc in ["README.md", "docs/plugins.md"] {
        let tabled: BTreeSet<(String, String)> = table(doc, "| Kind | Built-in plugins |")
            .iter()
            .flat_map(|row| {
                names_in(&row[1])
                    .into_iter()
                    .map(|n| (row[0].clone(), n))
                    .collect::<Vec<_>>()
            })
            .collect();
        let missing: Vec<_> = listed.difference(&tabled).collect();
        let extra: Vec<_> = tabled.difference(&listed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{doc}'s table of built-in stages: missing {missing:?}, not built in {extra:?}"
        );
    }
}

/// Plugin name → the config keys its schema allows, from the shipped schema
/// (kept current by `builtins::tests::the_shipped_schema_is_current`).
fn config_keys() -> BTreeMap<String, BTreeSet<String>> {
    let schema: serde_json::Value =
        serde_json::from_str(&read("docs/definition.schema.json")).unwrap();
    let defs = schema["$defs"].as_object().unwrap();
    let mut keys = BTreeMap::<String, BTreeSet<String>>::new();
    for (def, stage) in defs.iter().filter(|(d, _)| d.ends_with("Stage")) {
        for branch in stage["anyOf"].as_array().unwrap() {
            let Some(name) = branch["properties"]["plugin"]["const"].as_str() else {
                continue;
            };
            let config = &branch["properties"]["config"];
            let mut props = BTreeSet::new();
            for alt in config["anyOf"]
                .as_array()
                .into_iter()
                .flatten()
                .chain([config])
            {
                let alt = match alt["$ref"].as_str() {
                    Some(r) => &defs[r.trim_start_matches("#/$defs/")],
                    None => alt,
                };
                props.extend(
                    alt["properties"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone()),
                );
            }
            assert!(config.is_object(), "{def} {name}: no config schema");
            keys.entry(name.to_string()).or_default().extend(props);
        }
    }
    keys
}

/// definition.md's table of built-in plugin settings names every built-in
/// plugin, and for each exactly the keys its config schema has.
#[test]
fn settings_table_matches_the_config_schemas() {
    let listed: BTreeSet<String> = listed_stages().into_iter().map(|(_, n)| n).collect();
    let schema = config_keys();
    let mut documented = BTreeMap::<String, BTreeSet<String>>::new();
    for row in table("docs/definition.md", "| plugin | setting | meaning |") {
        let keys: BTreeSet<String> = names_in(&row[1])
            .iter()
            .map(|k| k.split(':').next().unwrap().to_string())
            .collect();
        for plugin in names_in(&row[0]) {
            documented.entry(plugin).or_default().extend(keys.clone());
        }
    }
    let named: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(named, listed, "plugins in definition.md's settings table");
    for (plugin, keys) in &documented {
        assert_eq!(
            Some(keys),
            schema.get(plugin),
            "definition.md's settings of `{plugin}` against its config schema"
        );
    }
}

/// `one` … `twelve` as a number.
fn number(word: &str) -> Option<usize> {
    [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve",
    ]
    .iter()
    .position(|w| w.eq_ignore_ascii_case(word))
    .map(|i| i + 1)
}

/// Counts and names of the examples: "N example plugins" (and the like)
/// says how many `examples/plugins/` holds; the README and plugins.md link
/// every one of them; every `cargo build -p`
/// names a package of the workspace. The README links every example
/// definition, and plugins.md says how to build every example plugin.
#[test]
fn example_counts_and_names_match_the_tree() {
    let root = root();
    let mut plugins: Vec<String> = std::fs::read_dir(root.join("examples/plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    plugins.sort();
    let definitions: Vec<String> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let manifest = read("Cargo.toml");
    let packages: BTreeSet<String> = manifest
        .split("members = [")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|m| {
            let toml = read(&format!("{m}/Cargo.toml"));
            toml.lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .unwrap()
                .trim_end_matches('"')
                .to_string()
        })
        .collect();
    let counted = regex::Regex::new(
        r"(?i)\b([a-z]+) (?:complete |dynamic |example )*(?:example plugins|dynamic plugins|complete examples)\b",
    )
    .unwrap();
    let built = regex::Regex::new(r"cargo build (?:--release )?-p ([a-z0-9-]+)").unwrap();
    let mut problems = Vec::new();
    let mut counts = 0;
    for doc in doc_files(&root) {
        let text = read(&doc);
        for c in counted.captures_iter(&text) {
            if let Some(n) = number(&c[1]) {
                counts += 1;
                if n != plugins.len() {
                    problems.push(format!(
                        "{doc}: \"{}\", but examples/plugins/ holds {} ({plugins:?})",
                        &c[0],
                        plugins.len()
                    ));
                }
            }
        }
        for c in built.captures_iter(&text) {
            if !packages.contains(&c[1]) && !c[1].starts_with("my-") {
                problems.push(format!(
                    "{doc}: `cargo build -p {}`: no such package",
                    &c[1]
                ));
            }
        }
    }
    for doc in ["README.md", "docs/plugins.md"] {
        let text = read(doc);
        for p in &plugins {
            if !text.contains(&format!("examples/plugins/{p}/README.md")) {
                problems.push(format!(
                    "{doc} does not link examples/plugins/{p}/README.md"
                ));
            }
        }
    }
    let readme = read("README.md");
    for d in &definitions {
        if !readme.contains(&format!("(examples/{d})")) {
            problems.push(format!("README.md does not link examples/{d}"));
        }
    }
    let example_packages: Vec<&String> = packages
        .iter()
        .filter(|p| p.starts_with("image-syncer-example-"))
        .collect();
    let plugins_md = read("docs/plugins.md");
    for p in &example_packages {
        if !plugins_md.contains(&format!("cargo build -p {p}")) {
            problems.push(format!("docs/plugins.md does not say how to build {p}"));
        }
    }
    assert_eq!(
        example_packages.len(),
        plugins.len(),
        "{example_packages:?} {plugins:?}"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(counts >= 3, "only {counts} counts of example plugins found");
}

/// The quick start, run as the README says (from a copy of examples/ as
/// the repository root holds it): the first and second runs print what the
/// README shows.
#[test]
fn readme_quickstart_prints_what_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let examples = root().join("examples");
    let copy = dir.path().join("examples");
    copy_dir(&examples.join("quickstart"), &copy.join("quickstart"));
    std::fs::copy(
        examples.join("quickstart.yaml"),
        copy.join("quickstart.yaml"),
    )
    .unwrap();
    let args = ["--images-file", "examples/quickstart.yaml"];
    let first = run_in(dir.path(), &args);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(first.stdout, scenario_block("quickstart-first").text);
    let again = run_in(dir.path(), &args);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(again.stdout, scenario_block("quickstart-again").text);
    assert!(dir
        .path()
        .join("target/quickstart-mirror/hello/index.json")
        .is_file());
}

/// The README's mirror between two registries: the quick-start image loaded
/// into a source registry as `library/hello:1.0`, then the README's own
/// definition run, with the real registries' addresses in place of 5001
/// and 5000: it prints what the README shows.
#[test]
fn readme_mirror_prints_what_the_readme_shows() {
    let source = Registry::start();
    let target = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let seed = write(
        dir.path(),
        "seed.yaml",
        &format!(
            "targetRepoPrefix: \"{}/library/\"\nimages:\n- source: \"oci:{}/examples/quickstart/hello:1.0\"\n",
            source.host(),
            root().display()
        ),
    );
    let r = run(&[
        "-i",
        seed.to_str().unwrap(),
        "--insecure-registry",
        &source.host(),
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let definition = scenario_block("mirror-definition")
        .text
        .replace("127.0.0.1:5001", &source.host())
        .replace("127.0.0.1:5000", &target.host());
    let mirror = write(dir.path(), "mirror.yaml", &definition);
    let r = run(&["--images-file", mirror.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.replace(&target.host(), "127.0.0.1:5000"),
        scenario_block("mirror-output").text
    );
}

/// plugins.md's `no-latest` guard, compiled from the doc by
/// tests/plugins/doc-snippets, loaded with the doc's definition: the run
/// stops with exit code 3, prints what plugins.md shows and writes nothing.
#[test]
fn plugins_md_no_latest_guard_stops_as_shown() {
    let plugin = build_plugin("image-syncer-test-doc-snippets", &[], "doc-snippets");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &root().join("examples/quickstart"),
        &dir.path().join("quickstart"),
    );
    let def = write(
        dir.path(),
        "images.yaml",
        &scenario_block("no-latest-definition").text,
    );
    let r = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "-i",
        def.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(r.stdout, scenario_block("no-latest-output").text);
    assert!(
        !dir.path().join("out").exists(),
        "a stop while planning writes nothing"
    );
}

/// The README's table of metrics ("Running continuously") is what
/// `/metrics` serves after a run of the quick start with `--watch`: each
/// metric's name, type, labels and meaning (its `# HELP` text), both ways;
/// every `image_syncer_…` name the section uses (its alerts) is served.
#[test]
fn readme_metrics_table_matches_what_metrics_serves() {
    let dir = tempfile::tempdir().unwrap();
    let examples = root().join("examples");
    copy_dir(&examples.join("quickstart"), &dir.path().join("quickstart"));
    let def = dir.path().join("quickstart.yaml");
    std::fs::copy(examples.join("quickstart.yaml"), &def).unwrap();
    let port = crate::service::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Watched::spawn(&[
        "-i",
        def.to_str().unwrap(),
        "--watch",
        "1h",
        "--listen",
        &listen,
        "--output",
        "json",
    ]);
    let stdout = child.run().stdout_lines();
    let report = crate::service::next_report(&stdout);
    assert_eq!(report["status"], "ok", "{report}");
    let served = crate::service::scrape(port);
    crate::faults::send(child.run(), "-TERM");
    drop(stdout);
    let (status, out) = child.wait();
    assert_eq!(status.code(), Some(0), "{}", out.all());

    let described = served.described();
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for row in table("README.md", "| Metric |") {
        let name = row[0].trim_matches('`');
        let ty = row[1].as_str();
        let family = match ty {
            "counter" => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        listed.insert(family.to_string());
        let Some((help, served_ty)) = described.get(family) else {
            problems.push(format!("{name}: not served"));
            continue;
        };
        if served_ty != ty {
            problems.push(format!("{name}: a {served_ty}, not a {ty}"));
        }
        if *help != row[3] {
            problems.push(format!("{name}: its HELP is `{help}`, not `{}`", row[3]));
        }
        let labels: BTreeSet<String> = names_in(&row[2]).into_iter().collect();
        if labels != served.label_names(name) {
            problems.push(format!(
                "{name}: its labels are {:?}, not {labels:?}",
                served.label_names(name)
            ));
        }
    }
    let served_names: BTreeSet<String> = described.keys().cloned().collect();
    for missing in served_names.difference(&listed) {
        problems.push(format!("{missing}: served but not in the table"));
    }
    // The section's other metric names (the alerts') are served samples.
    let readme = read("README.md");
    let section = readme
        .split("\n## Running continuously\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Running continuously section");
    let samples: BTreeSet<&str> = served
        .parsed
        .samples
        .iter()
        .map(|s| s.metric.as_str())
        .collect();
    let mentioned = regex::Regex::new(r"image_syncer_[a-z_]+").unwrap();
    for m in mentioned.find_iter(section) {
        if !samples.contains(m.as_str()) {
            problems.push(format!("{}: named in the section, not served", m.as_str()));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert_eq!(listed.len(), 16);
}

/// The binary run in `dir`, with the clean environment of [`command`].
fn run_in(dir: &Path, args: &[&str]) -> Run {
    let (mut c, _home) = command();
    let out = c
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run image-syncer");
    Run::scanned(args, &out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// plugins.md speaks of today's plugin ABI: every "(today `N`)" is the
/// kit's `ABI_VERSION`, the history lists that bump, and a migration table
/// leads to it (a bump without its table fails here).
#[test]
fn plugins_md_has_a_migration_table_to_todays_abi() {
    let abi = image_syncer_plugin::ABI_VERSION;
    let text = read("docs/plugins.md");
    let today = regex::Regex::new(r"\(today `(\d+)`\)").unwrap();
    let said: Vec<u32> = today
        .captures_iter(&text)
        .map(|c| c[1].parse().unwrap())
        .collect();
    assert!(
        !said.is_empty() && said.iter().all(|n| *n == abi),
        "ABI {abi}, plugins.md says {said:?}"
    );
    assert!(
        text.contains(&format!("\n  - {abi} (")),
        "plugins.md lists no bump to {abi}"
    );
    let table = regex::Regex::new(r"\*\*Migration from (\d+) to (\d+)\.\*\*").unwrap();
    let to: Vec<u32> = table
        .captures_iter(&text)
        .map(|c| c[2].parse().unwrap())
        .collect();
    assert!(to.contains(&abi), "no migration table to ABI {abi}: {to:?}");
}
