//! Parity of the CPU engine with Hugging Face transformers (`BertForMaskedLM`, eager attention, f32) on
//! the fixtures of tests/reference/make_geneformer_fixtures.py: every hook and the logits, both weight
//! formats, tail replay from every layer, and hook edits.

mod common;

use std::path::Path;

use common::{fixture, formula_model_dir, real_rows, relative_error, ExpectedFile};
use scinterp_engine::{run, Edit, Encoder, HookPlan, HookPoint, Matrix, PackedBatch, Start};
use scinterp_models::geneformer::{Geneformer, LoadOptions};
use scinterp_models::synthetic::SyntheticSpec;

const TOLERANCE: f64 = 1e-4;

fn load(dir: &Path) -> Geneformer {
    Geneformer::load(dir, LoadOptions { with_head: true }).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs every hook and the head, and compares everything the expected file holds.
fn check_all_hooks(model: &Geneformer, expected: &ExpectedFile, label: &str) {
    let cells = expected.cells();
    let lengths: Vec<usize> = cells.iter().map(Vec::len).collect();
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let hooks = HookPoint::all(model.dims().n_layers);
    let plan = HookPlan::new().capture_many(hooks.iter().copied());
    let out = run(model, &batch, &plan, Start::Embed, true).unwrap();
    let mut compared = 0;
    for hook in hooks {
        let name = hook.to_string();
        if !expected.has(&name) {
            continue;
        }
        let want = real_rows(expected.get(&name), &lengths);
        let err = relative_error(out.captures.get(hook).unwrap().as_slice(), &want);
        assert!(
            err <= TOLERANCE,
            "{label}: {name} differs from transformers by {err:e}"
        );
        compared += 1;
    }
    assert!(
        compared > model.dims().n_layers,
        "{label}: too few hooks in the fixture"
    );
    let logits = out.head.expect("head");
    if expected.has("logits") {
        let want = real_rows(expected.get("logits"), &lengths);
        let err = relative_error(logits.as_slice(), &want);
        assert!(err <= TOLERANCE, "{label}: logits differ by {err:e}");
    } else {
        let cells_idx = &expected.get("logits_cells").values;
        let positions = &expected.get("logits_positions").values;
        let subset = expected.get("logits_subset");
        let vocab = subset.shape[1];
        for (i, (&c, &p)) in cells_idx.iter().zip(positions).enumerate() {
            let row = batch.row(c as usize, p as usize);
            let err = relative_error(logits.row(row), &subset.values[i * vocab..(i + 1) * vocab]);
            assert!(
                err <= TOLERANCE,
                "{label}: logits of cell {c} position {p} differ by {err:e}"
            );
        }
    }
}

#[test]
fn tiny_v2_safetensors_matches_transformers_on_every_hook_and_logits() {
    let dir = fixture("tiny_v2");
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    check_all_hooks(&load(&dir), &expected, "tiny_v2 safetensors");
}

/// `head_columns` (one decoder row per position) equals the full head's logits at those columns.
#[test]
fn own_token_head_columns_equal_the_full_logits() {
    let dir = fixture("tiny_v2");
    let model = load(&dir);
    let cells = ExpectedFile::open(&dir.join("expected.safetensors")).cells();
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let out = run(&model, &batch, &HookPlan::new(), Start::Embed, true).unwrap();
    let full = out.head.unwrap();
    let own = model
        .head_columns(&out.final_state, &batch, batch.tokens())
        .unwrap();
    assert_eq!(own.len(), batch.n_tokens());
    for (r, (&got, &t)) in own.iter().zip(batch.tokens()).enumerate() {
        let want = full.row(r)[t as usize];
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "row {r}: {got} vs {want}"
        );
    }
}

#[test]
fn tiny_v2_pytorch_bin_matches_transformers() {
    // A folder holding only config.json and the torch.save'd state dict (tied decoder stored as a view
    // of the word embeddings, plus the position_ids buffer the loader must ignore).
    let src = fixture("tiny_v2");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let model = load(dir.path());
    assert!(model.weights_path().ends_with("pytorch_model.bin"));
    let expected = ExpectedFile::open(&src.join("expected.safetensors"));
    check_all_hooks(&model, &expected, "tiny_v2 pytorch_model.bin");
}

#[test]
fn formula_weights_reproduce_the_python_generator() {
    for name in ["ragged_v1", "v1_10m_full"] {
        let dir = fixture(name);
        let spec = SyntheticSpec::from_file(&dir.join("weights.json")).unwrap();
        let check = ExpectedFile::open(&dir.join("weights_check.safetensors"));
        let generated = spec.generate();
        let mut checked = 0;
        for (tensor, _, values) in &generated {
            if !check.has(tensor) {
                continue;
            }
            let want = &check.get(tensor).values;
            let got: Vec<f64> = values[..want.len()].iter().map(|&v| v as f64).collect();
            assert_eq!(&got, want, "{name}: first values of {tensor}");
            checked += 1;
        }
        assert_eq!(checked, generated.len(), "{name}: every tensor is checked");
    }
}

#[test]
fn ragged_v1_matches_transformers() {
    let dir = fixture("ragged_v1");
    let model_dir = formula_model_dir(&dir);
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    check_all_hooks(&load(model_dir.path()), &expected, "ragged_v1");
}

#[test]
fn v1_10m_full_size_matches_transformers() {
    let dir = fixture("v1_10m_full");
    let model_dir = formula_model_dir(&dir);
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let model = load(model_dir.path());
    assert_eq!(
        (
            model.dims().d_model,
            model.dims().n_layers,
            model.dims().vocab_size
        ),
        (256, 6, 25_426)
    );
    check_all_hooks(&model, &expected, "v1_10m_full");
}

#[test]
fn tail_replay_from_every_layer_equals_the_full_pass() {
    for name in ["tiny_v2", "ragged_v1"] {
        let dir = fixture(name);
        let formula;
        let model_dir = if dir.join("weights.json").exists() {
            formula = formula_model_dir(&dir);
            formula.path().to_path_buf()
        } else {
            dir.clone()
        };
        let model = load(&model_dir);
        let cells = ExpectedFile::open(&dir.join("expected.safetensors")).cells();
        let batch = PackedBatch::from_cells(&cells).unwrap();
        let n = model.dims().n_layers;
        let hooks: Vec<HookPoint> = std::iter::once(HookPoint::Embed)
            .chain((0..n).map(HookPoint::ResidPost))
            .collect();
        let mut full = run(
            &model,
            &batch,
            &HookPlan::new().capture_many(hooks.clone()),
            Start::Embed,
            true,
        )
        .unwrap();
        for (layer, &input_hook) in hooks.iter().enumerate() {
            // The input of block `layer` is hook_embed (layer 0) or the previous block's output.
            let state = full.captures.get(input_hook).unwrap().clone();
            let tail = run(
                &model,
                &batch,
                &HookPlan::new(),
                Start::BlockInput { layer, state },
                true,
            )
            .unwrap();
            assert_eq!(
                tail.final_state.max_abs_diff(&full.final_state),
                0.0,
                "{name}: replay from block {layer}"
            );
            assert_eq!(
                tail.head
                    .as_ref()
                    .unwrap()
                    .max_abs_diff(full.head.as_ref().unwrap()),
                0.0,
                "{name}: logits after replay from block {layer}"
            );
        }
        // A state of the wrong shape is an error, not a panic.
        let bad = Start::BlockInput {
            layer: 1,
            state: Matrix::zeros(3, model.dims().d_model),
        };
        assert!(run(&model, &batch, &HookPlan::new(), bad, false).is_err());
        let past = Start::BlockInput {
            layer: n + 1,
            state: full.captures.take(hooks[0]).unwrap(),
        };
        assert!(run(&model, &batch, &HookPlan::new(), past, false).is_err());
    }
}

#[test]
fn hook_edits_match_transformers_forward_hooks() {
    let dir = fixture("tiny_v2");
    let model = load(&dir);
    let expected = ExpectedFile::open(&dir.join("expected.safetensors"));
    let edits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("edits.json")).unwrap()).unwrap();
    let cells = expected.cells();
    let lengths: Vec<usize> = cells.iter().map(Vec::len).collect();
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let last = HookPoint::ResidPost(model.dims().n_layers - 1);
    let edits = edits.as_array().unwrap();
    assert!(edits.len() >= 3);
    for e in edits {
        let name = e["name"].as_str().unwrap();
        let hook = HookPoint::parse(e["hook"].as_str().unwrap()).unwrap();
        let cell = e["cell"].as_u64().unwrap() as usize;
        let rows: Vec<usize> = e["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| batch.row(cell, p.as_u64().unwrap() as usize))
            .collect();
        let to_f32 = |key: &str| -> Vec<f32> {
            expected
                .get(e[key].as_str().unwrap())
                .values
                .iter()
                .map(|&v| v as f32)
                .collect()
        };
        let edit = match e["kind"].as_str().unwrap() {
            "add" => Edit::add_direction(rows, to_f32("direction"), e["scale"].as_f64().unwrap() as f32),
            "zero" => Edit::Zero { rows },
            "replace" => Edit::Replace {
                rows,
                values: to_f32("values"),
            },
            other => panic!("unknown edit kind {other}"),
        };
        let plan = HookPlan::new().edit(hook, edit).capture(last);
        let out = run(&model, &batch, &plan, Start::Embed, true).unwrap();
        let want = real_rows(expected.get(&format!("edit.{name}.{last}")), &lengths);
        let err = relative_error(out.captures.get(last).unwrap().as_slice(), &want);
        assert!(err <= TOLERANCE, "edit {name}: {last} differs by {err:e}");
        let want = real_rows(expected.get(&format!("edit.{name}.logits")), &lengths);
        let err = relative_error(out.head.as_ref().unwrap().as_slice(), &want);
        assert!(err <= TOLERANCE, "edit {name}: logits differ by {err:e}");
        // The edit must matter: the clean run differs from the edited reference somewhere.
        let clean = real_rows(expected.get(&last.to_string()), &lengths);
        let moved = clean.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(
            moved || name.is_empty(),
            "edit {name} changes nothing in the reference"
        );
    }
}

#[test]
fn a_cell_gives_the_same_result_alone_and_inside_a_batch() {
    let dir = fixture("tiny_v2");
    let model = load(&dir);
    let cells = ExpectedFile::open(&dir.join("expected.safetensors")).cells();
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let together = run(&model, &batch, &HookPlan::new(), Start::Embed, false).unwrap();
    for (c, cell) in cells.iter().enumerate() {
        let alone_batch = PackedBatch::from_cells(std::slice::from_ref(cell)).unwrap();
        let alone = run(&model, &alone_batch, &HookPlan::new(), Start::Embed, false).unwrap();
        let range = batch.cell_range(c);
        let inside = together.final_state.slice_rows(range.start, range.end);
        let diff = inside.max_abs_diff(&alone.final_state);
        assert!(diff <= 1e-5, "cell {c}: {diff}");
    }
}

#[test]
fn loader_reports_unexpected_tensors_and_ignores_known_extras() {
    use scinterp_models::checkpoint::{write_safetensors, Checkpoint, TensorToWrite};
    let src = fixture("tiny_v2");
    let original = Checkpoint::open(&src.join("model.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = original
        .names()
        .map(|n| {
            (
                n.to_string(),
                original.entry(n).unwrap().shape.clone(),
                original.to_f32(n).unwrap(),
            )
        })
        .collect();
    let write_with = |extra: &[(&str, Vec<usize>)]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let zeros: Vec<Vec<f32>> = extra.iter().map(|(_, s)| vec![0.0; s.iter().product()]).collect();
        let mut to_write: Vec<TensorToWrite<'_>> = tensors
            .iter()
            .map(|(n, s, v)| TensorToWrite {
                name: n.clone(),
                dtype: safetensors::Dtype::F32,
                shape: s.clone(),
                bytes: bytemuck::cast_slice(v),
            })
            .collect();
        for ((name, shape), z) in extra.iter().zip(&zeros) {
            to_write.push(TensorToWrite {
                name: name.to_string(),
                dtype: safetensors::Dtype::F32,
                shape: shape.clone(),
                bytes: bytemuck::cast_slice(z),
            });
        }
        write_safetensors(&dir.path().join("model.safetensors"), &to_write, None).unwrap();
        dir
    };
    // Known extras (pooler, NSP head, the tied decoder stored explicitly) load fine.
    let ok = write_with(&[
        ("bert.pooler.dense.weight", vec![128, 128]),
        ("cls.seq_relationship.weight", vec![2, 128]),
    ]);
    let model = load(ok.path());
    let expected = ExpectedFile::open(&src.join("expected.safetensors"));
    check_all_hooks(&model, &expected, "tiny_v2 with pooler");
    // Unknown tensors are errors, all listed.
    let bad = write_with(&[("bert.encoder.layer.9.extra", vec![3]), ("foo", vec![1])]);
    let err = Geneformer::load(bad.path(), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected tensor `bert.encoder.layer.9.extra`"),
        "{err}"
    );
    assert!(err.contains("unexpected tensor `foo`"), "{err}");
    assert!(err.contains("2 problems"), "{err}");
}

#[test]
fn the_encoder_loads_without_its_head() {
    let model = Geneformer::load(&fixture("tiny_v2"), LoadOptions { with_head: false }).unwrap();
    assert!(!model.has_head());
    let cells = vec![vec![2u32, 10, 11, 3]];
    let batch = PackedBatch::from_cells(&cells).unwrap();
    let out = run(&model, &batch, &HookPlan::new(), Start::Embed, true).unwrap();
    assert!(out.head.is_none());
}
