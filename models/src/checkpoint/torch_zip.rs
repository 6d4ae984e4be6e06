//! PyTorch zip checkpoints (`torch.save` since 1.6: `pytorch_model.bin`, `best_model.pt`).
//!
//! The archive holds `<root>/data.pkl`, a pickle describing the state dict whose tensors name
//! storages by key, and one stored (uncompressed) record `<root>/data/<key>` per storage. The pickle
//! is decoded by our code-free [`pickle`](super::pickle) reader; the storages are never copied: each
//! tensor is recorded as a view (offset, shape, strides) into its record's bytes inside the map.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, PickleErrorKind, TensorRef, Value};
use super::{check_view_bounds, CheckpointError, DType, TensorEntry};

/// `data.pkl` and `byteorder` are read into memory. A state dict pickle is a few bytes per tensor
/// field (a 10k-tensor model needs about 2 MB), so anything beyond this is not one.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Where one storage record lies in the file.
#[derive(Clone, Copy)]
struct StorageSpan {
    dtype: DType,
    start: usize,
    len: usize,
}

/// Lists the tensors of a PyTorch zip checkpoint as views into `map` (the whole file).
pub(crate) fn read_tensors(
    path: &Path,
    map: &Mmap,
) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
    let bytes: &[u8] = map;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| CheckpointError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };

    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        corrupt(format!(
            "it starts like a PyTorch zip checkpoint but the archive cannot be read ({e}); the file \
             is probably truncated or damaged, re-download or re-save it"
        ))
    })?;

    // Index the entries by name. torch writes one top-level folder whose name varies (the file
    // stem, or `archive`), so the root is found from `<root>/data.pkl`.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut roots = Vec::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| corrupt(format!("zip entry {i} cannot be read: {e}")))?;
        let Ok(name) = entry.name() else {
            continue; // a non-UTF-8 name is nothing torch writes; it cannot be ours
        };
        let name = name.into_owned();
        if let Some(root) = name.strip_suffix("/data.pkl") {
            if !root.is_empty() && !root.contains('/') {
                roots.push(root.to_string());
            }
        }
        by_name.insert(name, i);
    }
    let root = match roots.as_slice() {
        [root] => root.clone(),
        [] => {
            return Err(corrupt(
                "it is a zip archive without a `<folder>/data.pkl` entry, so not a PyTorch \
                 checkpoint written by torch.save"
                    .into(),
            ))
        }
        _ => {
            return Err(unsupported(format!(
                "the zip holds several PyTorch archives ({}); save one state dict per file",
                roots.join(", ")
            )))
        }
    };

    // Storages are raw little-endian bytes; a big-endian writer records that here.
    if let Some(&i) = by_name.get(&format!("{root}/byteorder")) {
        let order = read_small_entry(&mut archive, i, path)?;
        if order.trim_ascii() != b"little" {
            return Err(unsupported(format!(
                "the checkpoint was saved with byte order `{}`; only little-endian checkpoints \
                 are supported (re-save it on a little-endian machine)",
                String::from_utf8_lossy(order.trim_ascii())
            )));
        }
    }

    let pkl_index = by_name
        .get(&format!("{root}/data.pkl"))
        .copied()
        .ok_or_else(|| corrupt(format!("`{root}/data.pkl` vanished from the index")))?;
    let pkl = read_small_entry(&mut archive, pkl_index, path)?;
    let top = pickle::load(&pkl).map_err(|e| match &e.kind {
        PickleErrorKind::RefusedGlobal(_) | PickleErrorKind::UnsupportedOpcode(_) => unsupported(format!(
            "`{root}/data.pkl`: {e}. If you trust the file, load it in Python and re-save only \
                 the weights (`torch.save(model.state_dict(), f)`) or convert them to safetensors"
        )),
        _ => corrupt(format!("`{root}/data.pkl` cannot be decoded: {e}")),
    })?;

    let Value::Dict(items) = top else {
        return Err(unsupported(format!(
            "`{root}/data.pkl` holds a {}, not a state dict (a dict of name -> tensor); save \
             `model.state_dict()` instead",
            top.kind()
        )));
    };

    // Split the top level into tensors and everything else.
    let mut tensors: Vec<(String, TensorRef)> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for (key, value) in items {
        let key = match key {
            Value::String(s) => s,
            other => {
                return Err(unsupported(format!(
                    "state dict key is a {}, expected a string",
                    other.kind()
                )))
            }
        };
        match value {
            Value::Tensor(t) => tensors.push((key, t)),
            other => others.push(format!("{key} ({})", other.kind())),
        }
    }
    if tensors.is_empty() && !others.is_empty() {
        return Err(unsupported(format!(
            "this is not a plain state dict: its top level has no tensors but the keys {}. It looks \
             like a training checkpoint; extract the weights in Python, e.g. \
             `torch.save(torch.load(f)['model'], 'weights.pt')` with the key that holds them",
            list_keys(&others)
        )));
    }
    if !others.is_empty() {
        tracing::warn!(
            path = %path.display(),
            "ignoring non-tensor entries in the state dict: {}",
            list_keys(&others)
        );
    }

    // Resolve each storage once, so that tensors sharing a storage (tied weights) share the span.
    let mut spans: HashMap<String, StorageSpan> = HashMap::new();
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let key = &t.storage.key;
        let span = match spans.get(key) {
            Some(span) => {
                if span.dtype != t.dtype() {
                    return Err(corrupt(format!(
                        "storage `{key}` is used as both {} and {} (tensor `{name}`)",
                        span.dtype,
                        t.dtype()
                    )));
                }
                *span
            }
            None => {
                let span = storage_span(&mut archive, &by_name, &root, &t, bytes.len(), path)?;
                spans.insert(key.clone(), span);
                span
            }
        };
        // Our own checked extent first: check_view_bounds assumes it does not overflow, and it
        // lets an empty view start anywhere, while readers slice from the offset even then.
        match view_end(&t) {
            Some(end) if end <= span.len => {}
            Some(end) => {
                return Err(corrupt(format!(
                    "tensor `{name}` (storage `{key}`) needs {end} bytes but its storage holds {}",
                    span.len
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "tensor `{name}` has sizes {:?}, strides {:?} and offset {} whose extent \
                     overflows",
                    t.shape, t.stride, t.offset
                )))
            }
        }
        let entry = TensorEntry {
            dtype: span.dtype,
            shape: t.shape,
            strides: t.stride,
            offset: t.offset,
            storage_start: span.start,
            storage_len: span.len,
        };
        check_view_bounds(&entry)
            .map_err(|reason| corrupt(format!("tensor `{name}` (storage `{key}`): {reason}")))?;
        out.insert(name, entry);
    }
    Ok(out)
}

/// One past the last byte a view touches (its offset for an empty view), or `None` on overflow.
fn view_end(t: &TensorRef) -> Option<usize> {
    let esize = t.dtype().size_in_bytes();
    let numel = t.shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))?;
    if numel == 0 {
        return t.offset.checked_mul(esize);
    }
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(0usize, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?))?;
    t.offset.checked_add(last)?.checked_add(1)?.checked_mul(esize)
}

/// Finds `<root>/data/<key>` and checks it is a stored record large enough for the storage.
fn storage_span(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    by_name: &HashMap<String, usize>,
    root: &str,
    t: &TensorRef,
    file_len: usize,
    path: &Path,
) -> Result<StorageSpan, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let key = &t.storage.key;
    let record = format!("{root}/data/{key}");
    let &index = by_name.get(&record).ok_or_else(|| {
        corrupt(format!(
            "data.pkl refers to storage `{key}` but the archive has no `{record}` entry"
        ))
    })?;
    let entry = archive
        .by_index_raw(index)
        .map_err(|e| corrupt(format!("`{record}` cannot be read: {e}")))?;
    check_stored(&entry, &record, path)?;
    let start = entry
        .data_start()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| corrupt(format!("`{record}` has no readable data offset")))?;
    let size = usize::try_from(entry.compressed_size())
        .map_err(|_| corrupt(format!("`{record}` is larger than memory")))?;
    if start.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(corrupt(format!(
            "`{record}` runs past the end of the file; it is truncated, re-download it"
        )));
    }
    let dtype = t.dtype();
    let needed = t
        .storage
        .numel
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| corrupt(format!("storage `{key}` size overflows")))?;
    if size < needed {
        return Err(corrupt(format!(
            "storage `{key}` should hold {} {dtype} elements ({needed} bytes) but `{record}` has \
             {size} bytes",
            t.storage.numel
        )));
    }
    // Views are bounds-checked against the storage as torch declared it.
    Ok(StorageSpan {
        dtype,
        start,
        len: needed,
    })
}

/// Storages are viewed in place, which only works for uncompressed, unencrypted records.
fn check_stored<R: Read>(
    entry: &zip::read::ZipFile<'_, R>,
    name: &str,
    path: &Path,
) -> Result<(), CheckpointError> {
    if entry.encrypted() {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("zip entry `{name}` is encrypted"),
        });
    }
    if entry.compression() != CompressionMethod::Stored {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "zip entry `{name}` is compressed ({}); torch.save stores entries uncompressed, \
                 so the file was probably re-zipped. Re-save it with torch.save or convert it \
                 to safetensors",
                entry.compression()
            ),
        });
    }
    Ok(())
}

/// Reads a small stored entry (data.pkl, byteorder) into memory, checking its CRC.
fn read_small_entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    index: usize,
    path: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut entry = archive
        .by_index(index)
        .map_err(|e| corrupt(format!("zip entry {index} cannot be read: {e}")))?;
    let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
    check_stored(&entry, &name, path)?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "`{name}` is {} bytes; a state dict's pickle is far smaller",
                entry.size()
            ),
        });
    }
    let mut buf = Vec::new();
    entry
        .by_ref()
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| {
            corrupt(format!(
                "`{name}` cannot be read ({e}); the file is damaged, re-download it"
            ))
        })?;
    Ok(buf)
}

fn list_keys(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::Arc;

    use memmap2::MmapMut;
    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    use super::super::Checkpoint;
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/pickle")
            .join(name)
    }

    fn open_err(path: &Path) -> CheckpointError {
        match Checkpoint::open(path) {
            Ok(c) => panic!("{}: expected an error, got {c:?}", path.display()),
            Err(e) => e,
        }
    }

    /// A read-only map holding `bytes`, as `Checkpoint::open` would produce from a file.
    fn map_of(bytes: &[u8]) -> Mmap {
        let mut m = MmapMut::map_anon(bytes.len().max(1)).unwrap();
        m[..bytes.len()].copy_from_slice(bytes);
        m.make_read_only().unwrap()
    }

    /// Runs the reader on in-memory bytes; on success also converts every float tensor, so a bad
    /// view would panic here.
    fn read_bytes(bytes: &[u8]) -> Result<BTreeMap<String, TensorEntry>, CheckpointError> {
        let path = PathBuf::from("mem.pt");
        let map = map_of(bytes);
        let tensors = read_tensors(&path, &map)?;
        let ckpt = Checkpoint {
            path,
            map: Arc::new(map),
            tensors: tensors.clone(),
        };
        for (name, e) in &tensors {
            assert!(e.storage_start + e.storage_len <= bytes.len());
            if matches!(e.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
                assert_eq!(ckpt.to_f32(name).unwrap().len(), e.numel());
            }
        }
        Ok(tensors)
    }

    /// The entries of a zip, in order, as (name, bytes).
    fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut z = ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..z.len())
            .map(|i| {
                let mut f = z.by_index(i).unwrap();
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).unwrap();
                (f.name().unwrap().into_owned(), buf)
            })
            .collect()
    }

    fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(name.as_str(), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn tied_entries() -> Vec<(String, Vec<u8>)> {
        unzip(&std::fs::read(fixture("state_dict_tied.pt")).unwrap())
    }

    #[test]
    fn reads_state_dict_exactly() {
        let ckpt = Checkpoint::open(&fixture("state_dict_tied.pt")).unwrap();
        let expected = Checkpoint::open(&fixture("state_dict_tied.expected.safetensors")).unwrap();
        let names: Vec<_> = ckpt.names().collect();
        assert_eq!(names, expected.names().collect::<Vec<_>>());
        assert_eq!(ckpt.len(), 12);
        for name in names {
            let got = ckpt.entry(name).unwrap();
            let want = expected.entry(name).unwrap();
            assert_eq!(got.dtype, want.dtype, "{name}");
            assert_eq!(got.shape, want.shape, "{name}");
            if got.dtype == DType::I64 {
                // Not a float: compare the raw little-endian elements (contiguous here).
                assert_eq!(got.strides, TensorEntry::contiguous_strides(&got.shape));
                let start = got.storage_start + got.offset * 8;
                let raw = &ckpt.map[start..start + got.numel() * 8];
                let want_raw = &expected.map[want.storage_start..want.storage_start + want.storage_len];
                assert_eq!(raw, want_raw, "{name}");
                continue;
            }
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(ckpt.to_f32(name).unwrap()),
                bits(expected.to_f32(name).unwrap()),
                "{name}"
            );
        }

        let e = |n: &str| ckpt.entry(n).unwrap().clone();
        // Tied: the same tensor under two names, and another view of the same storage.
        let word = e("bert.embeddings.word_embeddings.weight");
        assert_eq!(e("cls.predictions.decoder.weight"), word);
        let rows = e("tied.rows_1_to_5");
        assert_eq!(
            (rows.storage_start, rows.storage_len, rows.offset),
            (word.storage_start, word.storage_len, 4)
        );
        assert_eq!(word.storage_len, 24 * 4);
        // Non-contiguous and offset views keep torch's layout.
        let t = e("transposed");
        assert_eq!(
            (t.shape.as_slice(), t.strides.as_slice()),
            (&[5, 3][..], &[1, 5][..])
        );
        assert_eq!(e("offset_view").offset, 6);
        let col = e("column_view");
        assert_eq!((col.offset, col.strides.as_slice()), (1, &[3][..]));
        assert_eq!(col.storage_start, e("offset_view").storage_start);
        assert_eq!(e("half").dtype, DType::F16);
        assert_eq!(e("bfloat").dtype, DType::BF16);
        assert_eq!(e("ids").dtype, DType::I64);
        assert!(e("scalar").shape.is_empty());
        assert_eq!(ckpt.to_f32("scalar").unwrap(), [2.5]);
        assert_eq!(e("empty").shape, [0, 4]);
        assert!(ckpt.to_f32("empty").unwrap().is_empty());
        // Storages are viewed in place, 64-byte aligned as torch writes them.
        assert_eq!(word.storage_start % 64, 0);
    }

    #[test]
    fn training_checkpoint_is_explained() {
        let e = open_err(&fixture("not_a_state_dict.pt"));
        let msg = e.to_string();
        assert!(matches!(e, CheckpointError::Unsupported { .. }), "{msg}");
        for want in [
            "`epoch (int)`",
            "`model (dict)`",
            "`lr (float)`",
            "training checkpoint",
        ] {
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn refused_formats() {
        let cases = [
            ("legacy.pt", "legacy"),
            ("deflated.pt", "compressed"),
            ("big_endian.pt", "byte order `big`"),
            ("os_system.pt", "`os.system`"),
        ];
        for (file, want) in cases {
            let e = open_err(&fixture(file));
            let msg = e.to_string();
            assert!(matches!(e, CheckpointError::Unsupported { .. }), "{file}: {msg}");
            assert!(msg.contains(want), "{file}: {msg}");
        }
        let msg = open_err(&fixture("os_system.pt")).to_string();
        assert!(msg.contains("never executes"), "{msg}");
    }

    #[test]
    fn truncated_copies_are_errors() {
        let bytes = std::fs::read(fixture("state_dict_tied.pt")).unwrap();
        assert!(read_bytes(&bytes).is_ok());
        // Every prefix, in memory.
        for n in 4..bytes.len() {
            assert!(
                read_bytes(&bytes[..n]).is_err(),
                "prefix of {n} bytes was accepted"
            );
        }
        // And a few real files, through Checkpoint::open.
        let dir = tempfile::tempdir().unwrap();
        for n in [4, 30, 200, bytes.len() / 2, bytes.len() - 22, bytes.len() - 1] {
            let path = dir.path().join(format!("cut_{n}.pt"));
            std::fs::write(&path, &bytes[..n]).unwrap();
            match open_err(&path) {
                CheckpointError::Corrupt { reason, .. } => {
                    assert!(reason.contains("truncated"), "{n}: {reason}")
                }
                other => panic!("{n}: {other}"),
            }
        }
    }

    #[test]
    fn missing_or_short_storages_are_corrupt() {
        let entries = tied_entries();
        let without: Vec<_> = entries
            .iter()
            .filter(|(n, _)| n != "state_dict_tied/data/1")
            .cloned()
            .collect();
        let msg = read_bytes(&zip_of(&without)).unwrap_err().to_string();
        assert!(msg.contains("no `state_dict_tied/data/1` entry"), "{msg}");

        let mut short = entries.clone();
        for (n, d) in &mut short {
            if n == "state_dict_tied/data/0" {
                d.truncate(8);
            }
        }
        let msg = read_bytes(&zip_of(&short)).unwrap_err().to_string();
        assert!(msg.contains("should hold 24 f32 elements"), "{msg}");

        // The same archive rewritten by our zip writer still reads (root found, not assumed).
        let renamed: Vec<_> = entries
            .iter()
            .map(|(n, d)| (n.replacen("state_dict_tied/", "archive/", 1), d.clone()))
            .collect();
        assert_eq!(read_bytes(&zip_of(&renamed)).unwrap().len(), 12);

        // No data.pkl at all, and two of them.
        let msg = read_bytes(&zip_of(&[("a/x".into(), vec![1])]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data.pkl"), "{msg}");
        let two = [
            ("a/data.pkl".to_string(), b"\x80\x02}.".to_vec()),
            ("b/data.pkl".to_string(), b"\x80\x02}.".to_vec()),
        ];
        let msg = read_bytes(&zip_of(&two)).unwrap_err().to_string();
        assert!(msg.contains("several"), "{msg}");
        // An empty state dict is fine.
        assert!(read_bytes(&zip_of(&two[..1])).unwrap().is_empty());
    }

    /// A one-tensor data.pkl over storage `0` (f32, `numel` elements) with the given view.
    fn one_tensor_pickle(numel: u8, offset: &[u8], size: &[&[u8]], stride: &[&[u8]]) -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w".to_vec();
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK");
        p.push(numel);
        p.extend_from_slice(b"tQ");
        p.extend_from_slice(offset);
        p.push(b'(');
        for s in size {
            p.extend_from_slice(s);
        }
        p.extend_from_slice(b"t(");
        for s in stride {
            p.extend_from_slice(s);
        }
        p.extend_from_slice(b"t\x89NtRu.");
        p
    }

    fn zip_with_pickle(pkl: Vec<u8>, storage: Vec<u8>) -> Vec<u8> {
        zip_of(&[
            ("m/data.pkl".into(), pkl),
            ("m/byteorder".into(), b"little".to_vec()),
            ("m/data/0".into(), storage),
        ])
    }

    #[test]
    fn views_outside_their_storage_are_corrupt() {
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let k = |v: u8| [b'K', v];
        // A valid 2x3 view, then its transpose, read back.
        let ok = zip_with_pickle(
            one_tensor_pickle(6, &k(0), &[&k(3), &k(2)], &[&k(1), &k(3)]),
            storage.clone(),
        );
        let t = read_bytes(&ok).unwrap();
        assert_eq!(t["w"].strides, [1, 3]);
        // One element too far.
        let bad = zip_with_pickle(
            one_tensor_pickle(6, &k(1), &[&k(2), &k(3)], &[&k(3), &k(1)]),
            storage.clone(),
        );
        let msg = read_bytes(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("tensor `w`") && msg.contains("needs 28 bytes"),
            "{msg}"
        );
        // An empty view must still start inside its storage.
        let bad = zip_with_pickle(one_tensor_pickle(6, &k(7), &[&k(0)], &[&k(1)]), storage.clone());
        assert!(read_bytes(&bad).is_err());
        let ok = zip_with_pickle(one_tensor_pickle(6, &k(6), &[&k(0)], &[&k(1)]), storage.clone());
        assert_eq!(read_bytes(&ok).unwrap()["w"].offset, 6);
        // Sizes whose product overflows usize: an error, not an arithmetic panic.
        let huge = [b'\x8a', 8, 0, 0, 0, 0, 0, 0, 0, 0x40]; // LONG1 2**62
        let bad = zip_with_pickle(
            one_tensor_pickle(6, &k(0), &[&huge, &huge], &[&k(1), &k(1)]),
            storage.clone(),
        );
        let msg = read_bytes(&bad).unwrap_err().to_string();
        assert!(msg.contains("overflows"), "{msg}");
        let bad = zip_with_pickle(one_tensor_pickle(6, &huge, &[&k(2)], &[&huge]), storage.clone());
        assert!(read_bytes(&bad).is_err());
        // A storage larger than its record.
        let bad = zip_with_pickle(one_tensor_pickle(7, &k(0), &[&k(6)], &[&k(1)]), storage.clone());
        assert!(read_bytes(&bad).is_err());
        // A state dict key that is not a string.
        let mut pkl = one_tensor_pickle(6, &k(0), &[&k(6)], &[&k(1)]);
        let at = pkl.windows(6).position(|w| w == b"X\x01\x00\x00\x00w").unwrap();
        pkl.splice(at..at + 6, *b"K\x05");
        let msg = read_bytes(&zip_with_pickle(pkl, storage))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("key is a int"), "{msg}");
    }

    #[test]
    fn mutated_pickles_never_panic() {
        let entries = tied_entries();
        let pkl_at = entries
            .iter()
            .position(|(n, _)| n.ends_with("/data.pkl"))
            .unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut accepted = 0;
        for _ in 0..600 {
            let mut entries = entries.clone();
            let pkl = &mut entries[pkl_at].1;
            for _ in 0..1 + next() % 3 {
                let i = next() % pkl.len();
                match next() % 3 {
                    0 => pkl[i] = next() as u8,
                    1 => pkl[i] ^= 1 << (next() % 8),
                    // Small ints are sizes, strides and offsets: nudge them.
                    _ => pkl[i] = pkl[i].wrapping_add(1 + (next() % 3) as u8),
                }
            }
            if read_bytes(&zip_of(&entries)).is_ok() {
                accepted += 1;
            }
        }
        // Some mutations only touch names or values; most break something.
        assert!(accepted < 600);
    }

    #[test]
    fn mutated_archives_never_panic() {
        let bytes = std::fs::read(fixture("state_dict_tied.pt")).unwrap();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for _ in 0..2000 {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() % b.len();
                b[i] ^= 1 << (next() % 8);
            }
            let _ = read_bytes(&b);
        }
    }
}
