//! The docs name files and modules a reader will look for: every repository path in backticks,
//! every module path (`machine::state`) and every relative link in README.md and docs/ must
//! exist, so that a file moved or a module renamed without its docs fails here.

use std::path::{Path, PathBuf};

/// Where a repository path may start; anything else in backticks is not a path of ours.
const ROOTS: &[&str] = &[
    "src/",
    "tests/",
    "docs/",
    "packaging/",
    "bench/",
    "examples/",
    "scripts/",
    "fuzz/",
    ".ci/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let dir = std::fs::read_dir(root().join("docs")).expect("docs/");
    for entry in dir {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

/// The prose of a Markdown file: code fences left out (they hold commands run elsewhere, with
/// paths of the machine they run on).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every `code span` of the prose.
fn code_spans(prose: &str) -> Vec<String> {
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_string())
        .collect()
}

/// A module path of the crate (`machine::state`, `cmd::drill::watch`) resolves to a file or
/// directory under src/; `None` when it does not name one of our top-level parts at all.
fn module_exists(path: &str) -> Option<bool> {
    let parts: Vec<&str> = path.split("::").collect();
    let src = root().join("src");
    let first = parts[0];
    if !src.join(first).is_dir() && !src.join(format!("{first}.rs")).is_file() {
        return None;
    }
    let mut dir = src;
    for part in &parts {
        let as_dir = dir.join(part);
        if as_dir.is_dir() {
            dir = as_dir;
        } else if dir.join(format!("{part}.rs")).is_file() {
            // The rest may name an inline module or an item; the file is what a reader opens.
            return Some(true);
        } else {
            return Some(false);
        }
    }
    Some(true)
}

fn is_module_path(s: &str) -> bool {
    s.contains("::")
        && s.split("::")
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
}

/// The file a relative link points at, and its anchor if any.
fn links(prose: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if !target.contains("://") && !target.starts_with("mailto:") {
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f.to_string(), Some(a.to_string())),
                None => (target.to_string(), None),
            };
            out.push((file, anchor));
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect()
}

#[test]
fn every_path_module_and_link_named_in_the_docs_exists() {
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("readable doc");
        let prose = prose(&text);
        let name = doc
            .strip_prefix(root())
            .unwrap_or(&doc)
            .display()
            .to_string();
        for span in code_spans(&prose) {
            let span = span.trim_end_matches([',', '.', ':', ';']);
            if ROOTS.iter().any(|r| span.starts_with(r)) && !span.contains(' ') {
                if !root().join(span).exists() {
                    missing.push(format!("{name}: path `{span}`"));
                }
            } else if is_module_path(span) && module_exists(span) == Some(false) {
                missing.push(format!("{name}: module `{span}`"));
            }
        }
        let here = doc.parent().unwrap_or(Path::new("."));
        for (file, anchor) in links(&prose) {
            let target = if file.is_empty() {
                doc.clone()
            } else {
                here.join(&file)
            };
            if !target.exists() {
                missing.push(format!("{name}: link to {file}"));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|e| e == "md")
            {
                let text = std::fs::read_to_string(&target).expect("readable link target");
                if !anchors(&text).contains(&anchor) {
                    missing.push(format!("{name}: link to {file}#{anchor}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named in the docs but missing:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_docs_check_finds_what_is_missing() {
    // The checker itself: a path, a module and an anchor that do not exist are found.
    assert_eq!(module_exists("machine::no_such_module"), Some(false));
    assert_eq!(module_exists("machine::state"), Some(true));
    assert_eq!(module_exists("serde::json"), None, "not a part of ours");
    assert!(is_module_path("cmd::drill::watch"));
    assert!(!is_module_path("Phase::Ready"));
    let text = "# Title\n\n## Several guards on one instance\n";
    assert!(anchors(text).contains(&"several-guards-on-one-instance".to_string()));
    assert_eq!(
        links("see [x](docs/a.md#b) and [y](https://e.x)"),
        vec![("docs/a.md".to_string(), Some("b".to_string()))]
    );
}
