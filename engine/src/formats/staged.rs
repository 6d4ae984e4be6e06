//! One output discipline for commands that write a folder or a file: an existing output is refused
//! unless the user says `--overwrite`; a folder is written into a hidden staging sibling and swapped
//! into place only when complete, so a kill at any moment leaves either the earlier output or the new
//! one, never a mix; the next run cleans what a killed run left.
//!
//! Names (siblings of the output `x`): `.x.staging` (the folder being written) and `.x.replaced` (the
//! earlier output during the swap). A kill between the swap's two renames leaves `.x.replaced` and no
//! `x`: the next run puts it back first, so the earlier output is never lost.

use std::path::{Path, PathBuf};

use super::atomic::sync_parent;
use super::FileError;

/// Why an output cannot be started or finished.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{} already holds {what}; pass --overwrite to replace it (it is replaced only once the new one is complete), or choose another --out", .path.display())]
    Exists { path: PathBuf, what: &'static str },
    #[error(transparent)]
    File(#[from] FileError),
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// The staging folder of `out`.
pub fn staging_path(out: &Path) -> PathBuf {
    sibling(out, "staging")
}

fn replaced_path(out: &Path) -> PathBuf {
    sibling(out, "replaced")
}

fn remove_any(path: &Path) -> Result<(), FileError> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        // A path under a file (NotADirectory) cannot exist either.
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Err(FileError::new(path, "cannot remove", e))
        }
        _ => Ok(()),
    }
}

/// Puts back an output that a swap killed half-way moved aside, and removes a stale staging folder.
fn recover(out: &Path) -> Result<(), FileError> {
    let replaced = replaced_path(out);
    if replaced.exists() {
        if out.exists() {
            remove_any(&replaced)?;
        } else {
            std::fs::rename(&replaced, out).map_err(|e| FileError::new(&replaced, "cannot restore", e))?;
        }
    }
    remove_any(&staging_path(out))
}

/// Whether `path` holds an output: a file, or a folder with anything in it.
fn holds_something(path: &Path) -> bool {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    } else {
        path.exists()
    }
}

/// Refuses an existing output (a file, or a folder with anything in it) unless `overwrite`; a file is
/// then written atomically by its writer, a folder through [`StagedDir`]. `what` names the output in
/// the message ("a trace table").
pub fn check_file_output(out: &Path, overwrite: bool, what: &'static str) -> Result<(), OutputError> {
    recover(out)?;
    if holds_something(out) && !overwrite {
        return Err(OutputError::Exists {
            path: out.to_path_buf(),
            what,
        });
    }
    Ok(())
}

/// A folder output being written in its staging sibling.
#[derive(Debug)]
pub struct StagedDir {
    out: PathBuf,
    staging: PathBuf,
}

impl StagedDir {
    /// Starts writing the folder `out`: refuses an existing non-empty one unless `overwrite`, recovers
    /// or cleans what a killed run left, and creates an empty staging folder.
    pub fn begin(out: &Path, overwrite: bool, what: &'static str) -> Result<Self, OutputError> {
        check_file_output(out, overwrite, what)?;
        let staging = staging_path(out);
        std::fs::create_dir_all(&staging)
            .map_err(|e| FileError::new(&staging, "cannot create the staging folder", e))?;
        Ok(StagedDir {
            out: out.to_path_buf(),
            staging,
        })
    }

    /// Where the files go until [`StagedDir::commit`].
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Swaps the complete staging folder into place (the earlier output, if any, is removed after).
    pub fn commit(self) -> Result<(), FileError> {
        let replaced = replaced_path(&self.out);
        if self.out.exists() {
            std::fs::rename(&self.out, &replaced)
                .map_err(|e| FileError::new(&self.out, "cannot move the earlier output aside", e))?;
        }
        std::fs::rename(&self.staging, &self.out)
            .map_err(|e| FileError::new(&self.staging, "cannot move the new output into place", e))?;
        sync_parent(&self.out);
        remove_any(&replaced)
    }
}

/// A run that stops with an error removes its staging folder (a killed one leaves it for the next run).
impl Drop for StagedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_without_overwrite_and_swaps_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ann");
        // A fresh output.
        let s = StagedDir::begin(&out, false, "an annotation").unwrap();
        std::fs::write(s.path().join("a.tsv"), "old").unwrap();
        assert!(!out.exists(), "nothing in place before the commit");
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.tsv")).unwrap(), "old");
        // Refused without --overwrite, naming the folder and the flag.
        let err = StagedDir::begin(&out, false, "an annotation")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ann") && err.contains("--overwrite") && err.contains("an annotation"),
            "{err}"
        );
        // With it, a run killed before its commit leaves the earlier output whole …
        let s = StagedDir::begin(&out, true, "an annotation").unwrap();
        std::fs::write(s.path().join("b.tsv"), "new").unwrap();
        std::mem::forget(s);
        assert!(out.join("a.tsv").is_file() && !out.join("b.tsv").exists());
        // … and the next run cleans its staging folder; a complete one replaces it entirely.
        let s = StagedDir::begin(&out, true, "an annotation").unwrap();
        assert_eq!(
            std::fs::read_dir(s.path()).unwrap().count(),
            0,
            "stale staging removed"
        );
        std::fs::write(s.path().join("b.tsv"), "new").unwrap();
        s.commit().unwrap();
        assert!(!out.join("a.tsv").exists(), "no stale table of the earlier run");
        // A run that fails (the value is dropped) removes its staging folder at once.
        let s = StagedDir::begin(&out, true, "an annotation").unwrap();
        std::fs::write(s.path().join("c.tsv"), "half").unwrap();
        drop(s);
        assert!(!staging_path(&out).exists() && out.join("b.tsv").is_file());
        assert_eq!(std::fs::read_to_string(out.join("b.tsv")).unwrap(), "new");
        assert!(!staging_path(&out).exists() && !replaced_path(&out).exists());
    }

    #[test]
    fn a_swap_killed_between_its_renames_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ann");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a.tsv"), "old").unwrap();
        // As if killed after moving the earlier output aside.
        std::fs::rename(&out, replaced_path(&out)).unwrap();
        std::fs::create_dir(staging_path(&out)).unwrap();
        let err = StagedDir::begin(&out, false, "an annotation").unwrap_err();
        assert!(matches!(err, OutputError::Exists { .. }));
        assert_eq!(std::fs::read_to_string(out.join("a.tsv")).unwrap(), "old");
        assert!(!staging_path(&out).exists());
    }

    #[test]
    fn files_are_refused_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("edges.tsv");
        check_file_output(&out, false, "a trace table").unwrap();
        std::fs::write(&out, "x").unwrap();
        let err = check_file_output(&out, false, "a trace table")
            .unwrap_err()
            .to_string();
        assert!(err.contains("edges.tsv") && err.contains("--overwrite"), "{err}");
        check_file_output(&out, true, "a trace table").unwrap();
    }
}
