//! The fuzz targets: each takes arbitrary bytes, turns them into the file (or folder) a reader expects and
//! runs the reader. A reader may refuse the input with an error; it must never panic, abort or hang.
//! `fuzz/fuzz_targets/<name>.rs` calls [`run`] under libFuzzer (nightly, `cargo fuzz run <name>`);
//! `tests/replay.rs` replays every committed corpus and crash file on stable, so a fixed crash stays fixed.
//!
//! Multi-file inputs (a 10x folder, a token store, an SAE or tool folder) are split on [`PART`] lines:
//! the n-th part is the n-th file of [`Target::files`]; missing parts are empty files.

use std::path::{Path, PathBuf};

use scinterp_engine::annotate::{gene_sets, networks};
use scinterp_engine::trace::state::{read_state, CHECKPOINT_MAGIC, SHARD_MAGIC};
use scinterp_engine::trace::TraceAccumulator;
use scinterp_export::apply::{apply, ApplyConfig};
use scinterp_export::cells::CellInput;
use scinterp_models::cells::{h5ad, loom, tenx};
use scinterp_models::checkpoint::{pickle, Checkpoint};
use scinterp_models::token_store::TokenStore;

/// The line that separates the files of a multi-file input.
pub const PART: &[u8] = b"\n%%scinterp-fuzz-part%%\n";

/// Tensors larger than this are not converted (the converter allocates numel floats; a header may
/// legitimately announce gigabytes that a fuzz input does not hold).
const MAX_CONVERT: usize = 1 << 20;

/// One fuzz target: its name (the corpus folder and the cargo-fuzz binary) and the files it writes.
pub struct Target {
    pub name: &'static str,
    /// The file names the input's parts become, in order (one name: the whole input).
    pub files: &'static [&'static str],
    /// Runs the reader on the files; true when it accepted them (the replay test checks that each
    /// corpus reaches past the readers' first checks).
    run: fn(&Path) -> bool,
}

/// Every target, in the order of BENCHMARKS.md's reliability table.
pub const TARGETS: &[Target] = &[
    Target {
        name: "checkpoint",
        files: &["model.bin"],
        run: checkpoint,
    },
    Target {
        name: "pickle",
        files: &["data.pkl"],
        run: pickle_vm,
    },
    Target {
        name: "npy",
        files: &["array.npy"],
        run: npy,
    },
    Target {
        name: "token_store",
        files: &["manifest.json", "tokens.npy", "offsets.npy", "cells.tsv"],
        run: token_store,
    },
    Target {
        name: "act_store",
        files: &["manifest.json", "rows.npy", "acts.bin"],
        run: act_store,
    },
    Target {
        name: "h5ad",
        files: &["cells.h5ad"],
        run: h5ad_file,
    },
    Target {
        name: "loom",
        files: &["cells.loom"],
        run: loom_file,
    },
    Target {
        name: "tenx",
        files: &["matrix.mtx", "features.tsv", "barcodes.tsv"],
        run: tenx_folder,
    },
    Target {
        name: "gene_sets",
        files: &["sets.gmt"],
        run: gmt,
    },
    Target {
        name: "networks",
        files: &["network.tsv"],
        run: network,
    },
    Target {
        name: "sae_folder",
        files: &["cfg.json", "sae_weights.safetensors"],
        run: sae_folder,
    },
    Target {
        name: "trace_state",
        files: &["state.bin"],
        run: trace_state,
    },
    Target {
        name: "tool",
        files: &["card.json", "tool.safetensors", "tool.onnx"],
        run: tool_folder,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Writes `data` as the target's files into `dir` (which must exist) and runs its reader; true when
/// the reader accepted the input.
pub fn run_in(target: &Target, dir: &Path, data: &[u8]) -> bool {
    let mut parts = split(data);
    parts.resize(target.files.len().max(parts.len()), &[]);
    if target.files.len() == 1 {
        parts = vec![data];
    }
    for (name, part) in target.files.iter().zip(&parts) {
        // A failed write (disk full) is not the reader's fault: skip this input.
        if std::fs::write(dir.join(name), part).is_err() {
            return false;
        }
    }
    (target.run)(dir)
}

/// [`run_in`] in a scratch folder of this process (made once, reused: libFuzzer calls this millions
/// of times).
pub fn run(name: &str, data: &[u8]) {
    static SCRATCH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let Some(target) = target(name) else {
        panic!("no fuzz target {name}");
    };
    let dir = SCRATCH.get_or_init(|| {
        // libFuzzer's panic hook aborts on every panic, even one a reader catches on purpose (the HDF5
        // readers turn a panic inside rust-hdf5 into an error). A quiet hook lets those pass; a panic
        // that escapes the reader still ends the run as a crash (libfuzzer-sys aborts on it).
        std::panic::set_hook(Box::new(|_| {}));
        let d = std::env::temp_dir().join(format!("scinterp-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    let sub = dir.join(target.name);
    let _ = std::fs::create_dir_all(&sub);
    run_in(target, &sub, data);
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(PART.len()).position(|w| w == PART) {
        parts.push(&rest[..at]);
        rest = &rest[at + PART.len()..];
    }
    parts.push(rest);
    parts
}

fn checkpoint(dir: &Path) -> bool {
    let Ok(ckpt) = Checkpoint::open(&dir.join("model.bin")) else {
        return false;
    };
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    for name in names {
        // Integer tensors are refused by to_f32; that is an answer, not a failure of the reader.
        if ckpt.entry(&name).is_some_and(|e| e.numel() <= MAX_CONVERT) {
            let _ = ckpt.to_f32(&name);
        }
    }
    true
}

fn pickle_vm(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("data.pkl")) else {
        return false;
    };
    let _ = pickle::load_flat_dict(&bytes);
    let _ = pickle::load_dict(&bytes);
    pickle::load(&bytes).is_ok()
}

fn npy(dir: &Path) -> bool {
    let path = dir.join("array.npy");
    let _ = scinterp_engine::npy::read_header(&path);
    scinterp_engine::npy::read_npy_bytes(&path).is_ok()
}

fn token_store(dir: &Path) -> bool {
    TokenStore::read(dir).is_ok()
}

fn act_store(dir: &Path) -> bool {
    // The third part is the first hook's array, under the file name the manifest gives it.
    if let Ok(manifest) = scinterp_engine::store::read_manifest(dir) {
        if let Some(hook) = manifest.hooks.first() {
            let name = manifest.hook_file(hook);
            if !name.contains(['/', '\\']) && name != "manifest.json" && name != "rows.npy" {
                let _ = std::fs::rename(dir.join("acts.bin"), dir.join(name));
            }
        }
    }
    let Ok(store) = scinterp_engine::store::ActStore::open(dir) else {
        return false;
    };
    let mut ok = store.rows().is_ok();
    for hook in store.manifest.hooks.clone() {
        match store.hook(&hook) {
            Ok(array) => {
                let n = array.n_rows().min(4);
                let d = array.d();
                if d <= MAX_CONVERT {
                    let mut out = vec![0f32; n * d];
                    array.read_rows(0, &mut out);
                }
            }
            Err(_) => ok = false,
        }
    }
    ok
}

fn h5ad_file(dir: &Path) -> bool {
    let path = dir.join("cells.h5ad");
    let _ = h5ad::read_var_text_columns(&path, &Default::default());
    h5ad::read_h5ad(&path, &Default::default()).is_ok()
}

fn loom_file(dir: &Path) -> bool {
    loom::read_loom(&dir.join("cells.loom"), None, &[]).is_ok()
}

fn tenx_folder(dir: &Path) -> bool {
    tenx::read_10x_mtx(dir, tenx::GeneIdColumn::Id).is_ok()
}

fn gmt(dir: &Path) -> bool {
    gene_sets::read_gmt(&dir.join("sets.gmt")).is_ok()
}

fn network(dir: &Path) -> bool {
    let path = dir.join("network.tsv");
    let _ = networks::read_ppi(&path, Some(0.5));
    let trrust = networks::read_trrust(&path).is_ok();
    networks::read_ppi(&path, None).is_ok() || trrust
}

fn sae_folder(dir: &Path) -> bool {
    scinterp_engine::sae::io::load(dir).is_ok()
}

fn trace_state(dir: &Path) -> bool {
    let path = dir.join("state.bin");
    let checkpoint = read_state(&path, CHECKPOINT_MAGIC).is_ok_and(|s| s.is_some());
    let shard = read_state(&path, SHARD_MAGIC).is_ok_and(|s| s.is_some());
    if let Ok(bytes) = std::fs::read(&path) {
        // The accumulator behind the checksum, reached directly: a checksum must not be what keeps it safe.
        for start in [0, 16] {
            let _ = TraceAccumulator::from_bytes(bytes.get(start..).unwrap_or_default());
        }
    }
    checkpoint || shard
}

/// Genes of the cells the `tool` target applies its tool to: the panel of the seed tools
/// (`fuzz/corpus/tool/`, scGPT exports of pbmc68k with 12 HVGs) and two genes outside it.
const TOOL_CELL_GENES: &[&str] = &[
    "FCER1G", "LTB", "LST1", "AIF1", "HLA-DRA", "HLA-DQA1", "HLA-DPA1", "HLA-DPB1", "LYZ", "IL32", "CST3",
    "TYROBP", "ACTB", "MALAT1",
];

/// Writes (once per folder) a 10x folder of three cells over [`TOOL_CELL_GENES`].
fn tool_cells(dir: &Path) -> Option<PathBuf> {
    let cells = dir.join("cells");
    if !cells.join("matrix.mtx").exists() {
        std::fs::create_dir_all(&cells).ok()?;
        let n = TOOL_CELL_GENES.len();
        let mut mtx = String::from("%%MatrixMarket matrix coordinate integer general\n");
        // Genes × cells: cell 1 holds every gene, cell 2 every other one, cell 3 none of the panel.
        let entries: Vec<(usize, usize, usize)> = (0..n)
            .map(|g| (g, 0, g + 1))
            .chain((0..n).step_by(2).map(|g| (g, 1, 3)))
            .chain([(n - 1, 2, 7)])
            .collect();
        mtx += &format!("{n} 3 {}\n", entries.len());
        for (g, c, v) in entries {
            mtx += &format!("{} {} {v}\n", g + 1, c + 1);
        }
        let features: String = TOOL_CELL_GENES
            .iter()
            .map(|g| format!("{g}\t{g}\tGene Expression\n"))
            .collect();
        std::fs::write(cells.join("matrix.mtx"), mtx).ok()?;
        std::fs::write(cells.join("features.tsv"), features).ok()?;
        std::fs::write(cells.join("barcodes.tsv"), "c1\nc2\nc3\n").ok()?;
    }
    Some(cells)
}

/// A tool folder as `scinterp apply` uses it: read and checked (card, weights, the ONNX file's hash),
/// then run on three cells with the calls written out.
fn tool_folder(dir: &Path) -> bool {
    let Some(cells) = tool_cells(dir) else {
        return false;
    };
    let config = ApplyConfig {
        tool: dir.to_path_buf(),
        cells: CellInput {
            path: cells,
            ..Default::default()
        },
        out: dir.join("calls.tsv"),
        min_panel_fraction: 0.0,
        overwrite: true,
    };
    apply(&config).is_ok()
}
