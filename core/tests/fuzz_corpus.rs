//! Replays the fuzz corpus and every saved crash input through the fuzz targets' bodies
//! (`causal_core::fuzzing`), as ordinary tests.

mod fuzz_replay;

#[test]
fn corpus_and_regressions_run_clean() {
    let fuzz = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let total = fuzz_replay::replay(&fuzz, causal_core::fuzzing::TARGETS);
    println!("replayed {total} fuzz inputs");
}
