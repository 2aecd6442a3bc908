//! The fenced blocks of the Markdown docs and the check each one is marked
//! with (the convention is in docs/ARCHITECTURE.md, "Docs checked by
//! tests"). Shared, with `#[path]`, by the e2e test `docs.rs` and by the
//! build script of `tests/plugins/doc-snippets`; std only.

use std::path::Path;

/// A fenced block of a doc.
#[derive(Debug)]
pub struct Block {
    /// The doc, relative to the repository root (`docs/plugins.md`).
    pub file: String,
    /// The 1-based line of the opening fence.
    pub line: usize,
    /// The fence's info string (`text`, `yaml`, `rust`, …).
    pub info: String,
    /// The `<!-- doc-check: … -->` marker on the line just above the fence.
    pub check: Option<Result<Check, String>>,
    /// The block's lines, without the fence's indentation, each ending in `\n`.
    pub text: String,
}

impl Block {
    /// `docs/plugins.md:141`, for messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// What a block is checked against.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `excerpt FILE`: the block is a verbatim run of lines of FILE
    /// (indentation aside), such as a snapshot or the source of a test.
    Excerpt(String),
    /// `lines-of FILE [FILE …]`: each line of the block is a line of one of
    /// the files, or the end of one after a `label: ` (a snapshot's case
    /// name); `…` in a line stands for any text.
    LinesOf(Vec<String>),
    /// `run NAME`: a scenario of tests/e2e/docs.rs runs the block or
    /// compares the real output with it.
    Run(String),
    /// `compiled NAME`: compiled (and unit-tested) by
    /// tests/plugins/doc-snippets, in its template `snippets/NAME.rs`.
    Compiled(String),
    /// `fragment`: YAML that is part of a definition; it is completed
    /// (`targetRepoPrefix`, `images`) and then parsed and validated.
    Fragment,
    /// `unchecked REASON`: not an output, a definition or code of this
    /// project (a diagram, a Kubernetes manifest).
    Unchecked(String),
}

const MARKER: &str = "<!-- doc-check:";

/// Parses the text between `<!-- doc-check:` and `-->`.
pub fn parse_check(marker: &str) -> Result<Check, String> {
    let mut words = marker.split_whitespace();
    let kind = words.next().unwrap_or_default();
    let rest: Vec<String> = words.map(str::to_string).collect();
    let one = |rest: &[String]| match rest {
        [one] => Ok(one.clone()),
        _ => Err(format!("`{kind}` takes one argument, got {rest:?}")),
    };
    match kind {
        "excerpt" => one(&rest).map(Check::Excerpt),
        "lines-of" if !rest.is_empty() => Ok(Check::LinesOf(rest)),
        "run" => one(&rest).map(Check::Run),
        "compiled" => one(&rest).map(Check::Compiled),
        "fragment" if rest.is_empty() => Ok(Check::Fragment),
        "unchecked" if !rest.is_empty() => Ok(Check::Unchecked(rest.join(" "))),
        _ => Err(format!(
            "unknown doc-check `{marker}`: excerpt FILE, lines-of FILE…, run NAME, compiled NAME, fragment or unchecked REASON"
        )),
    }
}

/// README.md and docs/*.md, relative to `root`, sorted.
pub fn doc_files(root: &Path) -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The fenced blocks of `file` (relative to `root`).
pub fn blocks(root: &Path, file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    blocks_of(file, &text)
}

/// The fenced blocks of `text`, the content of `file`.
pub fn blocks_of(file: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if !trimmed.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = line.len() - trimmed.len();
        let info = trimmed.trim_start_matches('`').trim().to_string();
        let check = i
            .checked_sub(1)
            .map(|p| lines[p].trim())
            .and_then(|above| above.strip_prefix(MARKER))
            .map(|m| {
                m.strip_suffix("-->")
                    .ok_or_else(|| format!("marker `{m}` does not end with `-->`"))
                    .and_then(|m| parse_check(m.trim()))
            });
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            let cut = l.len() - l.trim_start_matches(' ').len();
            body.push_str(&l[cut.min(indent)..]);
            body.push('\n');
            i += 1;
        }
        assert!(i < lines.len(), "{file}:{}: unclosed fence", start + 1);
        out.push(Block {
            file: file.to_string(),
            line: start + 1,
            info,
            check,
            text: body,
        });
        i += 1;
    }
    out
}
