//! Files the tests write and read back: folder snapshots, TSV tables, safetensors tensors, and small
//! fixtures made on the fly (token stores, the embedded cells' tokenize arguments).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::SafeTensors;
use scinterp_models::token_store::{TokenStore, TokenStoreManifest, FORMAT, FORMAT_VERSION, HASH_ALGORITHM};

use super::{assets, fixture, s, ExpectedFile};

/// Every file under `p` (relative path → bytes); a file is its own single entry (named ""); absent →
/// empty. Two runs that wrote the same bytes compare equal.
pub fn files(p: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if p.is_dir() {
        walk(p, p, &mut out);
    } else if p.exists() {
        out.insert(String::new(), std::fs::read(p).unwrap());
    }
    out
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A TSV table written by scinterp as rows of (column → text).
pub fn read_tsv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split('\t').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split('\t').map(String::from))
                .collect()
        })
        .collect()
}

/// A column of a [`read_tsv`] row as a number.
pub fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {}", row[col]))
}

/// An F32 tensor of a safetensors file (e.g. one written by `scinterp forward`): shape and values.
pub fn f32_tensor(file: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = file.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), values)
}

/// Writes a token store of `cells` (and scGPT `values`) the way `scinterp tokenize` would.
pub fn write_token_store(
    dir: &Path,
    tokenizer: &str,
    version: &str,
    cells: &[Vec<u32>],
    values: Option<Vec<Vec<f32>>>,
) {
    TokenStore {
        manifest: TokenStoreManifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            tokenizer: tokenizer.into(),
            tokenizer_version: version.into(),
            options: serde_json::json!({}),
            hash_algorithm: HASH_ALGORITHM.into(),
            dictionaries: Default::default(),
            source_path: "test".into(),
            source_hash: String::new(),
            n_cells: cells.len(),
            n_tokens: cells.iter().map(Vec::len).sum(),
            max_len: cells.iter().map(Vec::len).max().unwrap(),
            has_values: values.is_some(),
            n_cells_dropped: 0,
            scinterp_version: "test".into(),
        },
        cell_table: (
            vec!["cell".into()],
            (0..cells.len()).map(|c| vec![format!("c{c}")]).collect(),
        ),
        cells: cells.to_vec(),
        values,
    }
    .write(dir, false)
    .unwrap();
}

/// A V2 Geneformer token store of the tiny_v2 fixture's cells, repeated `copies` times; returns the
/// cells. Copies after the first have their genes rotated: distinct cells, same vocabulary.
pub fn tiny_v2_token_store(dir: &Path, copies: usize) -> Vec<Vec<u32>> {
    let expected = ExpectedFile::open(&fixture("tiny_v2").join("expected.safetensors"));
    let base = expected.cells();
    let cells: Vec<Vec<u32>> = (0..copies)
        .flat_map(|copy| {
            base.iter().map(move |cell| {
                let mut cell = cell.clone();
                let genes = 1..cell.len() - 1;
                let len = genes.len();
                if len > 1 {
                    cell[genes].rotate_left(copy % len);
                }
                cell
            })
        })
        .collect();
    write_token_store(dir, "geneformer", "V2", &cells, None);
    cells
}

/// The arguments of a Geneformer V2 tokenize of the embedded pbmc68k cells (700 cells, gene symbols)
/// into `out`, then `extra`.
pub fn pbmc68k_tokenize_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let assets = assets();
    let mut a: Vec<String> = [
        "tokenize",
        "--input",
        s(&assets.join("cells/pbmc68k.h5ad.gz")),
        "--model-kind",
        "geneformer-v2",
        "--dictionaries",
        s(&assets.join("geneformer")),
        "--gene-ids",
        "symbol",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// Borrows owned arguments for [`super::scinterp`].
pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
