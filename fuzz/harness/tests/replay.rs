//! Replays every committed fuzz input on stable: the minimised corpora (`fuzz/corpus/<target>/`) and the
//! inputs that once crashed a reader (`fuzz/regressions/<target>/`). Each must be refused or read, never
//! panic; a regression file that panics again fails this test with its path.

use std::path::{Path, PathBuf};

use scinterp_fuzz_harness::{run_in, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_is_read_or_refused_without_a_panic() {
    let mut replayed = 0;
    for target in TARGETS {
        let corpus = inputs("corpus", target.name);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{} is empty: every target keeps its minimised corpus",
            target.name
        );
        let mut accepted = 0;
        for path in corpus.iter().chain(&inputs("regressions", target.name)) {
            let data = std::fs::read(path).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let outcome = std::panic::catch_unwind(|| run_in(target, dir.path(), &data));
            let Ok(ok) = outcome else {
                panic!("{} panicked on {}", target.name, path.display());
            };
            accepted += usize::from(ok);
            replayed += 1;
        }
        // A corpus that the reader refuses entirely would only fuzz its first check.
        assert!(
            accepted > 0,
            "no input of fuzz/corpus/{} is accepted by its reader",
            target.name
        );
    }
    eprintln!("replayed {replayed} fuzz inputs");
}

/// The two HDF5 inputs that once exhausted memory (a dataset and a chunk declaring gigabytes in a file of
/// 33–42 kB): refused before anything is allocated, with an error that says why. A replay alone would not
/// notice them: the allocation either succeeds slowly or aborts the test process.
#[test]
fn hdf5_sizes_beyond_what_the_file_can_hold_are_refused() {
    for (target, file) in [
        ("h5ad", "oom-078e909f77bef12527902790139819a280fc6b1f"),
        ("loom", "crash-b89b4854671023f9cd1e5fefdd50b3b96b481c84"),
    ] {
        let src = fuzz_dir().join("regressions").join(target).join(file);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("cells.{target}"));
        std::fs::copy(&src, &path).unwrap();
        let err = match target {
            "h5ad" => scinterp_models::cells::h5ad::read_h5ad(&path, &Default::default()).map(|_| ()),
            _ => scinterp_models::cells::loom::read_loom(&path, None, &[]).map(|_| ()),
        }
        .expect_err(file)
        .to_string();
        assert!(
            err.contains("more than this") && err.contains("the file is corrupt") && err.contains("cells."),
            "{target}: {err}"
        );
    }
}

/// The tool folders that once panicked `scinterp apply` are refused by the tool loader, naming the file
/// and what is wrong with it.
#[test]
fn tool_folders_that_once_panicked_are_refused_with_the_reason() {
    let target = scinterp_fuzz_harness::target("tool").unwrap();
    for (file, says) in [
        (
            "crash-empty-pseudotime-bias",
            ["tool.safetensors", "`pseudotime_bias` holds 0 values"],
        ),
        (
            "crash-pseudotime-weight-without-columns",
            ["card.json", "pseudotime weight columns: 0"],
        ),
        ("crash-no-labels", ["card.json", "no labels"]),
    ] {
        let data = std::fs::read(fuzz_dir().join("regressions/tool").join(file)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(!run_in(target, dir.path(), &data), "{file} was accepted");
        let err = scinterp_export::files::read_tool(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(says.iter().all(|s| err.contains(s)), "{file}: {err}");
    }
}
