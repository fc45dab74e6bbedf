//! The docs say what the code does: each copy of a shipped job spec in
//! docs/jobs.md is the file itself, and every shipped spec has its copy
//! and a section there.

use std::path::Path;

/// `(file, text)` of every "The shipped `jobs/X.toml`…:" block of jobs.md.
fn shipped_copies(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("The shipped `jobs/") else { continue };
        let file = rest.split('`').next().unwrap().to_string();
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        assert_eq!(lines.next(), Some("```toml"), "jobs.md: the copy of {file} is not a ```toml block");
        let mut text = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push((file, text));
    }
    out
}

#[test]
fn every_shipped_spec_is_copied_verbatim_in_jobs_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/jobs.md")).unwrap();
    let copies = shipped_copies(&doc);
    for (file, text) in &copies {
        let real = std::fs::read_to_string(root.join("jobs").join(file)).unwrap_or_else(|e| panic!("jobs/{file}: {e}"));
        assert_eq!(text, &real, "docs/jobs.md's copy of jobs/{file} differs from the file");
    }
    let mut shipped: Vec<String> = std::fs::read_dir(root.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    shipped.sort();
    for file in &shipped {
        let kind = file.trim_end_matches(".toml");
        assert!(doc.contains(&format!("\n## {kind}\n")), "docs/jobs.md has no section `## {kind}`");
        // The ML specs are shown in ml.md and their sections here.
        if !["adapter", "score"].contains(&kind) {
            assert!(copies.iter().any(|(f, _)| f == file), "docs/jobs.md has no copy of jobs/{file}");
        }
    }
}

#[test]
fn every_registered_kind_has_a_section_in_jobs_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/jobs.md")).unwrap();
    for e in eddy::runtime::component::Registry::builtin().entries() {
        assert!(doc.contains(&format!("\n## {}\n", e.kind())), "docs/jobs.md has no section `## {}`", e.kind());
    }
}
