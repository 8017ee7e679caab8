//! The modules of `src/` import one another in one direction only: no module reaches, through
//! any chain of `crate::` references, back to itself, and none uses a layer above its own.
//! (Test modules are left out: a test may drive its module from above.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (the first path segment under `src/`) -> the text of its files, tests cut off.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("src/ is readable").flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            // Test files (`*tests.rs`) are test modules too.
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !name.ends_with(".rs") || name.ends_with("tests.rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src/");
            let top = rel
                .components()
                .next()
                .expect("a file")
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("a readable file");
            let cut =
                ["#[cfg(any(test", "#[cfg(test)]"].iter().filter_map(|m| text.find(m)).min().unwrap_or(text.len());
            out.entry(top).or_default().push_str(&text[..cut]);
        }
    }
    out
}

fn references(text: &str, known: &BTreeSet<String>, me: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if name != me && known.contains(&name) {
            found.insert(name);
        }
    }
    found
}

#[test]
fn src_has_no_import_circle() {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let edges: BTreeMap<&str, BTreeSet<String>> =
        mods.iter().map(|(m, text)| (m.as_str(), references(text, &known, m))).collect();
    // A module is in a circle when it reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = edges[start].iter().map(String::as_str).collect();
        while let Some(m) = stack.pop() {
            if m == *start {
                circles.push(*start);
                break;
            }
            if seen.insert(m) {
                stack.extend(edges.get(m).into_iter().flatten().map(String::as_str));
            }
        }
    }
    assert!(circles.is_empty(), "modules in an import circle: {circles:?}; edges: {edges:#?}");
}

/// The layers of `src/`, from the bottom (as `src/lib.rs` declares them): each may use only
/// those before it.
const LAYERS: &[&str] = &[
    "error", "guc", "pg", "catalog", "replay", "schema", "author", "capture", "exchange", "api", "worker", "testing",
    "lib",
];

#[test]
fn src_layers_import_only_downward() {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let unlisted: Vec<&String> = known.iter().filter(|m| !LAYERS.contains(&m.as_str())).collect();
    assert!(unlisted.is_empty(), "modules of src/ in no layer: {unlisted:?}");
    let mut upward = Vec::new();
    for (m, text) in &mods {
        let at = LAYERS.iter().position(|l| l == m).unwrap_or(0);
        for used in references(text, &known, m) {
            if LAYERS.iter().position(|l| *l == used).unwrap_or(0) > at {
                upward.push(format!("{m} uses {used}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that go up a layer: {upward:#?}");
}
