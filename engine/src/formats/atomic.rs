//! Atomic file writes: every file scinterp writes under its final name is whole. The bytes go to a
//! hidden temporary name in the same folder (so the rename cannot cross file systems), are fsynced,
//! renamed over the target, and the folder is fsynced so that the rename itself survives a crash.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O failure on a named file: what was being done, and the system's reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {action}: {io}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub action: &'static str,
    pub io: std::io::Error,
}

impl FileError {
    pub fn new(path: &Path, action: &'static str, io: std::io::Error) -> Self {
        FileError {
            path: path.to_path_buf(),
            action,
            io,
        }
    }
}

impl From<FileError> for std::io::Error {
    fn from(e: FileError) -> Self {
        std::io::Error::new(e.io.kind(), e.to_string())
    }
}

/// A file being written under a temporary name; [`AtomicFile::commit`] moves it into place. Dropped
/// without a commit, the temporary file is removed and the target is left as it was.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

/// The temporary sibling of `path`: `.<name>.tmp` in the same folder.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self, FileError> {
        let tmp = temporary_path(path);
        let file = File::create(&tmp).map_err(|e| FileError::new(&tmp, "cannot create", e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("an AtomicFile holds its file until commit")
    }

    /// The temporary name (for messages).
    pub fn temporary(&self) -> &Path {
        &self.tmp
    }

    /// fsync, rename over the target, fsync the folder.
    pub fn commit(mut self) -> Result<(), FileError> {
        let file = self.file.take().expect("commit runs once");
        file.sync_all()
            .map_err(|e| FileError::new(&self.tmp, "cannot write", e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| FileError::new(&self.path, "cannot move into place", e))?;
        sync_parent(&self.path);
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// fsyncs the folder holding `path` so that a rename into it is durable (best effort: some file
/// systems refuse to open or sync a directory, and the data itself is already synced).
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (temporary name, fsync, rename, folder fsync).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut file = AtomicFile::create(path)?;
    let tmp = file.temporary().to_path_buf();
    file.file()
        .write_all(bytes)
        .map_err(|e| FileError::new(&tmp, "cannot write", e))?;
    file.commit()
}

/// Swaps the folders `a` and `b` in one step; `Ok(false)` where the system or file system cannot.
pub fn exchange_dirs(a: &Path, b: &Path) -> std::io::Result<bool> {
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths relative to the working directory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);

        // Abandoned before the commit: the old file stays, the temporary goes.
        let mut f = AtomicFile::create(&path).unwrap();
        f.file().write_all(b"three").unwrap();
        assert!(temporary_path(&path).exists());
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!temporary_path(&path).exists());

        let missing = dir.path().join("no/such/dir/x");
        let e = atomic_write(&missing, b"").unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e}");
    }
}
