//! Replays the `sync_frames` fuzz corpus and every saved crash input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the fuzz target's body, as ordinary tests.

use std::path::PathBuf;

use causal_sync::fuzzing::TARGETS;

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(kind).join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn corpus_and_regressions_run_clean() {
    let mut total = 0;
    for (name, body) in TARGETS {
        let seeds = inputs("corpus", name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed inputs");
        for path in seeds.iter().chain(inputs("regressions", name).iter()) {
            let data = std::fs::read(path).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                panic!("fuzz target {name} panics on {}: {panic:?}", path.display());
            }
            total += 1;
        }
    }
    println!("replayed {total} fuzz inputs");
}
