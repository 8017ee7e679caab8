//! Conformance with the Hyper Hyper Space v3 reference implementation.
//!
//! Reads `../shared/conformance/hhs3_dag_vectors.json` (beside the repository), or the file
//! named by `CAUSAL_VECTORS`, and checks every value in it: canonical forms, both digests,
//! every entry hash, the frontier, minimal covers, fork positions and both cover queries.

use std::path::PathBuf;

use causal_core::dag::naive::NaiveDag;
use causal_core::entry::Meta;
use causal_core::json::{canonical_string, parse};
use causal_core::{Dag, EntryHash, HashAlgorithm, MemStore, MetaFilter, Position};
use serde_json::Value;

fn vectors_path() -> PathBuf {
    match std::env::var_os("CAUSAL_VECTORS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/hhs3_dag_vectors.json"),
    }
}

fn load_vectors() -> Value {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read conformance vectors at {}: {e} (set CAUSAL_VECTORS to another file)", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every mismatch between our implementation and the vectors, and the number of values checked.
struct Report {
    checked: usize,
    mismatches: Vec<String>,
    /// Vector values that contradict the spec's definition, where ours follows the definition.
    defects: Vec<String>,
    /// With `CAUSAL_STRICT_VECTORS=1`, defects count as mismatches.
    strict: bool,
}

impl Report {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: impl FnOnce() -> String, ours: T, theirs: T) {
        self.checked += 1;
        if ours != theirs {
            self.mismatches.push(format!("{}: ours {ours:?}, reference {theirs:?}", what()));
        }
    }

    fn fail(&mut self, what: String) {
        self.checked += 1;
        self.mismatches.push(what);
    }
}

fn strs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
    out.sort();
    out
}

fn position(v: &Value) -> Position {
    strs(v).iter().map(|s| s.parse::<EntryHash>().expect("vector hash")).collect()
}

fn sorted(p: &Position) -> Vec<String> {
    let mut out: Vec<String> = p.iter().map(EntryHash::to_b64).collect();
    out.sort();
    out
}

fn meta_of(v: &Value) -> Meta {
    let mut meta = Meta::new();
    if let Some(obj) = v.as_object() {
        for (k, vals) in obj {
            meta.insert(k.clone(), strs(vals).into_iter().collect());
        }
    }
    meta
}

fn check_json(vectors: &Value, r: &mut Report) {
    for (i, case) in vectors["json"].as_array().expect("json[]").iter().enumerate() {
        let input = case["input"].as_str().expect("input");
        let value = match parse(input) {
            Ok(v) => v,
            Err(e) => {
                r.fail(format!("json[{i}] {input:?} does not parse: {e}"));
                continue;
            }
        };
        let canonical = match canonical_string(&value) {
            Ok(c) => c,
            Err(e) => {
                r.fail(format!("json[{i}] {input:?} has no canonical form: {e}"));
                continue;
            }
        };
        r.eq(
            || format!("json[{i}] canonical of {input:?}"),
            canonical.as_str(),
            case["canonical"].as_str().unwrap_or(""),
        );
        for (alg, key) in [(HashAlgorithm::Sha256, "sha256"), (HashAlgorithm::Blake3, "blake3")] {
            let ours = alg.digest(canonical.as_bytes()).to_b64();
            r.eq(|| format!("json[{i}] {key} of {input:?}"), ours.as_str(), case[key].as_str().unwrap_or(""));
        }
    }
}

fn check_dag(d: &Value, r: &mut Report) {
    let alg_name = d["hashAlgorithm"].as_str().expect("hashAlgorithm");
    let alg = HashAlgorithm::parse(alg_name).expect("known algorithm");
    let mut dag = Dag::new(MemStore::new(), alg);
    let mut naive = NaiveDag::new();
    for (i, e) in d["entries"].as_array().expect("entries[]").iter().enumerate() {
        let prev = position(&e["prev"]);
        let meta = meta_of(&e["meta"]);
        match dag.append(e["payload"].clone(), meta.clone(), prev.clone()) {
            Ok(app) => {
                r.eq(
                    || format!("{alg_name} entry {i} hash"),
                    app.hash.to_b64(),
                    e["hash"].as_str().unwrap_or("").to_string(),
                );
                naive.add(app.hash, &prev, &meta);
            }
            Err(err) => r.fail(format!("{alg_name} entry {i} refused: {err}")),
        }
    }
    let frontier = dag.frontier().expect("frontier");
    r.eq(|| format!("{alg_name} frontier"), sorted(&frontier), strs(&d["frontier"]));
    r.eq(|| format!("{alg_name} frontier (naive)"), sorted(&naive.frontier()), strs(&d["frontier"]));

    for (i, c) in d["minimalCovers"].as_array().expect("minimalCovers[]").iter().enumerate() {
        let ours = dag.minimal_cover(&position(&c["position"])).expect("minimal cover");
        r.eq(|| format!("{alg_name} minimalCovers[{i}]"), sorted(&ours), strs(&c["minimalCover"]));
    }
    for (i, c) in d["forkPositions"].as_array().expect("forkPositions[]").iter().enumerate() {
        let (a, b) = (position(&c["a"]), position(&c["b"]));
        let fp = dag.fork_position(&a, &b).expect("fork position");
        let def = naive.fork_position(&a, &b);
        for (field, ours, by_definition) in [
            ("commonFrontier", &fp.common_frontier, &def.common_frontier),
            ("common", &fp.common, &def.common),
            ("forkA", &fp.fork_a, &def.fork_a),
            ("forkB", &fp.fork_b, &def.fork_b),
        ] {
            let (ours, theirs, by_definition) = (sorted(ours), strs(&c[field]), sorted(by_definition));
            if ours != theirs && ours == by_definition && !r.strict {
                // The reference's multi-level index disagrees with the spec's definition (and
                // with the reference's own flat and topo indexes) on a few fork positions; see
                // docs/CONFORMANCE.md. Such a value is reported, not matched.
                r.checked += 1;
                r.defects
                    .push(format!("{alg_name} forkPositions[{i}].{field}: reference {theirs:?}, definition {ours:?}"));
            } else {
                r.eq(|| format!("{alg_name} forkPositions[{i}].{field}"), ours, theirs);
            }
        }
    }
    for (i, c) in d["coversWithFilter"].as_array().expect("coversWithFilter[]").iter().enumerate() {
        let filter = MetaFilter::tag("tag", c["tag"].as_str().expect("tag"));
        let ours = dag.cover_with_filter(&position(&c["from"]), &filter, None).expect("cover");
        r.eq(|| format!("{alg_name} coversWithFilter[{i}]"), sorted(&ours), strs(&c["cover"]));
    }
    for (i, c) in d["concurrentCoversWithFilter"].as_array().expect("concurrentCoversWithFilter[]").iter().enumerate() {
        let filter = MetaFilter::tag("tag", c["tag"].as_str().expect("tag"));
        let ours = dag
            .concurrent_cover_with_filter(&position(&c["from"]), &position(&c["concurrentTo"]), &filter, None)
            .expect("concurrent cover");
        r.eq(|| format!("{alg_name} concurrentCoversWithFilter[{i}]"), sorted(&ours), strs(&c["cover"]));
    }
}

fn check_all(vectors: &Value) -> Report {
    let strict = std::env::var("CAUSAL_STRICT_VECTORS").is_ok_and(|v| v == "1");
    let mut r = Report { checked: 0, mismatches: Vec::new(), defects: Vec::new(), strict };
    check_json(vectors, &mut r);
    for d in vectors["dags"].as_array().expect("dags[]") {
        check_dag(d, &mut r);
    }
    r
}

#[test]
fn reference_vectors_match() {
    let vectors = load_vectors();
    let report = check_all(&vectors);
    println!("conformance: {} values checked against {}", report.checked, vectors_path().display());
    println!(
        "conformance: {} equal to the reference, {} reference values that contradict the spec's definition",
        report.checked - report.mismatches.len() - report.defects.len(),
        report.defects.len()
    );
    for d in &report.defects {
        println!("  reference defect: {d}");
    }
    assert!(report.checked > 0, "the vector file holds nothing to check");
    assert!(report.mismatches.is_empty(), "{} mismatches:\n{}", report.mismatches.len(), report.mismatches.join("\n"));
}

/// The checker itself must notice a wrong value: flip one expected value of each kind.
#[test]
fn checker_detects_tampered_vectors() {
    let vectors = load_vectors();
    let baseline_defects = check_all(&vectors).defects.len();
    let tampered_paths: [&[&str]; 4] = [
        &["json", "0", "canonical"],
        &["dags", "0", "entries", "5", "hash"],
        &["dags", "1", "forkPositions", "3", "common"],
        &["dags", "0", "concurrentCoversWithFilter", "0", "cover"],
    ];
    for path in tampered_paths {
        let mut v = vectors.clone();
        let mut cur = &mut v;
        for seg in path {
            cur = match seg.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*seg],
            };
        }
        *cur = match cur {
            Value::Array(_) => Value::Array(vec![Value::String("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into())]),
            _ => Value::String("tampered".into()),
        };
        let report = check_all(&v);
        let noticed = !report.mismatches.is_empty() || report.defects.len() > baseline_defects;
        assert!(noticed, "tampering {path:?} went unnoticed");
    }
}
