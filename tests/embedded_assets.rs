//! The embedded models of models/assets (trained on real cells by models/assets/train.py) read by
//! scinterp's own loaders: the Rust forward equals torch's on held-out cells, and on the embedded cells'
//! held-out split, tokenized by scinterp's tokenizers, both models beat trivial baselines at the task they
//! were trained on. Needs nothing outside the repository (no ../shared/data).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{as_strs, assets, real_positions, real_rows, relative_error, scinterp, ExpectedFile};
use scinterp_engine::{run, Encoder, HookPlan, HookPoint, Matrix, PackedBatch, Start};
use scinterp_models::geneformer::{Geneformer, LoadOptions};
use scinterp_models::scgpt::{Scgpt, ScgptLoadOptions};
use scinterp_models::token_store::TokenStore;

const TOLERANCE: f64 = 1e-4;
/// Geneformer V2's `<mask>` token and scGPT's mask value.
const MASK_TOKEN: u32 = 1;
const MASK_VALUE: f32 = -1.0;
/// The tokens per cell the models were trained with (specials included).
const MAX_LEN: &str = "256";
/// Held-out cells scored per data set (enough for a stable rate, few enough for a debug build).
const CELLS_PER_DATASET: usize = 40;
/// Geneformer held-out margins over the frequency prior (nats; top-1 as a factor): see the test.
const CE_MARGIN: f64 = 0.1;
const TOP1_FACTOR: f64 = 2.0;

fn geneformer() -> Geneformer {
    Geneformer::load(&assets().join("geneformer"), LoadOptions { with_head: true })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn scgpt() -> Scgpt {
    Scgpt::load(&assets().join("scgpt"), ScgptLoadOptions { with_head: true })
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Tokenizes one embedded data set with the scinterp CLI, as the training script did.
fn tokenize(dataset: &str, kind: &str, out: &Path) -> TokenStore {
    let cells = assets().join("cells");
    let input = cells.join(format!("{dataset}.h5ad.gz"));
    let orthologs = cells.join("paul15_orthologs.csv");
    let mut args = vec![
        "tokenize".to_string(),
        "--input".into(),
        input.display().to_string(),
        "--model-kind".into(),
        kind.into(),
        "--max-len".into(),
        MAX_LEN.into(),
        "--obs-columns".into(),
        "split".into(),
        "--threads".into(),
        "2".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    if kind == "scgpt" {
        args.extend(["--vocab".into(), assets().join("scgpt").display().to_string()]);
        args.extend(["--seed".into(), "19".into()]);
    } else {
        let dicts = assets().join("geneformer").display().to_string();
        args.extend([
            "--dictionaries".into(),
            dicts,
            "--gene-ids".into(),
            "symbol".into(),
        ]);
    }
    if dataset == "paul15" {
        args.extend(["--orthologs".into(), orthologs.display().to_string()]);
    }
    let run = scinterp(&as_strs(&args));
    assert!(
        run.status.success(),
        "scinterp tokenize {dataset}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    TokenStore::read(out).unwrap()
}

/// Whether each cell of the store is in the held-out split (obs `split` of the embedded h5ad).
fn held_out(store: &TokenStore) -> Vec<bool> {
    let (header, rows) = &store.cell_table;
    let col = header.iter().position(|h| h == "split").expect("split column");
    let held: Vec<bool> = rows.iter().map(|r| r[col] == "heldout").collect();
    let n = held.iter().filter(|&&h| h).count();
    assert!(
        n > 50 && n < held.len() / 4,
        "{n} held-out cells of {}",
        held.len()
    );
    held
}

/// Gene positions masked in a held-out cell: every 7th (never `<cls>` at 0, nor `<eos>` at the end when
/// `skip_last`).
fn masked_positions(len: usize, skip_last: bool) -> Vec<usize> {
    let end = if skip_last { len - 1 } else { len };
    (1..end).step_by(7).collect()
}

#[test]
fn embedded_geneformer_matches_torch_on_held_out_cells() {
    let model = geneformer();
    assert_eq!(model.dims().head_dim, 64, "head_dim 64: the GPU kernels apply");
    assert_eq!(model.dims().vocab_size, 20_275, "the real V2 vocabulary");
    let expected = ExpectedFile::open(&assets().join("geneformer/expected.safetensors"));
    let cells = expected.cells();
    let lengths: Vec<usize> = cells.iter().map(Vec::len).collect();
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let n_layers = model.dims().n_layers;
    let hooks: Vec<HookPoint> = std::iter::once(HookPoint::Embed)
        .chain((0..n_layers).map(HookPoint::ResidPost))
        .collect();
    let out = run(
        &model,
        &batch,
        &HookPlan::new().capture_many(hooks.iter().copied()),
        Start::Embed,
        true,
    )
    .unwrap();
    for hook in hooks {
        let name = hook.to_string();
        let want = real_rows(expected.get(&name), &lengths);
        let err = relative_error(out.captures.get(hook).unwrap().as_slice(), &want);
        assert!(err <= TOLERANCE, "{name} differs from torch by {err:e}");
    }
    let logits = out.head.expect("MLM head");
    let subset = expected.get("logits_subset");
    let vocab = subset.shape[1];
    let pairs = expected
        .get("logits_cells")
        .values
        .iter()
        .zip(&expected.get("logits_positions").values);
    for (i, (&c, &p)) in pairs.enumerate() {
        let row = batch.cell_range(c as usize).start + p as usize;
        let err = relative_error(logits.row(row), &subset.values[i * vocab..(i + 1) * vocab]);
        assert!(err <= 1e-3, "logits of cell {c} position {p} differ by {err:e}");
    }
}

#[test]
fn embedded_scgpt_matches_torch_on_held_out_cells() {
    let model = scgpt();
    assert_eq!(model.dims().head_dim, 64, "head_dim 64: the GPU kernels apply");
    let expected = ExpectedFile::open(&assets().join("scgpt/expected.safetensors"));
    let ids = expected.get("gene_ids");
    let values = expected.get("values");
    let max_len = ids.shape[1];
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    let mut vals: Vec<f32> = Vec::new();
    for (c, &len) in expected.get("lengths").values.iter().enumerate() {
        let r = c * max_len..c * max_len + len as usize;
        tokens.push(ids.values[r.clone()].iter().map(|&v| v as u32).collect());
        vals.extend(values.values[r].iter().map(|&v| v as f32));
    }
    assert!(vals.contains(&MASK_VALUE), "the fixture holds a masked value");
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let batch = PackedBatch::from_cells(&tokens)
        .unwrap()
        .with_values(vals)
        .unwrap();
    let hooks = HookPoint::all(model.dims().n_layers);
    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let out = run(&model, &batch, &plan, Start::Embed, true).unwrap();
    for hook in hooks {
        let name = hook.to_string();
        let want = real_rows(expected.get(&name), &lengths);
        let err = relative_error(out.captures.get(hook).unwrap().as_slice(), &want);
        assert!(err <= TOLERANCE, "{name} differs from torch by {err:e}");
    }
    let cell = model.cell_embedding(&out.final_state, &batch).unwrap();
    let err = relative_error(cell.as_slice(), &expected.get("cell_embedding").values);
    assert!(err <= TOLERANCE, "cell_embedding differs by {err:e}");
    let head = out.head.expect("heads");
    for (column, name) in ["expr_pred", "mvc_pred"].into_iter().enumerate() {
        let got: Vec<f32> = head.as_slice().chunks_exact(2).map(|r| r[column]).collect();
        let err = relative_error(&got, &real_positions(expected.get(name), &lengths));
        assert!(err <= 1e-3, "{name} differs from torch by {err:e}");
    }
}

/// Masked-gene prediction on held-out cells: the MLM head's cross-entropy and top-1 against the frequency
/// prior (training gene frequencies, add-one over the genes these cells contain) and the rank prior (each
/// position's most frequent gene in the training cells).
#[test]
fn embedded_geneformer_predicts_masked_genes_of_held_out_cells() {
    let model = geneformer();
    let tmp = tempfile::tempdir().unwrap();
    let (mut hits, mut freq_hits, mut pos_hits, mut n) = (0usize, 0usize, 0usize, 0usize);
    let (mut ce_model, mut ce_freq) = (0f64, 0f64);
    for dataset in ["paul15", "pbmc68k"] {
        let store = tokenize(dataset, "geneformer-v2", &tmp.path().join(dataset));
        let held = held_out(&store);
        // Add-one over every gene token of the store (held-out genes included: none gets p = 0).
        let mut freq: HashMap<u32, usize> = HashMap::new();
        for cell in &store.cells {
            for &g in &cell[1..cell.len() - 1] {
                freq.entry(g).or_insert(1);
            }
        }
        let mut by_pos: HashMap<(usize, u32), usize> = HashMap::new();
        for (cell, _) in store.cells.iter().zip(&held).filter(|(_, &h)| !h) {
            assert_eq!((cell[0], *cell.last().unwrap()), (2, 3), "<cls> … <eos>");
            for (p, &g) in cell.iter().enumerate().take(cell.len() - 1).skip(1) {
                *freq.entry(g).or_default() += 1;
                *by_pos.entry((p, g)).or_default() += 1;
            }
        }
        let total: usize = freq.values().sum();
        let most_frequent = freq
            .iter()
            .max_by_key(|(g, c)| (**c, **g))
            .map(|(g, _)| *g)
            .unwrap();
        let mut pos_best: HashMap<usize, (usize, u32)> = HashMap::new();
        for (&(p, g), &c) in &by_pos {
            let best = pos_best.entry(p).or_insert((0, 0));
            if (c, g) > *best {
                *best = (c, g);
            }
        }

        let cells: Vec<&Vec<u32>> = store
            .cells
            .iter()
            .zip(&held)
            .filter(|(_, &h)| h)
            .map(|(c, _)| c)
            .take(CELLS_PER_DATASET)
            .collect();
        let mut inputs = Vec::new();
        let mut targets = Vec::new(); // (cell, position, true token)
        for (c, cell) in cells.iter().enumerate() {
            let mut x = (*cell).clone();
            for p in masked_positions(cell.len(), true) {
                targets.push((c, p, x[p]));
                x[p] = MASK_TOKEN;
            }
            inputs.push(x);
        }
        let batch = PackedBatch::from_cells(&inputs).unwrap();
        let out = run(&model, &batch, &HookPlan::new(), Start::Embed, false).unwrap();
        // The head is per position: run it on the masked rows only (the full vocabulary at every
        // position would cost far more than the encoder).
        let d = model.dims().d_model;
        let mut rows = Matrix::zeros(targets.len(), d);
        for (i, &(c, p, _)) in targets.iter().enumerate() {
            let r = batch.cell_range(c).start + p;
            rows.row_mut(i).copy_from_slice(out.final_state.row(r));
        }
        let logits = model.head(&rows, &batch).expect("MLM head");
        for (i, &(_, p, truth)) in targets.iter().enumerate() {
            let row = logits.row(i);
            let argmax = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            let max = row[argmax] as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            ce_model += lse - row[truth as usize] as f64;
            ce_freq -= (freq[&truth] as f64 / total as f64).ln();
            hits += usize::from(argmax as u32 == truth);
            freq_hits += usize::from(most_frequent == truth);
            pos_hits += usize::from(pos_best.get(&p).map(|b| b.1) == Some(truth));
            n += 1;
        }
    }
    let (acc, freq_acc, pos_acc) = (
        hits as f64 / n as f64,
        freq_hits as f64 / n as f64,
        pos_hits as f64 / n as f64,
    );
    let (ce, ce_f) = (ce_model / n as f64, ce_freq / n as f64);
    eprintln!(
        "masked-gene prediction on {n} held-out positions: top-1 model {acc:.3}, frequency prior \
         {freq_acc:.3}, rank prior {pos_acc:.3}; cross-entropy (nats) model {ce:.3}, frequency prior {ce_f:.3}"
    );
    assert!(n > 500, "{n} masked positions");
    // Measured here with the committed weights: cross-entropy 6.548 vs 6.739 (this prior is per data set,
    // stronger than train.py's), top-1 0.014 vs 0.005; margins about half the measured gaps. The rank
    // prior's top-1 (0.014) is only matched, not beaten, so it is printed, not asserted (README.md).
    assert!(
        ce < ce_f - CE_MARGIN,
        "cross-entropy: model {ce:.3} vs frequency prior {ce_f:.3}"
    );
    assert!(
        acc > TOP1_FACTOR * freq_acc,
        "top-1: model {acc:.3} vs frequency prior {freq_acc:.3} (rank prior {pos_acc:.3})"
    );
}

/// Masked expression prediction on held-out cells: the ExprDecoder's bin against the global mean bin of the
/// training cells (each gene's mean bin is printed beside it).
#[test]
fn embedded_scgpt_predicts_masked_expression_of_held_out_cells() {
    let model = scgpt();
    let tmp = tempfile::tempdir().unwrap();
    let (mut se_model, mut se_gene, mut se_global, mut n) = (0f64, 0f64, 0f64, 0usize);
    for dataset in ["paul15", "pbmc68k"] {
        let store = tokenize(dataset, "scgpt", &tmp.path().join(dataset));
        let held = held_out(&store);
        let values = store.values.as_ref().expect("scGPT values");
        let mut sum: HashMap<u32, (f64, usize)> = HashMap::new();
        let (mut total, mut count) = (0f64, 0usize);
        for ((cell, vals), _) in store.cells.iter().zip(values).zip(&held).filter(|(_, &h)| !h) {
            assert_eq!(cell[0], model.cls_id());
            for (&g, &v) in cell.iter().zip(vals).skip(1) {
                let e = sum.entry(g).or_default();
                e.0 += v as f64;
                e.1 += 1;
                total += v as f64;
                count += 1;
            }
        }
        let global = total / count as f64;

        let picked: Vec<(&Vec<u32>, &Vec<f32>)> = store
            .cells
            .iter()
            .zip(values)
            .zip(&held)
            .filter(|(_, &h)| h)
            .map(|(cv, _)| cv)
            .take(CELLS_PER_DATASET)
            .collect();
        let mut flat = Vec::new();
        let mut targets = Vec::new(); // (cell, position, gene, true bin)
        for (c, (cell, vals)) in picked.iter().enumerate() {
            let mut v = (*vals).clone();
            for p in masked_positions(cell.len(), false) {
                targets.push((c, p, cell[p], v[p]));
                v[p] = MASK_VALUE;
            }
            flat.extend(v);
        }
        let tokens: Vec<&[u32]> = picked.iter().map(|(c, _)| c.as_slice()).collect();
        let batch = PackedBatch::from_cells(&tokens)
            .unwrap()
            .with_values(flat)
            .unwrap();
        let out = run(&model, &batch, &HookPlan::new(), Start::Embed, true).unwrap();
        let head = out.head.expect("heads");
        for &(c, p, g, truth) in &targets {
            let pred = head.row(batch.cell_range(c).start + p)[0] as f64;
            let gene_mean = sum.get(&g).map_or(global, |(s, k)| s / *k as f64);
            let truth = truth as f64;
            se_model += (pred - truth).powi(2);
            se_gene += (gene_mean - truth).powi(2);
            se_global += (global - truth).powi(2);
            n += 1;
        }
    }
    let (mse, gene, global) = (se_model / n as f64, se_gene / n as f64, se_global / n as f64);
    eprintln!(
        "masked expression MSE (bins²) on {n} held-out values: model {mse:.1}, gene mean {gene:.1}, \
         global mean {global:.1}"
    );
    assert!(n > 500, "{n} masked values");
    // Measured here: model 158.4, gene mean 155.5, global mean 205.0 (bins²); train.py on all 515 held-out
    // cells: 156.7 vs 158.4 vs 202.3. The model is at the per-gene mean (this test's per-data-set gene mean
    // is slightly stronger), well below the global mean: that is asserted (see README.md).
    assert!(
        mse < 0.85 * global,
        "model {mse:.1} vs global mean {global:.1} (gene mean {gene:.1})"
    );
}
