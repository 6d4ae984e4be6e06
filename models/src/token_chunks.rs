//! Checkpoints of an interrupted tokenize run: tokenized chunks of cells kept in a `<store>.partial` folder
//! beside the output, so that a rerun of the same command resumes instead of starting over.
//!
//! The folder holds
//! - `resume.json`: the run's key, a JSON object naming everything the tokens depend on (tokenizer,
//!   options, hashes of the input and dictionaries, chunk size, scinterp version). A rerun resumes only
//!   when its key is equal; otherwise the folder is discarded and the run starts over.
//! - `chunk-NNNNNNNN.bin`: one per completed chunk of cells `[first, first + n)`, written to a temporary
//!   name, fsynced and renamed, so a file under its final name is always whole. Layout (little-endian):
//!   magic `SCTOKCK1`; u64 `first`, `n`, `n_kept`, `n_dropped`, `n_tokens`, `has_values`, `n_sampled`,
//!   `n_random_bins`; u64 × `n_kept` kept cells; u64 × `n_dropped` dropped cells; u32 × `n_kept`
//!   sequence lengths; u32 × `n_tokens` tokens; f32 × `n_tokens` values when `has_values`; then the
//!   BLAKE3 hash (32 bytes) of everything before it. A chunk that does not verify is discarded, with a
//!   warning naming its file, and its cells are tokenized again (the result is the same).

use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SCTOKCK1";

/// The tokens of one chunk of consecutive cells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenChunk {
    /// First cell (index in the input) of the chunk.
    pub first: usize,
    /// Cells in the chunk (kept + dropped).
    pub n_cells: usize,
    /// Input index of each kept cell, ascending.
    pub kept: Vec<usize>,
    /// Input indices of the cells without any token, ascending.
    pub dropped: Vec<usize>,
    /// One sequence per kept cell.
    pub tokens: Vec<Vec<u32>>,
    /// scGPT's values, one sequence per kept cell.
    pub values: Option<Vec<Vec<f32>>>,
    /// scGPT: kept cells subsampled to the maximum length.
    pub n_sampled: usize,
    /// scGPT: values whose bin was drawn at random.
    pub n_random_bins: usize,
}

/// The partial folder of an output store and what is in it.
#[derive(Debug)]
pub struct PartialDir {
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    #[error("cannot write the checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn werr(path: &Path) -> impl FnOnce(std::io::Error) -> PartialError + '_ {
    move |source| PartialError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl PartialDir {
    /// The partial folder of the store `out`: `<out>.partial` beside it.
    pub fn for_output(out: &Path) -> Self {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        PartialDir {
            dir: out.with_file_name(format!("{name}.partial")),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("resume.json").is_file()
    }

    /// The key of the interrupted run, if the folder has a readable one.
    pub fn key(&self) -> Option<serde_json::Value> {
        let text = std::fs::read(self.dir.join("resume.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the folder (and everything in it); a missing folder is fine.
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Starts a fresh folder for a run with `key` (anything already there is removed).
    pub fn start(&self, key: &serde_json::Value) -> Result<(), PartialError> {
        self.remove().map_err(werr(&self.dir))?;
        std::fs::create_dir_all(&self.dir).map_err(werr(&self.dir))?;
        let text = serde_json::to_vec_pretty(key).unwrap_or_default();
        write_atomic(&self.dir.join("resume.json"), &text)
    }

    fn chunk_path(&self, first: usize) -> PathBuf {
        self.dir.join(format!("chunk-{first:012}.bin"))
    }

    /// Saves a chunk (atomically: temporary name, fsync, rename).
    pub fn save(&self, chunk: &TokenChunk) -> Result<(), PartialError> {
        write_atomic(&self.chunk_path(chunk.first), &encode(chunk))
    }

    /// The saved chunk starting at `first` with `n_cells` cells, if there is a whole, consistent one.
    pub fn load(&self, first: usize, n_cells: usize, has_values: bool) -> Option<TokenChunk> {
        match self.check(first, n_cells, has_values) {
            Saved::Chunk(c) => Some(c),
            Saved::Missing | Saved::Damaged { .. } => None,
        }
    }

    /// What the folder holds for the chunk starting at `first` with `n_cells` cells: nothing, a whole
    /// chunk that verifies, or a file that does not (named, with why), which the caller discards.
    pub fn check(&self, first: usize, n_cells: usize, has_values: bool) -> Saved {
        let path = self.chunk_path(first);
        let Ok(bytes) = std::fs::read(&path) else {
            return Saved::Missing;
        };
        let damaged = |reason: &'static str| Saved::Damaged {
            path: path.clone(),
            reason,
        };
        let Some(chunk) = decode(&bytes) else {
            return damaged("its BLAKE3 checksum does not match its contents (damaged or truncated)");
        };
        let consistent = chunk.first == first
            && chunk.n_cells == n_cells
            && chunk.values.is_some() == has_values
            && chunk.kept.len() + chunk.dropped.len() == n_cells
            && chunk
                .kept
                .iter()
                .chain(&chunk.dropped)
                .all(|&c| (first..first + n_cells).contains(&c));
        if consistent {
            Saved::Chunk(chunk)
        } else {
            damaged("it verifies but holds other cells than its name says")
        }
    }

    /// Removes the file of the chunk starting at `first` (a damaged one, so it is not read again).
    pub fn discard(&self, first: usize) -> std::io::Result<()> {
        match std::fs::remove_file(self.chunk_path(first)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A saved chunk as [`PartialDir::check`] finds it.
#[derive(Debug, PartialEq)]
pub enum Saved {
    Missing,
    Chunk(TokenChunk),
    /// A file that does not verify: `path` and why.
    Damaged {
        path: PathBuf,
        reason: &'static str,
    },
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PartialError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr(path))
}

fn encode(c: &TokenChunk) -> Vec<u8> {
    let n_tokens: usize = c.tokens.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(128 + 16 * c.n_cells + 8 * n_tokens);
    out.extend_from_slice(MAGIC);
    for v in [
        c.first,
        c.n_cells,
        c.kept.len(),
        c.dropped.len(),
        n_tokens,
        usize::from(c.values.is_some()),
        c.n_sampled,
        c.n_random_bins,
    ] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    for &k in c.kept.iter().chain(&c.dropped) {
        out.extend_from_slice(&(k as u64).to_le_bytes());
    }
    for t in &c.tokens {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    }
    for t in c.tokens.iter().flatten() {
        out.extend_from_slice(&t.to_le_bytes());
    }
    if let Some(values) = &c.values {
        for v in values.iter().flatten() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Reads little-endian words off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u64(&mut self) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(self.take::<8>()?)).ok()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take::<4>()?))
    }
}

fn decode(bytes: &[u8]) -> Option<TokenChunk> {
    let (body, hash) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != hash || !body.starts_with(MAGIC) {
        return None;
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let [first, n_cells, n_kept, n_dropped, n_tokens, has_values, n_sampled, n_random_bins] = [
        r.u64()?,
        r.u64()?,
        r.u64()?,
        r.u64()?,
        r.u64()?,
        r.u64()?,
        r.u64()?,
        r.u64()?,
    ];
    // The sizes must account for the body exactly before anything is allocated from them.
    let expected = (n_kept.checked_add(n_dropped)?)
        .checked_mul(8)?
        .checked_add(n_kept.checked_mul(4)?)?
        .checked_add(n_tokens.checked_mul(if has_values == 1 { 8 } else { 4 })?)?;
    if r.0.len() != expected || has_values > 1 {
        return None;
    }
    let kept = (0..n_kept).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
    let dropped = (0..n_dropped).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
    let lens = (0..n_kept).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
    if lens.iter().map(|&l| l as usize).sum::<usize>() != n_tokens {
        return None;
    }
    let mut tokens = Vec::with_capacity(n_kept);
    for &l in &lens {
        tokens.push((0..l).map(|_| r.u32()).collect::<Option<Vec<_>>>()?);
    }
    let values = if has_values == 1 {
        let mut values = Vec::with_capacity(n_kept);
        for &l in &lens {
            values.push(
                (0..l)
                    .map(|_| r.u32().map(f32::from_bits))
                    .collect::<Option<Vec<_>>>()?,
            );
        }
        Some(values)
    } else {
        None
    };
    Some(TokenChunk {
        first,
        n_cells,
        kept,
        dropped,
        tokens,
        values,
        n_sampled,
        n_random_bins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(values: bool) -> TokenChunk {
        TokenChunk {
            first: 4,
            n_cells: 3,
            kept: vec![4, 6],
            dropped: vec![5],
            tokens: vec![vec![2, 10, 3], vec![2, 3]],
            values: values.then(|| vec![vec![-2.0, 1.5, 7.0], vec![-2.0, 0.25]]),
            n_sampled: 1,
            n_random_bins: 9,
        }
    }

    #[test]
    fn chunks_round_trip_and_damaged_ones_are_not_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let p = PartialDir::for_output(&tmp.path().join("store"));
        assert_eq!(p.dir, tmp.path().join("store.partial"));
        assert!(!p.exists());
        let key = serde_json::json!({ "tokenizer": "geneformer", "n": 1 });
        p.start(&key).unwrap();
        assert!(p.exists());
        assert_eq!(p.key(), Some(key));
        for values in [false, true] {
            let c = chunk(values);
            p.save(&c).unwrap();
            assert_eq!(p.load(4, 3, values), Some(c.clone()));
            // Wrong expectations: another range or kind of chunk.
            assert_eq!(p.load(4, 4, values), None);
            assert_eq!(p.load(4, 3, !values), None);
            assert_eq!(p.load(0, 3, values), None);
            // A flipped bit in the saved file is found and named; discarding it leaves the chunk missing.
            let path = p.chunk_path(4);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[40] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            match p.check(4, 3, values) {
                Saved::Damaged { path: named, reason } => {
                    assert_eq!(named, path);
                    assert!(reason.contains("checksum"), "{reason}");
                }
                other => panic!("a flipped bit was not found: {other:?}"),
            }
            assert_eq!(p.load(4, 3, values), None);
            p.discard(4).unwrap();
            assert_eq!(p.check(4, 3, values), Saved::Missing);
            p.save(&c).unwrap();
            // Every truncation and a flipped byte anywhere are refused.
            let bytes = encode(&c);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x10;
                assert!(decode(&b).is_none(), "flip at {i}");
            }
        }
        p.remove().unwrap();
        assert!(!p.dir.exists());
        p.remove().unwrap();
    }
}
