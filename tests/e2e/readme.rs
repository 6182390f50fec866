//! docs/reference.md shows `--help` verbatim: a flag added without updating it fails here.

use crate::support::run;

#[test]
fn readme_shows_the_current_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md"))
        .expect("docs/reference.md");
    let start = readme
        .find("<!-- help:start -->")
        .expect("help:start marker");
    let end = readme.find("<!-- help:end -->").expect("help:end marker");
    let block = &readme[start..end];
    let body_start = block.find("```text\n").expect("a text fence") + "```text\n".len();
    let body_end = block.rfind("```").expect("closing fence");
    let shown = block[body_start..body_end].trim_end();
    let (code, help, _) = run(["--help"]);
    assert_eq!(code, 0);
    assert_eq!(
        shown,
        help.trim_end(),
        "docs/reference.md's --help is stale: run scripts/readme-help"
    );
}
