//! The token store: tokenized cells on disk, readable from Python without scinterp.
//!
//! A directory holding
//! - `manifest.json`: tokenizer kind, version and options, a hash (BLAKE3, named in `hash_algorithm`) of
//!   every dictionary and of the source file, cell and token counts;
//! - `tokens.npy` (int32, all cells packed end to end) and `offsets.npy` (int64, `n_cells + 1`): cell `c`
//!   is `tokens[offsets[c]:offsets[c+1]]`;
//! - `values.npy` (float32, packed like the tokens; scGPT's expression bins only);
//! - `cells.tsv`: the cell name and the obs columns asked for, one row per kept cell.
//!
//! The store is written into a temporary sibling directory (`.<name>.tmp-<pid>`) and swapped into place
//! only when complete (an atomic exchange with an earlier store where the system offers one), so a
//! killed run never leaves a half-written store under the final name, and a killed `--overwrite` never
//! loses the earlier store. The next write to the same folder removes the temporary folders of killed
//! runs (never a live run's) and puts back an earlier store that a swap killed half-way moved aside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scinterp_engine::npy::{header_bytes, read_npy_bytes, write_npy, NpyDtype};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "scinterp-token-store";
/// 2: the hashes are BLAKE3 (`hash_algorithm`), and `source_sha256` became `source_hash`.
pub const FORMAT_VERSION: u32 = 2;

/// The hash of the source and dictionaries in manifests written now.
pub const HASH_ALGORITHM: &str = "blake3";

fn sha256_name() -> String {
    "sha256".into()
}

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; remove it, choose another --out, or pass --overwrite")]
    Exists { path: PathBuf },
}

/// `manifest.json` of a token store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenStoreManifest {
    pub format: String,
    pub format_version: u32,
    /// `geneformer` or `scgpt`.
    pub tokenizer: String,
    /// e.g. `V2`, `V1`, `whole-human`.
    pub tokenizer_version: String,
    /// Every option that changes the tokens (input size, CLS value, seed, id kind, …).
    pub options: serde_json::Value,
    /// The hash function of `dictionaries` and `source_hash` (`blake3`; stores of format 1: `sha256`).
    #[serde(default = "sha256_name")]
    pub hash_algorithm: String,
    /// File name → hash (hex) of each dictionary / vocabulary used.
    pub dictionaries: BTreeMap<String, String>,
    pub source_path: String,
    /// Hash (hex) of the source file (or of a 10x folder's files, in name order).
    #[serde(alias = "source_sha256")]
    pub source_hash: String,
    pub n_cells: usize,
    pub n_tokens: usize,
    pub max_len: usize,
    pub has_values: bool,
    /// Cells of the source that produced no token (not in the store).
    pub n_cells_dropped: usize,
    pub scinterp_version: String,
}

/// A token store in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStore {
    pub manifest: TokenStoreManifest,
    pub cells: Vec<Vec<u32>>,
    pub values: Option<Vec<Vec<f32>>>,
    /// Header and rows of `cells.tsv`.
    pub cell_table: (Vec<String>, Vec<Vec<String>>),
}

/// BLAKE3 of a file (or of every file of a directory, in name order), hex. Files are hashed on the calling
/// thread (SIMD), so that hashing beside other work does not queue that work's jobs behind its own on the
/// rayon pool.
pub fn hash_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut files = vec![path.to_path_buf()];
    if path.is_dir() {
        files = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
    }
    // Read through one reused buffer rather than mapped: mapping a file of hundreds of MB costs a page
    // fault per 64 KB and the teardown of the map, more than copying it through a buffer that stays in
    // the cache.
    let mut buffer = vec![0u8; 1 << 20];
    for f in files.iter().filter(|f| f.is_file()) {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = std::io::Read::read(&mut file, &mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Writes a 1-D `.npy` array given as consecutive byte slices (each a whole number of elements),
/// fsynced: the same bytes as `write_npy` of their concatenation.
fn write_npy_parts<'a>(
    path: &Path,
    dtype: NpyDtype,
    parts: impl Iterator<Item = &'a [u8]> + Clone,
) -> std::io::Result<()> {
    use std::io::Write;
    let n_bytes: usize = parts.clone().map(<[u8]>::len).sum();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(&header_bytes(dtype, &[n_bytes / dtype.size_in_bytes()]))?;
    for part in parts {
        w.write_all(part)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn clean_field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into())
}

/// The temporary sibling directory a store is written into before it is swapped into `dir`.
fn temporary_dir(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(".{}.tmp-{}", dir_name(dir), std::process::id()))
}

/// Where an earlier store waits while a new one is renamed into place (file systems without an atomic
/// exchange only).
fn replaced_dir(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(".{}.replaced", dir_name(dir)))
}

/// The process id of a temporary folder of a store at `dir`, if `name` is one.
fn temporary_pid(dir: &Path, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(&format!(".{}.tmp-", dir_name(dir)))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` exists on this machine (a PID that cannot be asked about counts as alive).
fn process_alive(pid: u32) -> bool {
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => {
            // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
            let rc = unsafe { libc::kill(p, 0) };
            rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
        _ => true,
    }
}

/// An exclusive lock on the folder `path`, held by a live writer until its handle is dropped (the OS
/// drops it when the process dies); `None` when another process holds it or it cannot be taken.
fn lock_dir(path: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a plain system call on an open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

/// Makes `dir` ready for a new store: puts back an earlier store that a swap killed half-way had moved
/// aside, and removes the temporary folders that killed writes of a store at `dir` left beside it. A
/// folder is removed only when its process is gone and nothing holds its lock, so a live run's is
/// never touched.
pub fn prepare_output(dir: &Path) -> Result<(), TokenStoreError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenStoreError::Write { path, source }
    };
    let aside = replaced_dir(dir);
    if aside.is_dir() {
        if dir.exists() {
            // The swap was complete: `aside` is the replaced store.
            remove_earlier(&aside);
        } else {
            std::fs::rename(&aside, dir).map_err(werr(dir))?;
            tracing::warn!(
                "{}: put back the earlier store, which a killed --overwrite run had moved aside",
                dir.display()
            );
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(()); // no folder yet: nothing left over
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_pid(dir, &name) else {
            continue;
        };
        let path = entry.path();
        if pid == std::process::id() || !path.is_dir() || process_alive(pid) {
            continue;
        }
        let Some(_lock) = lock_dir(&path) else {
            continue; // held by a live writer (e.g. on another machine sharing the folder)
        };
        // Only disk space is at stake: a folder that cannot be removed does not stop this run.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(
                "removed {}, the unfinished store of a killed run (process {pid} is gone)",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "{}: the unfinished store of a killed run (process {pid} is gone) cannot be removed: {e}",
                path.display()
            ),
        }
    }
    Ok(())
}

/// Creates `tmp` afresh (removing what a killed run may have left there) and locks it for the run.
fn create_fresh_dir(tmp: &Path) -> Result<Option<std::fs::File>, TokenStoreError> {
    let werr = |source| TokenStoreError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(werr)?;
    }
    std::fs::create_dir_all(tmp).map_err(werr)?;
    Ok(lock_dir(tmp))
}

/// Puts the complete store in `tmp` at `dir`. An earlier store there is exchanged with it in one step
/// and then removed; without an atomic exchange it is first moved aside to [`replaced_dir`], where
/// [`prepare_output`] finds it if a kill comes between the two renames. Either way `dir` never lacks a
/// whole store.
fn swap_into_place(tmp: &Path, dir: &Path) -> Result<(), TokenStoreError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenStoreError::Write { path, source }
    };
    if !dir.exists() {
        std::fs::rename(tmp, dir).map_err(werr(dir))?;
    } else if scinterp_engine::formats::atomic::exchange_dirs(tmp, dir).map_err(werr(dir))? {
        // `tmp` now holds the earlier store; a kill before it is removed leaves it to the next run.
        scinterp_engine::formats::atomic::sync_parent(dir);
        remove_earlier(tmp);
    } else {
        swap_by_renames(tmp, dir)?;
    }
    scinterp_engine::formats::atomic::sync_parent(dir);
    Ok(())
}

/// The swap without an atomic exchange: the earlier store at `dir` goes aside, the new one in.
fn swap_by_renames(tmp: &Path, dir: &Path) -> Result<(), TokenStoreError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenStoreError::Write { path, source }
    };
    let aside = replaced_dir(dir);
    std::fs::rename(dir, &aside).map_err(werr(dir))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let _ = std::fs::rename(&aside, dir);
        return Err(werr(dir)(e));
    }
    scinterp_engine::formats::atomic::sync_parent(dir);
    remove_earlier(&aside);
    Ok(())
}

/// Removes an earlier store once the new one is in place; a failure only costs disk space until the next
/// run's [`prepare_output`], so it is a warning.
fn remove_earlier(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(
            "{}: cannot remove the earlier store after replacing it ({e}); the next run removes it",
            path.display()
        );
    }
}

/// Moves the complete store in `tmp` to `dir` (replacing what is there); removes `tmp` on failure.
fn commit(tmp: &Path, dir: &Path, written: Result<(), TokenStoreError>) -> Result<(), TokenStoreError> {
    let result = written.and_then(|()| swap_into_place(tmp, dir));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// The error of a token id that does not fit the int32 of `tokens.npy`.
fn check_token_ids(cells: &[Vec<u32>], path: &Path) -> Result<(), TokenStoreError> {
    // Each cell's maximum by a fold without early exit (vectorised), rather than a search over all tokens.
    let max = |c: &Vec<u32>| c.iter().fold(0, |m, &t| m.max(t));
    if cells.iter().map(max).max().unwrap_or(0) > i32::MAX as u32 {
        return Err(TokenStoreError::Invalid {
            path: path.to_path_buf(),
            reason: "a token id does not fit in int32".into(),
        });
    }
    Ok(())
}

/// A store whose `tokens.npy` is written while the tokens are still being produced: chunks of cells are
/// appended and flushed to the disk as they come (on the caller's thread, typically one of its own), so
/// that the disk writes overlap the tokenizing. [`Self::finish`] then writes the `.npy` header, the other
/// files, and renames the folder into place, exactly as [`TokenStore::write`] does: the files are
/// byte-identical. Dropped unfinished, it removes its temporary folder.
pub struct TokenStoreStream {
    dir: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    /// Bytes reserved for the header at the start of `tokens.npy`.
    header_len: usize,
    n_tokens: usize,
    finished: bool,
    /// The lock on `tmp` that marks it as a live run's (see [`prepare_output`]).
    _lock: Option<std::fs::File>,
}

impl TokenStoreStream {
    /// Starts a store at `dir` (written into a temporary sibling folder). An existing `dir` is an error
    /// unless `overwrite`; it is replaced only by [`Self::finish`].
    pub fn create(dir: &Path, overwrite: bool) -> Result<Self, TokenStoreError> {
        use std::io::{Seek, SeekFrom};
        prepare_output(dir)?;
        if dir.exists() && !overwrite {
            return Err(TokenStoreError::Exists {
                path: dir.to_path_buf(),
            });
        }
        let tmp = temporary_dir(dir);
        let lock = create_fresh_dir(&tmp)?;
        let path = tmp.join("tokens.npy");
        // The header's length for any count of tokens a machine can hold (checked again at the end).
        let header_len = header_bytes(NpyDtype::I32, &[0]).len();
        let opened = std::fs::File::create(&path).and_then(|mut f| {
            f.seek(SeekFrom::Start(header_len as u64))?;
            Ok(f)
        });
        let file = match opened {
            Ok(f) => f,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(TokenStoreError::Write { path, source });
            }
        };
        Ok(TokenStoreStream {
            dir: dir.to_path_buf(),
            tmp,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            header_len,
            n_tokens: 0,
            finished: false,
            _lock: lock,
        })
    }

    /// Appends the tokens of the next cells and starts writing them to the disk (on Linux, without
    /// waiting: [`Self::finish`]'s `fsync` waits for all of them, as [`TokenStore::write`]'s does).
    pub fn append(&mut self, cells: &[Vec<u32>]) -> Result<(), TokenStoreError> {
        use std::io::Write;
        let path = self.tmp.join("tokens.npy");
        check_token_ids(cells, &path)?;
        let werr = |source| TokenStoreError::Write {
            path: path.clone(),
            source,
        };
        for c in cells {
            self.file.write_all(bytemuck::cast_slice(c)).map_err(werr)?;
        }
        self.file.flush().map_err(werr)?;
        start_writeback(self.file.get_ref());
        self.n_tokens += cells.iter().map(Vec::len).sum::<usize>();
        Ok(())
    }

    /// Completes the store: `rest.lengths` must be the token counts of the cells appended, in order (their
    /// sum is checked); the other files are written from `rest`.
    pub fn finish(mut self, rest: StoreRest<'_>) -> Result<(), TokenStoreError> {
        use std::io::{Seek, SeekFrom, Write};
        self.finished = true;
        let path = self.tmp.join("tokens.npy");
        let expected: usize = rest.lengths.iter().sum();
        let header = header_bytes(NpyDtype::I32, &[self.n_tokens]);
        let written = if expected != self.n_tokens {
            Err(TokenStoreError::Invalid {
                path: path.clone(),
                reason: format!("{} tokens were streamed, the store has {expected}", self.n_tokens),
            })
        } else if header.len() != self.header_len {
            // Not reached for any real count (the header's length changes only past 10^60 tokens).
            Err(TokenStoreError::Invalid {
                path: path.clone(),
                reason: format!(
                    "{} tokens need a longer .npy header than was reserved",
                    self.n_tokens
                ),
            })
        } else {
            self.file
                .flush()
                .and_then(|()| {
                    let f = self.file.get_mut();
                    f.seek(SeekFrom::Start(0))?;
                    f.write_all(&header)?;
                    f.sync_all()
                })
                .map_err(|source| TokenStoreError::Write {
                    path: path.clone(),
                    source,
                })
                .and_then(|()| rest.write(&self.tmp))
        };
        commit(&self.tmp, &self.dir, written)
    }
}

/// Everything of a token store but its tokens: what [`TokenStoreStream::finish`] writes beside the tokens
/// streamed, so that the tokens need not be kept until the end.
pub struct StoreRest<'a> {
    pub manifest: &'a TokenStoreManifest,
    /// The number of tokens of each cell.
    pub lengths: &'a [usize],
    pub values: Option<&'a [Vec<f32>]>,
    /// Header and rows of `cells.tsv`.
    pub cell_table: &'a (Vec<String>, Vec<Vec<String>>),
}

impl StoreRest<'_> {
    /// `offsets.npy`, `values.npy`, `cells.tsv` and `manifest.json` into `dir`.
    fn write(&self, dir: &Path) -> Result<(), TokenStoreError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TokenStoreError::Write { path, source }
        };
        let mut offsets = vec![0i64];
        for &n in self.lengths {
            offsets.push(offsets.last().copied().unwrap_or(0) + n as i64);
        }
        let p = dir.join("offsets.npy");
        write_npy(
            &p,
            NpyDtype::I64,
            &[offsets.len()],
            bytemuck::cast_slice(&offsets),
        )
        .map_err(werr(&p))?;
        if let Some(values) = self.values {
            let p = dir.join("values.npy");
            write_npy_parts(&p, NpyDtype::F32, values.iter().map(|c| bytemuck::cast_slice(c)))
                .map_err(werr(&p))?;
        }
        let (header, rows) = self.cell_table;
        let mut tsv = header
            .iter()
            .map(|h| clean_field(h))
            .collect::<Vec<_>>()
            .join("\t");
        tsv.push('\n');
        for row in rows {
            tsv.push_str(&row.iter().map(|f| clean_field(f)).collect::<Vec<_>>().join("\t"));
            tsv.push('\n');
        }
        let p = dir.join("cells.tsv");
        std::fs::write(&p, tsv).map_err(werr(&p))?;
        let p = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(self.manifest).map_err(|e| TokenStoreError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&p, text).map_err(werr(&p))?;
        Ok(())
    }
}

/// Starts the write-back of a file's dirty pages without waiting for it, so that the disk writes overlap
/// what the caller does next and the final `fsync` has little left to wait for. Unlike `fdatasync`, it
/// forces no journal commit (which on ext4 can wait behind other processes' dirty data). Only a hint: a
/// failure is ignored (the final `fsync` reports errors).
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; offset 0 and length 0 mean the whole file.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

impl Drop for TokenStoreStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

impl TokenStore {
    /// Writes the store to `dir` atomically. An existing `dir` is an error unless `overwrite`.
    pub fn write(&self, dir: &Path, overwrite: bool) -> Result<(), TokenStoreError> {
        prepare_output(dir)?;
        if dir.exists() && !overwrite {
            return Err(TokenStoreError::Exists {
                path: dir.to_path_buf(),
            });
        }
        let tmp = temporary_dir(dir);
        let _lock = create_fresh_dir(&tmp)?;
        let written = self.write_into(&tmp);
        commit(&tmp, dir, written)
    }

    fn write_into(&self, dir: &Path) -> Result<(), TokenStoreError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TokenStoreError::Write { path, source }
        };
        let p = dir.join("tokens.npy");
        check_token_ids(&self.cells, &p)?;
        // u32 ids below 2^31 have the bytes of the same int32: write the cells as they are, with no packed
        // copy of all tokens in memory.
        write_npy_parts(
            &p,
            NpyDtype::I32,
            self.cells.iter().map(|c| bytemuck::cast_slice(c)),
        )
        .map_err(werr(&p))?;
        let lengths: Vec<usize> = self.cells.iter().map(Vec::len).collect();
        self.rest(&lengths).write(dir)
    }

    /// The store but its tokens, given the token count of each cell.
    pub fn rest<'a>(&'a self, lengths: &'a [usize]) -> StoreRest<'a> {
        StoreRest {
            manifest: &self.manifest,
            lengths,
            values: self.values.as_deref(),
            cell_table: &self.cell_table,
        }
    }

    /// Reads and checks a store's `manifest.json` alone.
    pub fn read_manifest(dir: &Path) -> Result<TokenStoreManifest, TokenStoreError> {
        let invalid = |path: &Path, reason: String| TokenStoreError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| {
            invalid(
                &mpath,
                format!(
                    "{e}; is {} a token store (made by `scinterp tokenize`)?",
                    dir.display()
                ),
            )
        })?;
        let manifest: TokenStoreManifest = serde_json::from_str(&text)
            .map_err(|e| invalid(&mpath, format!("not a token-store manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.format_version > FORMAT_VERSION {
            return Err(invalid(
                &mpath,
                format!(
                    "format {} v{} is not one this scinterp reads",
                    manifest.format, manifest.format_version
                ),
            ));
        }
        Ok(manifest)
    }

    /// Reads a store, checking that its arrays agree with each other and with the manifest.
    pub fn read(dir: &Path) -> Result<TokenStore, TokenStoreError> {
        let invalid = |path: &Path, reason: String| TokenStoreError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let manifest = Self::read_manifest(dir)?;
        let read = |name: &str, dtype: NpyDtype| -> Result<Vec<u8>, TokenStoreError> {
            let p = dir.join(name);
            let (h, bytes) = read_npy_bytes(&p).map_err(|e| invalid(&p, e.reason()))?;
            if h.dtype != dtype || h.shape.len() != 1 {
                return Err(invalid(&p, format!("expected a 1-D {} array", dtype.descr())));
            }
            Ok(bytes)
        };
        let tokens: Vec<i32> = bytemuck::pod_collect_to_vec(&read("tokens.npy", NpyDtype::I32)?);
        let offsets: Vec<i64> = bytemuck::pod_collect_to_vec(&read("offsets.npy", NpyDtype::I64)?);
        let opath = dir.join("offsets.npy");
        if offsets.len() != manifest.n_cells + 1
            || offsets.first() != Some(&0)
            || offsets.last() != Some(&(tokens.len() as i64))
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err(invalid(
                &opath,
                "offsets disagree with tokens.npy or the manifest (corrupt store)".into(),
            ));
        }
        if tokens.iter().any(|&t| t < 0) {
            return Err(invalid(&dir.join("tokens.npy"), "negative token id".into()));
        }
        let cells: Vec<Vec<u32>> = offsets
            .windows(2)
            .map(|w| {
                tokens[w[0] as usize..w[1] as usize]
                    .iter()
                    .map(|&t| t as u32)
                    .collect()
            })
            .collect();
        let values = if manifest.has_values {
            let flat: Vec<f32> = bytemuck::pod_collect_to_vec(&read("values.npy", NpyDtype::F32)?);
            if flat.len() != tokens.len() {
                return Err(invalid(
                    &dir.join("values.npy"),
                    "values and tokens differ in length".into(),
                ));
            }
            Some(
                offsets
                    .windows(2)
                    .map(|w| flat[w[0] as usize..w[1] as usize].to_vec())
                    .collect(),
            )
        } else {
            None
        };
        let tpath = dir.join("cells.tsv");
        let tsv = std::fs::read_to_string(&tpath).map_err(|e| invalid(&tpath, e.to_string()))?;
        let mut lines = tsv.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split('\t')
            .map(str::to_string)
            .collect();
        let rows: Vec<Vec<String>> = lines
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        if rows.len() != manifest.n_cells {
            return Err(invalid(
                &tpath,
                format!("{} rows for {} cells", rows.len(), manifest.n_cells),
            ));
        }
        Ok(TokenStore {
            manifest,
            cells,
            values,
            cell_table: (header, rows),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TokenStore {
        let cells = vec![vec![2u32, 10, 11, 3], vec![2, 7, 3]];
        TokenStore {
            manifest: TokenStoreManifest {
                format: FORMAT.into(),
                format_version: FORMAT_VERSION,
                tokenizer: "geneformer".into(),
                tokenizer_version: "V2".into(),
                options: serde_json::json!({ "model_input_size": 4096 }),
                dictionaries: BTreeMap::new(),
                source_path: "x.h5ad".into(),
                hash_algorithm: HASH_ALGORITHM.into(),
                source_hash: "00".into(),
                n_cells: 2,
                n_tokens: 7,
                max_len: 4,
                has_values: true,
                n_cells_dropped: 1,
                scinterp_version: "test".into(),
            },
            cells,
            values: Some(vec![vec![-2.0, 1.0, 2.0, 3.0], vec![-2.0, 5.0, 1.0]]),
            cell_table: (
                vec!["cell".into(), "type".into()],
                vec![vec!["a".into(), "T".into()], vec!["b".into(), "B\tx".into()]],
            ),
        }
    }

    #[test]
    fn reads_format_1_manifests_with_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        store().write(&dir, false).unwrap();
        let path = dir.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let o = m.as_object_mut().unwrap();
        o.remove("hash_algorithm");
        let hash = o.remove("source_hash").unwrap();
        o.insert("source_sha256".into(), hash);
        o.insert("format_version".into(), 1.into());
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let back = TokenStore::read(&dir).unwrap();
        assert_eq!(back.manifest.hash_algorithm, "sha256");
        assert_eq!(back.manifest.source_hash, "00");
        assert_eq!(back.cells, store().cells);
    }

    /// Every file of a store folder, by name.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_streamed_store_equals_a_written_one() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store();
        let written = tmp.path().join("written");
        s.write(&written, false).unwrap();
        let streamed = tmp.path().join("streamed");
        let mut stream = TokenStoreStream::create(&streamed, false).unwrap();
        // Not yet in place while streaming.
        assert!(!streamed.exists());
        stream.append(&s.cells[..1]).unwrap();
        stream.append(&[]).unwrap();
        stream.append(&s.cells[1..]).unwrap();
        let lengths: Vec<usize> = s.cells.iter().map(Vec::len).collect();
        stream.finish(s.rest(&lengths)).unwrap();
        assert_eq!(files(&streamed), files(&written));
        // Replacing needs overwrite, and then replaces.
        assert!(matches!(
            TokenStoreStream::create(&streamed, false),
            Err(TokenStoreError::Exists { .. })
        ));
        let mut stream = TokenStoreStream::create(&streamed, true).unwrap();
        stream.append(&s.cells).unwrap();
        stream.finish(s.rest(&lengths)).unwrap();
        assert_eq!(files(&streamed), files(&written));
        // Cells that are not those of the store: refused, nothing replaced, nothing left behind.
        let mut stream = TokenStoreStream::create(&streamed, true).unwrap();
        stream.append(&s.cells[..1]).unwrap();
        assert!(matches!(
            stream.finish(s.rest(&lengths)),
            Err(TokenStoreError::Invalid { .. })
        ));
        assert_eq!(files(&streamed), files(&written));
        // Dropped unfinished: its temporary folder goes.
        let stream = TokenStoreStream::create(&tmp.path().join("dropped"), false).unwrap();
        drop(stream);
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["streamed", "written"]);
        // A token id beyond int32 is refused as by `write`.
        let mut stream = TokenStoreStream::create(&tmp.path().join("big"), false).unwrap();
        assert!(matches!(
            stream.append(&[vec![u32::MAX]]),
            Err(TokenStoreError::Invalid { .. })
        ));
    }

    /// The id of a process that has exited (and been waited for).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_next_write_removes_what_killed_runs_left_but_never_a_live_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let mut live = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let killed = tmp.path().join(format!(".store.tmp-{}", dead_pid()));
        let running = tmp.path().join(format!(".store.tmp-{}", live.id()));
        // A writer whose process this machine cannot see, but which holds its folder's lock.
        let elsewhere = tmp.path().join(format!(".store.tmp-{}", dead_pid()));
        let other_output = tmp.path().join(format!(".other.tmp-{}", dead_pid()));
        let not_a_pid = tmp.path().join(".store.tmp-12x");
        for d in [&killed, &running, &elsewhere, &other_output, &not_a_pid] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("tokens.npy"), b"half").unwrap();
        }
        let held = lock_dir(&elsewhere).expect("lock");
        store().write(&dir, false).unwrap();
        let _ = live.kill();
        let _ = live.wait();
        assert!(!killed.exists(), "the leftover of a killed run is removed");
        for kept in [&running, &elsewhere, &other_output, &not_a_pid] {
            assert!(
                kept.join("tokens.npy").is_file(),
                "{} was removed",
                kept.display()
            );
        }
        // Once their runs are gone, the streaming writer removes them too (not other outputs' folders).
        drop(held);
        let lengths: Vec<usize> = store().cells.iter().map(Vec::len).collect();
        let mut stream = TokenStoreStream::create(&dir, true).unwrap();
        stream.append(&store().cells).unwrap();
        stream.finish(store().rest(&lengths)).unwrap();
        let mut want = vec![
            "store".to_string(),
            other_output.file_name().unwrap().to_string_lossy().into_owned(),
            ".store.tmp-12x".to_string(),
        ];
        want.sort();
        assert_eq!(names(tmp.path()), want);
    }

    #[test]
    fn a_killed_overwrite_never_loses_the_earlier_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let old = store();
        old.write(&dir, false).unwrap();
        let before = files(&dir);
        let mut new = store();
        new.cells[0] = vec![2, 12, 13, 3];
        // Replacing swaps the complete new store in and leaves nothing beside it.
        new.write(&dir, true).unwrap();
        assert_eq!(TokenStore::read(&dir).unwrap().cells, new.cells);
        assert_eq!(names(tmp.path()), ["store"]);
        old.write(&dir, true).unwrap();
        assert_eq!(files(&dir), before);
        // The swap by two renames (file systems without an atomic exchange) ends the same way …
        let staged = tmp.path().join(".store.tmp-1");
        new.write(&staged, false).unwrap();
        swap_by_renames(&staged, &dir).unwrap();
        assert_eq!(TokenStore::read(&dir).unwrap().cells, new.cells);
        assert_eq!(names(tmp.path()), ["store"]);
        // … and a kill between its renames leaves the earlier store aside and the new one in its
        // temporary folder: the next run puts the earlier one back, whole, before it decides anything
        // (here: refused without --overwrite), and removes the dead run's folder.
        old.write(&dir, true).unwrap();
        let killed = tmp.path().join(format!(".store.tmp-{}", dead_pid()));
        new.write(&killed, false).unwrap();
        std::fs::rename(&dir, replaced_dir(&dir)).unwrap();
        assert!(matches!(
            new.write(&dir, false),
            Err(TokenStoreError::Exists { .. })
        ));
        assert_eq!(files(&dir), before);
        assert_eq!(TokenStore::read(&dir).unwrap().cells, old.cells);
        assert_eq!(names(tmp.path()), ["store"]);
    }

    #[test]
    fn round_trips_refuses_to_clobber_and_detects_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let s = store();
        s.write(&dir, false).unwrap();
        let back = TokenStore::read(&dir).unwrap();
        assert_eq!(back.cells, s.cells);
        assert_eq!(back.values, s.values);
        assert_eq!(back.cell_table.1[1], vec!["b".to_string(), "B x".to_string()]);
        assert!(matches!(
            s.write(&dir, false),
            Err(TokenStoreError::Exists { .. })
        ));
        s.write(&dir, true).unwrap();
        // No temporary directory is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        // A truncated array is reported with its file name.
        let t = dir.join("tokens.npy");
        let bytes = std::fs::read(&t).unwrap();
        std::fs::write(&t, &bytes[..bytes.len() - 4]).unwrap();
        let err = TokenStore::read(&dir).unwrap_err().to_string();
        assert!(err.contains("tokens.npy") && err.contains("truncated"), "{err}");
        assert!(TokenStore::read(tmp.path())
            .unwrap_err()
            .to_string()
            .contains("token store"));
    }
}
