//! Activation stores: one `.npy` per hook (`[n_rows, d_model]`, f16 or f32), one shared row index
//! `rows.npy` (int32 `[n_rows, 3]`: cell, position, token) and `manifest.json`. numpy opens every array
//! with `np.load(path, mmap_mode="r")`.
//!
//! Writing is resumable. Every file is created at its final size up front (so a full disk is found
//! before any work, not halfway), rows are written in place batch by batch, the data is fsynced, and
//! only then does the manifest advance `cells_complete` (written to a temporary name and renamed). A
//! run killed at any moment leaves a manifest that describes only data that is on disk; a rerun with
//! the same settings rewrites from there, so the result equals an uninterrupted run byte for byte.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::extract::ShardInfo;
use crate::npy::{header_bytes, read_header, read_npy_bytes, write_npy, NpyDtype};
use crate::sae::synth::SynthSpec;

pub const STORE_FORMAT: &str = "scinterp-activation-store";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const ROWS_FILE: &str = "rows.npy";

/// A problem with an activation store, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct StoreError {
    pub path: PathBuf,
    pub reason: String,
}

impl StoreError {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        StoreError {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(path: &Path, what: &str, e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::new(
                path,
                format!(
                    "the disk is full ({what}); free some space and rerun the same command: it resumes \
                     from the last complete batch"
                ),
            );
        }
        StoreError::new(path, format!("{what}: {e}"))
    }
}

impl From<crate::npy::NpyError> for StoreError {
    /// Names the file once (the .npy error's own message starts with it).
    fn from(e: crate::npy::NpyError) -> Self {
        StoreError::new(e.path(), e.reason())
    }
}

/// Element type of the stored activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActDtype {
    F16,
    F32,
}

impl ActDtype {
    fn npy(self) -> NpyDtype {
        match self {
            ActDtype::F16 => NpyDtype::F16,
            ActDtype::F32 => NpyDtype::F32,
        }
    }

    pub fn size_in_bytes(self) -> usize {
        self.npy().size_in_bytes()
    }

    /// Little-endian bytes of `values` in this type (f16: round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            ActDtype::F32 => bytemuck::cast_slice(values).to_vec(),
            ActDtype::F16 => {
                let mut half = vec![f16::ZERO; values.len()];
                half.convert_from_f32_slice(values);
                bytemuck::cast_slice(&half).to_vec()
            }
        }
    }
}

/// `model` of a store's manifest: what made the activations. The fields of each record are declared in
/// alphabetical order, which keeps the bytes of the manifests written before the record was typed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StoreModelRecord {
    /// A model folder run by `scinterp extract`.
    Folder(ModelFolderRecord),
    /// Rows made from a known dictionary by `scinterp sae synth`.
    Synthetic { synthetic: SynthSpec },
    /// A store written by another tool (e.g. the Python benchmark scripts): kept as it is.
    Other(serde_json::Value),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelFolderRecord {
    /// The registry's name of the model (`geneformer`, `scgpt`).
    pub kind: String,
    /// The model folder, absolute.
    pub path: String,
    /// The weights file, absolute, and its BLAKE3 hash.
    pub weights: String,
    pub weights_blake3: String,
}

/// `source` of a store's manifest: the cells.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StoreSourceRecord {
    /// A token store (`scinterp tokenize`).
    TokenStore(TokenStoreRecord),
    /// `scinterp sae synth`: rows, in pseudo-cells of `cell_rows`.
    Synthetic { cell_rows: usize, synthetic_rows: usize },
    /// A store written by another tool: kept as it is.
    Other(serde_json::Value),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenStoreRecord {
    /// BLAKE3 of the token store's `offsets.npy`.
    pub offsets_blake3: String,
    /// The token store folder, absolute.
    pub path: String,
    /// Present in the store of one shard of an extraction (`scinterp extract --shard i/n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// BLAKE3 of the token store's `tokens.npy`.
    pub tokens_blake3: String,
}

impl StoreModelRecord {
    /// The model folder, when a folder made the store.
    pub fn folder(&self) -> Option<&ModelFolderRecord> {
        match self {
            StoreModelRecord::Folder(f) => Some(f),
            _ => None,
        }
    }
}

impl StoreSourceRecord {
    /// The token store, when one was the source.
    pub fn token_store(&self) -> Option<&TokenStoreRecord> {
        match self {
            StoreSourceRecord::TokenStore(t) => Some(t),
            _ => None,
        }
    }
}

/// Compact JSON, as messages about differing records show them.
fn write_json<T: Serialize>(value: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(&serde_json::to_string(value).map_err(|_| std::fmt::Error)?)
}

impl std::fmt::Display for StoreModelRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_json(self, f)
    }
}

impl std::fmt::Display for StoreSourceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_json(self, f)
    }
}

/// `manifest.json` of an activation store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreManifest {
    pub format: String,
    pub format_version: u32,
    /// What made the activations (model folder, kind, weights hash); compared on resume.
    pub model: StoreModelRecord,
    /// The cells (token store folder and its hashes); compared on resume.
    pub source: StoreSourceRecord,
    /// Hook names, one `<hook>.npy` each.
    pub hooks: Vec<String>,
    pub dtype: ActDtype,
    pub d_model: usize,
    /// Whether special-token positions (`<cls>`, `<eos>`) have rows; gene positions always do.
    pub include_special: bool,
    pub n_cells: usize,
    pub n_rows: usize,
    /// Token budget of a batch. Part of the settings: a resume restarts at the same batch boundaries,
    /// which is what makes its output identical to an uninterrupted run.
    pub max_batch_tokens: usize,
    /// Cells `0..cells_complete` (rows `0..rows_complete`) are on disk and fsynced.
    pub cells_complete: usize,
    pub rows_complete: usize,
    pub complete: bool,
    pub scinterp_version: String,
}

impl StoreManifest {
    /// Differences in the settings that decide the content (everything but progress and version).
    pub fn setting_differences(&self, other: &StoreManifest) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} (store) vs {b} (this command)"));
            }
        };
        check("model", self.model.to_string(), other.model.to_string());
        check("cells", self.source.to_string(), other.source.to_string());
        check("hooks", self.hooks.join(","), other.hooks.join(","));
        check("dtype", format!("{:?}", self.dtype), format!("{:?}", other.dtype));
        check("d_model", self.d_model.to_string(), other.d_model.to_string());
        check(
            "include_special",
            self.include_special.to_string(),
            other.include_special.to_string(),
        );
        check("n_rows", self.n_rows.to_string(), other.n_rows.to_string());
        check(
            "max_batch_tokens",
            self.max_batch_tokens.to_string(),
            other.max_batch_tokens.to_string(),
        );
        out
    }

    pub fn hook_file(&self, hook: &str) -> String {
        format!("{hook}.npy")
    }
}

/// What [`StoreWriter::open`] found.
pub enum OpenedStore {
    /// A writer positioned at `cells_complete` (0 for a new store).
    Writer(StoreWriter),
    /// The store already holds everything asked for.
    AlreadyComplete(StoreManifest),
}

/// Writes the rows of an activation store batch by batch, in place, resumably.
pub struct StoreWriter {
    dir: PathBuf,
    manifest: StoreManifest,
    /// One file per hook, in `manifest.hooks` order, with the byte offset of its data.
    files: Vec<(File, u64)>,
}

impl StoreWriter {
    /// Creates the store at `dir` (which must not exist, or be empty), or resumes the store there if
    /// it was made with the same settings. `rows` is the full row index `[n_rows]` of (cell, position,
    /// token); `manifest` holds the settings (its progress fields are ignored).
    pub fn open(
        dir: &Path,
        mut manifest: StoreManifest,
        rows: &[[i32; 3]],
    ) -> Result<OpenedStore, StoreError> {
        manifest.n_rows = rows.len();
        manifest.cells_complete = 0;
        manifest.rows_complete = 0;
        manifest.complete = false;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            return Self::resume(dir, manifest, rows);
        }
        if dir.exists() {
            if let Some(files) = killed_creation(dir)? {
                // Nothing of value: no row was checkpointed. Start over in the same folder.
                for f in &files {
                    std::fs::remove_file(f).map_err(|e| StoreError::io(f, "cannot remove", e))?;
                }
            }
            let empty = std::fs::read_dir(dir)
                .map_err(|e| StoreError::io(dir, "cannot list the folder", e))?
                .next()
                .is_none();
            if !empty {
                return Err(StoreError::new(
                    dir,
                    "exists and is not an activation store (no manifest.json); choose another --out or \
                     remove it",
                ));
            }
        }
        let created_dir = !dir.exists();
        match Self::create(dir, manifest, rows) {
            Ok(writer) => Ok(OpenedStore::Writer(writer)),
            Err(e) => {
                // Nothing of value was written yet: leave no half-made store behind.
                if created_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Err(e)
            }
        }
    }

    /// Creates the files in the order rows.npy, the hook files, manifest.json (see [`killed_creation`]
    /// for what a kill before the manifest leaves).
    fn create(dir: &Path, manifest: StoreManifest, rows: &[[i32; 3]]) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "cannot create the folder", e))?;
        let rows_path = dir.join(ROWS_FILE);
        write_npy(
            &rows_path,
            NpyDtype::I32,
            &[rows.len(), 3],
            bytemuck::cast_slice(rows),
        )
        .map_err(|e| StoreError::io(&rows_path, "cannot write the row index", e))?;
        let bytes_per_hook = rows.len() as u64 * (manifest.d_model * manifest.dtype.size_in_bytes()) as u64;
        let needed = bytes_per_hook * manifest.hooks.len() as u64;
        if let Some(free) = free_bytes(dir) {
            if free < needed {
                return Err(StoreError::new(
                    dir,
                    format!(
                        "needs {} for {} hooks × {} rows × {} values ({:?}) but the disk has {} free; free \
                         space, capture fewer hooks{}, or choose another --out",
                        human_bytes(needed),
                        manifest.hooks.len(),
                        rows.len(),
                        manifest.d_model,
                        manifest.dtype,
                        human_bytes(free),
                        // Advice that applies only to f32 stores.
                        if manifest.dtype == ActDtype::F32 {
                            ", use --dtype f16"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        let mut files = Vec::with_capacity(manifest.hooks.len());
        for hook in &manifest.hooks {
            let path = dir.join(manifest.hook_file(hook));
            let header = header_bytes(manifest.dtype.npy(), &[rows.len(), manifest.d_model]);
            let mut file = File::create(&path).map_err(|e| StoreError::io(&path, "cannot create", e))?;
            file.write_all(&header)
                .map_err(|e| StoreError::io(&path, "cannot write the header", e))?;
            reserve(&file, header.len() as u64 + bytes_per_hook)
                .map_err(|e| StoreError::io(&path, "cannot reserve space", e))?;
            files.push((file, header.len() as u64));
        }
        let writer = StoreWriter {
            dir: dir.to_path_buf(),
            manifest,
            files,
        };
        writer.save_manifest()?;
        Ok(writer)
    }

    fn resume(dir: &Path, wanted: StoreManifest, rows: &[[i32; 3]]) -> Result<OpenedStore, StoreError> {
        let found = read_manifest(dir)?;
        let differences = found.setting_differences(&wanted);
        if !differences.is_empty() {
            return Err(StoreError::new(
                dir,
                format!(
                    "holds an activation store made with other settings ({}); choose another --out, or remove \
                     it to start over",
                    differences.join("; ")
                ),
            ));
        }
        let rows_path = dir.join(ROWS_FILE);
        let (_, stored_rows) = read_npy_bytes(&rows_path).map_err(StoreError::from)?;
        if stored_rows != bytemuck::cast_slice::<_, u8>(rows) {
            return Err(StoreError::new(
                &rows_path,
                "the row index differs from the cells given (another token store?); choose another --out",
            ));
        }
        if found.complete {
            return Ok(OpenedStore::AlreadyComplete(found));
        }
        let mut files = Vec::with_capacity(found.hooks.len());
        for hook in &found.hooks {
            let path = dir.join(found.hook_file(hook));
            let header = read_header(&path).map_err(StoreError::from)?;
            let expected = header.data_offset as u64
                + (found.n_rows * found.d_model * found.dtype.size_in_bytes()) as u64;
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(&path, "cannot open for writing", e))?;
            let len = file
                .metadata()
                .map_err(|e| StoreError::io(&path, "cannot stat", e))?
                .len();
            if header.shape != [found.n_rows, found.d_model] || len != expected {
                return Err(StoreError::new(
                    &path,
                    "does not have the size its manifest announces (damaged store); remove the folder and \
                     extract again",
                ));
            }
            files.push((file, header.data_offset as u64));
        }
        Ok(OpenedStore::Writer(StoreWriter {
            dir: dir.to_path_buf(),
            manifest: found,
            files,
        }))
    }

    pub fn manifest(&self) -> &StoreManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes rows `first_row..` of every hook (`data[h]` holds the rows of hook `h`, encoded in the
    /// store's dtype) without advancing the manifest.
    pub fn write_rows(&mut self, first_row: usize, data: &[Vec<u8>]) -> Result<(), StoreError> {
        let row_bytes = (self.manifest.d_model * self.manifest.dtype.size_in_bytes()) as u64;
        for ((hook, (file, offset)), bytes) in self.manifest.hooks.iter().zip(&self.files).zip(data) {
            let path = self.dir.join(self.manifest.hook_file(hook));
            if !(bytes.len() as u64).is_multiple_of(row_bytes)
                || first_row as u64 + bytes.len() as u64 / row_bytes > self.manifest.n_rows as u64
            {
                return Err(StoreError::new(&path, "rows outside the store (internal error)"));
            }
            file.write_all_at(bytes, offset + first_row as u64 * row_bytes)
                .map_err(|e| StoreError::io(&path, "cannot write rows", e))?;
        }
        Ok(())
    }

    /// Makes the rows written so far durable and records `cells_complete` / `rows_complete`.
    pub fn checkpoint(&mut self, cells_complete: usize, rows_complete: usize) -> Result<(), StoreError> {
        for (hook, (file, _)) in self.manifest.hooks.iter().zip(&self.files) {
            file.sync_data().map_err(|e| {
                StoreError::io(&self.dir.join(self.manifest.hook_file(hook)), "cannot sync", e)
            })?;
        }
        self.manifest.cells_complete = cells_complete;
        self.manifest.rows_complete = rows_complete;
        self.manifest.complete = cells_complete == self.manifest.n_cells;
        self.save_manifest()
    }

    fn save_manifest(&self) -> Result<(), StoreError> {
        let path = self.dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| StoreError::new(&path, format!("cannot serialise: {e}")))?;
        crate::formats::atomic_write(&path, text.as_bytes())
            .map_err(|e| StoreError::io(&e.path, e.action, e.io))
    }
}

/// The files of `dir` when it holds exactly what a creation killed before its first manifest leaves
/// (`rows.npy`, hook files `<hook>.npy`, the manifest's temporary file, nothing else, no manifest.json);
/// `None` for anything else, which is never touched.
fn killed_creation(dir: &Path) -> Result<Option<Vec<PathBuf>>, StoreError> {
    if dir.join(MANIFEST_FILE).exists() {
        return Ok(None);
    }
    let manifest_tmp = crate::formats::atomic::temporary_path(&dir.join(MANIFEST_FILE));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, "cannot list the folder", e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, "cannot list the folder", e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name == ROWS_FILE
            || path == manifest_tmp
            || name
                .strip_suffix(".npy")
                .is_some_and(|hook| crate::hooks::HookPoint::parse(hook).is_ok());
        if !ours || !entry.file_type().is_ok_and(|t| t.is_file()) {
            return Ok(None);
        }
        files.push(path);
    }
    Ok((!files.is_empty()).then_some(files))
}

pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

/// Free bytes on the file system holding `dir`, when the OS tells.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Gives `file` its final length with the blocks allocated, so that a full disk shows now.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; posix_fallocate reads only its integer arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: a sparse file of the right length.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// `--overwrite` of the commands that resume a store in place (`extract`, `extract merge`): deletes the
/// activation store at `dir`, complete or partial, so that the run starts afresh. Only a folder whose
/// `manifest.json` is an activation store's is deleted (nothing else is touched: a wrong `--out` is an
/// error, not a loss); a missing `dir` is nothing to do.
pub fn remove_store_for_overwrite(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        return Ok(());
    }
    read_manifest(dir).map_err(|e| {
        StoreError::new(
            dir,
            format!("--overwrite deletes only an activation store, and this is not one ({e}); choose another --out"),
        )
    })?;
    std::fs::remove_dir_all(dir).map_err(|e| StoreError::io(dir, "cannot remove (--overwrite)", e))
}

/// Reads and checks `manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<StoreManifest, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        StoreError::new(
            &path,
            format!(
                "cannot read ({e}); is {} an activation store made by `scinterp extract`?",
                dir.display()
            ),
        )
    })?;
    let manifest: StoreManifest = serde_json::from_str(&text)
        .map_err(|e| StoreError::new(&path, format!("not a valid activation-store manifest: {e}")))?;
    if manifest.format != STORE_FORMAT {
        return Err(StoreError::new(
            &path,
            format!("format is `{}`, expected `{STORE_FORMAT}`", manifest.format),
        ));
    }
    Ok(manifest)
}

/// A complete activation store opened for reading.
#[derive(Debug)]
pub struct ActStore {
    pub dir: PathBuf,
    pub manifest: StoreManifest,
}

impl ActStore {
    /// Opens a store; an unfinished one is refused with the way to finish it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let manifest = read_manifest(dir)?;
        if !manifest.complete {
            return Err(StoreError::new(
                dir,
                format!(
                    "the store is unfinished ({} of {} cells); rerun the `scinterp extract` command that made \
                     it to finish it",
                    manifest.cells_complete, manifest.n_cells
                ),
            ));
        }
        Ok(ActStore {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The row index: (cell, position, token) per row.
    pub fn rows(&self) -> Result<Vec<[i32; 3]>, StoreError> {
        let path = self.dir.join(ROWS_FILE);
        let (header, bytes) = read_npy_bytes(&path).map_err(StoreError::from)?;
        if header.dtype != NpyDtype::I32 || header.shape != [self.manifest.n_rows, 3] {
            return Err(StoreError::new(
                &path,
                format!(
                    "is {:?} {:?}, expected int32 [{}, 3]",
                    header.dtype, header.shape, self.manifest.n_rows
                ),
            ));
        }
        let rows: Vec<[i32; 3]> = bytemuck::pod_collect_to_vec(&bytes);
        // A damaged index would otherwise report cells (or genes) that do not exist.
        let n_cells = self.manifest.n_cells;
        if let Some((r, row)) = rows
            .iter()
            .enumerate()
            .find(|(_, row)| row[0] < 0 || row[0] as usize >= n_cells || row[1] < 0 || row[2] < 0)
        {
            return Err(StoreError::new(
                &path,
                format!(
                    "row {r} is (cell {}, position {}, token {}), but the store has {n_cells} cells and \
                     positions and tokens are never negative: the row index is damaged; extract the store again",
                    row[0], row[1], row[2]
                ),
            ));
        }
        Ok(rows)
    }

    /// The memory-mapped activations of `hook`.
    pub fn hook(&self, hook: &str) -> Result<HookArray, StoreError> {
        if !self.manifest.hooks.iter().any(|h| h == hook) {
            return Err(StoreError::new(
                &self.dir,
                format!(
                    "has no hook `{hook}`; it holds {}",
                    self.manifest.hooks.join(", ")
                ),
            ));
        }
        HookArray::open(
            &self.dir.join(self.manifest.hook_file(hook)),
            self.manifest.n_rows,
            self.manifest.d_model,
            self.manifest.dtype,
        )
    }
}

/// One hook's `[n_rows, d]` activations, memory-mapped.
pub struct HookArray {
    path: PathBuf,
    mmap: Mmap,
    data_offset: usize,
    n_rows: usize,
    d: usize,
    dtype: ActDtype,
}

impl HookArray {
    pub fn open(path: &Path, n_rows: usize, d: usize, dtype: ActDtype) -> Result<Self, StoreError> {
        let header = read_header(path).map_err(StoreError::from)?;
        if header.dtype != dtype.npy() || header.shape != [n_rows, d] {
            return Err(StoreError::new(
                path,
                format!(
                    "is {:?} {:?}, but the manifest says {dtype:?} [{n_rows}, {d}]",
                    header.dtype, header.shape
                ),
            ));
        }
        let file = File::open(path).map_err(|e| StoreError::io(path, "cannot open", e))?;
        // SAFETY: the store is append-only and not modified while it is read; a concurrent truncation
        // by another program is outside what any reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| StoreError::io(path, "cannot memory-map", e))?;
        let need = header.data_offset + n_rows * d * dtype.size_in_bytes();
        if mmap.len() != need {
            return Err(StoreError::new(
                path,
                format!(
                    "holds {} bytes but should hold {need} (truncated or damaged); extract the store again",
                    mmap.len()
                ),
            ));
        }
        Ok(HookArray {
            path: path.to_path_buf(),
            mmap,
            data_offset: header.data_offset,
            n_rows,
            d,
            dtype,
        })
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn d(&self) -> usize {
        self.d
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored bytes of rows `start..start + n` (the store's dtype, little-endian), for copying
    /// rows between stores without converting them.
    pub fn raw_rows(&self, start: usize, n: usize) -> &[u8] {
        assert!(
            start + n <= self.n_rows,
            "rows {start}..{} of {}",
            start + n,
            self.n_rows
        );
        let row = self.d * self.dtype.size_in_bytes();
        &self.mmap[self.data_offset + start * row..][..n * row]
    }

    /// Rows `start..start + out.len() / d` as f32 into `out`.
    pub fn read_rows(&self, start: usize, out: &mut [f32]) {
        let n = out.len() / self.d;
        assert!(
            start + n <= self.n_rows,
            "rows {start}..{} of {}",
            start + n,
            self.n_rows
        );
        let size = self.dtype.size_in_bytes();
        let bytes = &self.mmap[self.data_offset + start * self.d * size..][..n * self.d * size];
        match self.dtype {
            ActDtype::F32 => out.copy_from_slice(bytemuck::cast_slice(bytes)),
            ActDtype::F16 => bytemuck::cast_slice::<u8, f16>(bytes).convert_to_f32_slice(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad `.npy` in a store is named once, with what is wrong.
    #[test]
    fn an_npy_error_names_its_file_once() {
        let dir = std::env::temp_dir().join(format!("scinterp-npy-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blocks.0.hook_resid_post.npy");
        std::fs::write(&path, b"\x93NUMPY\x01\x00").unwrap();
        let err = StoreError::from(read_header(&path).unwrap_err());
        let msg = err.to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(msg.matches("blocks.0.hook_resid_post.npy").count(), 1, "{msg}");
        assert!(msg.contains("truncated") || msg.contains("too short"), "{msg}");
    }

    /// Manifests as the untyped records wrote them (a model folder, a shard, `sae synth`, another
    /// tool's) read into the typed records and write back byte for byte, each into its own variant.
    #[test]
    fn typed_records_keep_the_bytes_of_every_manifest_kind() {
        let tail = r#"  "hooks": [
    "blocks.0.hook_resid_post"
  ],
  "dtype": "f16",
  "d_model": 128,
  "include_special": false,
  "n_cells": 700,
  "n_rows": 165193,
  "max_batch_tokens": 16384,
  "cells_complete": 700,
  "rows_complete": 165193,
  "complete": true,
  "scinterp_version": "0.1.0"
}"#;
        let folder = r#"  "model": {
    "kind": "geneformer",
    "path": "/m",
    "weights": "/m/model.safetensors",
    "weights_blake3": "a9"
  },
"#;
        let shard = r#"  "source": {
    "offsets_blake3": "5f",
    "path": "/t",
    "shard": {
      "count": 4,
      "end_cell": 350,
      "first_cell": 175,
      "index": 1,
      "total_cells": 700
    },
    "tokens_blake3": "77"
  },
"#;
        let whole = r#"  "source": {
    "offsets_blake3": "5f",
    "path": "/t",
    "tokens_blake3": "77"
  },
"#;
        let synth_model = r#"  "model": {
    "synthetic": {
      "active": 4,
      "atoms": 64,
      "d": 16,
      "noise": 0.05,
      "seed": 0
    }
  },
"#;
        let synth_source = r#"  "source": {
    "cell_rows": 100,
    "synthetic_rows": 1000
  },
"#;
        let other_model = r#"  "model": {
    "kind": "synthetic",
    "maker": "bench/python/sae_fake_store.py"
  },
"#;
        let other_source = r#"  "source": {
    "synthetic": true
  },
"#;
        let head = "{\n  \"format\": \"scinterp-activation-store\",\n  \"format_version\": 1,\n";
        for (model, source, kinds) in [
            (folder, whole, ("folder", "token store")),
            (folder, shard, ("folder", "shard")),
            (synth_model, synth_source, ("synthetic", "synthetic")),
            (other_model, other_source, ("other", "other")),
        ] {
            let text = format!("{head}{model}{source}{tail}");
            let m: StoreManifest = serde_json::from_str(&text).unwrap();
            let got = (
                match &m.model {
                    StoreModelRecord::Folder(_) => "folder",
                    StoreModelRecord::Synthetic { .. } => "synthetic",
                    StoreModelRecord::Other(_) => "other",
                },
                match &m.source {
                    StoreSourceRecord::TokenStore(t) if t.shard.is_some() => "shard",
                    StoreSourceRecord::TokenStore(_) => "token store",
                    StoreSourceRecord::Synthetic { .. } => "synthetic",
                    StoreSourceRecord::Other(_) => "other",
                },
            );
            assert_eq!(got, kinds);
            assert_eq!(serde_json::to_string_pretty(&m).unwrap(), text);
        }
    }

    fn manifest(hooks: &[&str], n_cells: usize) -> StoreManifest {
        StoreManifest {
            format: STORE_FORMAT.into(),
            format_version: 1,
            model: StoreModelRecord::Other(serde_json::json!({"name": "test"})),
            source: StoreSourceRecord::Other(serde_json::json!({"cells": n_cells})),
            hooks: hooks.iter().map(|s| s.to_string()).collect(),
            dtype: ActDtype::F16,
            d_model: 4,
            include_special: false,
            n_cells,
            n_rows: 0,
            max_batch_tokens: 8,
            cells_complete: 0,
            rows_complete: 0,
            complete: false,
            scinterp_version: "test".into(),
        }
    }

    #[test]
    fn writes_resumes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("store");
        let rows: Vec<[i32; 3]> = (0..6).map(|r| [r / 3, r % 3, 10 + r]).collect();
        let m = manifest(&["hook_embed"], 2);
        let OpenedStore::Writer(mut w) = StoreWriter::open(&out, m.clone(), &rows).unwrap() else {
            panic!("new store")
        };
        let first: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        w.write_rows(0, &[ActDtype::F16.encode(&first)]).unwrap();
        w.checkpoint(1, 3).unwrap();
        drop(w);
        // An unfinished store is refused by readers and resumed by writers.
        assert!(ActStore::open(&out).unwrap_err().reason.contains("unfinished"));
        let OpenedStore::Writer(mut w) = StoreWriter::open(&out, m.clone(), &rows).unwrap() else {
            panic!("resume")
        };
        assert_eq!(w.manifest().cells_complete, 1);
        let second: Vec<f32> = (12..24).map(|v| v as f32 * 0.5).collect();
        w.write_rows(3, &[ActDtype::F16.encode(&second)]).unwrap();
        w.checkpoint(2, 6).unwrap();
        assert!(matches!(
            StoreWriter::open(&out, m.clone(), &rows).unwrap(),
            OpenedStore::AlreadyComplete(_)
        ));

        let store = ActStore::open(&out).unwrap();
        assert_eq!(store.rows().unwrap(), rows);
        let hook = store.hook("hook_embed").unwrap();
        let mut all = vec![0.0f32; 24];
        hook.read_rows(0, &mut all);
        let want: Vec<f32> = first.iter().chain(&second).copied().collect();
        assert_eq!(all, want);
        assert!(store.hook("blocks.0.hook_resid_post").is_err());

        // Other settings: refused, naming the difference; nothing is changed.
        let mut other = m.clone();
        other.dtype = ActDtype::F32;
        let err = StoreWriter::open(&out, other, &rows).err().unwrap();
        assert!(err.reason.contains("dtype"), "{}", err.reason);
        assert!(ActStore::open(&out).is_ok());

        // A truncated hook file is found.
        let path = out.join("hook_embed.npy");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert!(store
            .hook("hook_embed")
            .err()
            .unwrap()
            .reason
            .contains("truncated"));
    }

    /// A kill between the folder's creation and the first manifest leaves rows.npy and some hook files
    /// without manifest.json: the rerun starts over there (it refused the folder) and writes the store
    /// an uninterrupted run writes.
    #[test]
    fn a_creation_killed_before_its_manifest_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<[i32; 3]> = (0..4).map(|r| [r / 2, r % 2, 10 + r]).collect();
        let m = manifest(&["hook_embed", "blocks.0.hook_resid_post"], 2);
        let data: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let write = |out: &Path| {
            let OpenedStore::Writer(mut w) = StoreWriter::open(out, m.clone(), &rows).unwrap() else {
                panic!("new store")
            };
            let bytes = ActDtype::F16.encode(&data);
            w.write_rows(0, &[bytes.clone(), bytes]).unwrap();
            w.checkpoint(2, 4).unwrap();
        };
        let reference = dir.path().join("reference");
        write(&reference);
        let killed = dir.path().join("killed");
        std::fs::create_dir(&killed).unwrap();
        std::fs::copy(reference.join(ROWS_FILE), killed.join(ROWS_FILE)).unwrap();
        std::fs::write(killed.join("hook_embed.npy"), b"\x93NUMPY").unwrap();
        write(&killed);
        for name in [
            ROWS_FILE,
            MANIFEST_FILE,
            "hook_embed.npy",
            "blocks.0.hook_resid_post.npy",
        ] {
            assert_eq!(
                std::fs::read(killed.join(name)).unwrap(),
                std::fs::read(reference.join(name)).unwrap(),
                "{name}"
            );
        }
        // Anything else beside those files: not a killed creation, refused and left alone.
        let mixed = dir.path().join("mixed");
        std::fs::create_dir(&mixed).unwrap();
        std::fs::write(mixed.join(ROWS_FILE), b"x").unwrap();
        std::fs::write(mixed.join("notes.npy"), b"keep").unwrap();
        let err = StoreWriter::open(&mixed, m.clone(), &rows).err().unwrap();
        assert!(err.reason.contains("not an activation store"), "{}", err.reason);
        assert_eq!(std::fs::read(mixed.join(ROWS_FILE)).unwrap(), b"x");
    }

    #[test]
    fn refuses_a_folder_that_is_not_a_store_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        let rows = vec![[0, 0, 5]];
        let err = StoreWriter::open(dir.path(), manifest(&["hook_embed"], 1), &rows)
            .err()
            .unwrap();
        assert!(err.reason.contains("not an activation store"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "keep me"
        );
    }
}
