//! Replays the `sync_frames` fuzz corpus and every saved crash input through the fuzz
//! target's body (`causal_sync::fuzzing`), as ordinary tests.

#[path = "../../core/tests/fuzz_replay/mod.rs"]
mod fuzz_replay;

#[test]
fn corpus_and_regressions_run_clean() {
    let fuzz = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let total = fuzz_replay::replay(&fuzz, causal_sync::fuzzing::TARGETS);
    println!("replayed {total} fuzz inputs");
}
