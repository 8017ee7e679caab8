//! Replays the fuzz corpus and every saved crash input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through fuzz targets' bodies. Shared by the corpus tests of
//! causal-core and causal-sync (the latter includes this file by path).

use std::path::{Path, PathBuf};

fn inputs(fuzz: &Path, kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs every input of every target in `fuzz` (the `fuzz/` directory); panics, naming the
/// input, if a target has no seed or panics on one. Returns how many inputs ran.
pub fn replay(fuzz: &Path, targets: &[causal_core::fuzzing::Target]) -> usize {
    let mut total = 0;
    for (name, body) in targets {
        let seeds = inputs(fuzz, "corpus", name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed inputs");
        for path in seeds.iter().chain(inputs(fuzz, "regressions", name).iter()) {
            let data = std::fs::read(path).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                panic!("fuzz target {name} panics on {}: {panic:?}", path.display());
            }
            total += 1;
        }
    }
    total
}
